"""
The README's main command, C{tools/run-manager}, end to end: run as a child
process with its own state directory and a free port (never the user's
manager on 50000), it must start the manager on the LOCAL driver, bring two
real nodes up, load the sample dump, read it back from each node, shut
everything down and exit 0, leaving no process behind.
"""

from __future__ import annotations

import os
import signal
import stat
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from conpaassql.common.procfs import process_argv
from tests.support.mariadb import pid_alive, skip_unless_mariadb

reactor: Any = _reactor
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "tools", "run-manager")
#: Seconds the whole command may take on a loaded 2-core machine.
LIMIT = 600.0


class _Command(ProcessProtocol):
    def __init__(self) -> None:
        self.output = bytearray()
        self.ended: Deferred[int | None] = Deferred()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.output += data

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(getattr(reason.value, "exitCode", None))


def processesMentioning(text: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            pid = int(entry)
            if any(text in a for a in process_argv(pid)) and pid_alive(pid):
                found.append(pid)
    return found


class RunManagerTests(TestCase):
    skip = skip_unless_mariadb() or (None if os.path.exists(os.path.join(REPO, ".venv", "bin",
                                                                         "twistd"))
                                     else "no .venv (tools/setup makes it)")
    timeout = LIMIT + 120

    def setUp(self) -> None:
        self.state = os.path.abspath(self.mktemp())
        self.addCleanup(self.noneLeft)

    def noneLeft(self) -> None:
        left = processesMentioning(self.state)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        self.assertEqual(left, [], f"processes left of {self.state}")

    async def test_main_command(self) -> None:
        command = _Command()
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
        transport = reactor.spawnProcess(
            command, "/bin/bash",
            ["bash", SCRIPT, "--listen", "tcp:0:interface=127.0.0.1", "--state-dir", self.state],
            env=env, path=REPO,
        )
        killer = reactor.callLater(LIMIT, transport.signalProcess, "KILL")
        code = await command.ended
        if killer.active():
            killer.cancel()
        text = command.output.decode("utf-8", "replace")
        self.assertEqual(code, 0, text)
        self.assertIn("nodes RUNNING", text)
        for nodeId in (1, 2):
            self.assertIn(f"node {nodeId} (MariaDB on port", text)
        # The sample dump's rows, read back as 'demo' from both nodes.
        self.assertEqual(text.count("| fig "), 2, text)
        self.assertIn("done: the manager and its nodes have stopped", text)
        with open(os.path.join(self.state, "manager-url")) as f:
            url = f.read().strip()
        self.assertNotIn(":50000/", url)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(self.state, "api-token")).st_mode),
                         0o600)
        cloud = os.path.join(self.state, "local-cloud")
        self.assertEqual([n for n in os.listdir(cloud) if n.startswith("conpaassql-")], [])
