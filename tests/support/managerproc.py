"""
A real manager as a separate process (C{twistd -n conpaassql-manager}), for
tests that kill it, and what the tests of such a manager share: waiting for
a condition, and counting the processes of the LOCAL cloud's nodes.
"""

from __future__ import annotations

import inspect
import os
import sys
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from conpaassql.common.procfs import pid_alive, process_argv
from conpaassql.manager.config import ManagerConfig
from conpaassql.manager.tap import ManagerService
from conpaassql.rpc.client import RPCClient

reactor: Any = _reactor

WAIT = 180.0  # seconds: generous on a 2-core machine shared with other test runs


async def until(check: Any, what: str, timeout: float = WAIT, step: float = 0.1) -> Any:
    """Call C{check} (plain or async) every C{step} s until it returns a true value."""
    deadline = reactor.seconds() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await deferLater(reactor, step, lambda: None)


async def nodesIn(client: RPCClient, state: str, ids: list[int]) -> bool:
    """Whether every node of C{ids} is in C{state} (an ERROR one fails the test)."""
    for nodeId in ids:
        info = await client.call("get_node_info", {"serviceNodeId": nodeId})
        if info["serviceNode"]["state"] != state:
            if info["serviceNode"]["state"] == "ERROR":
                raise AssertionError(f"node {nodeId} in ERROR: {info['serviceNode']}")
            return False
    return True


def processesMentioning(text: str) -> list[int]:
    """Live processes with C{text} in an argument (what C{ps} shows)."""
    found = []
    for entry in os.listdir("/proc"):
        pid = int(entry) if entry.isdigit() else os.getpid()
        if pid != os.getpid() and any(text in a for a in process_argv(pid)) and pid_alive(pid):
            found.append(pid)
    return found


def nodeProcesses(baseDir: str) -> dict[str, list[int]]:
    """
    The live processes of the LOCAL cloud in C{baseDir}, by kind:
    C{"agent"} (C{twistd conpaassql-agent}), C{"mariadbd"}, C{"other"}.
    """
    kinds: dict[str, list[int]] = {"agent": [], "mariadbd": [], "other": []}
    for pid in processesMentioning(baseDir + os.sep):
        argv = process_argv(pid)
        if "conpaassql-agent" in argv:
            kinds["agent"].append(pid)
        elif argv and os.path.basename(argv[0]) in ("mariadbd", "mysqld"):
            kinds["mariadbd"].append(pid)
        else:
            kinds["other"].append(pid)
    return kinds


async def startInProcess(
    testcase: TestCase, stateDir: str, config: ManagerConfig
) -> tuple[ManagerService, RPCClient]:
    """
    A manager service in this process on C{stateDir}, listening on a free
    port, and a client of its API; cleanups stop both.
    """
    service = ManagerService(stateDir, config, "tcp:0:interface=127.0.0.1",
                             os.path.join(stateDir, "api-token"), reactor=reactor,
                             stopProcess=lambda: None)
    service.startService()
    testcase.addCleanup(lambda: service.stopService() if service.running else None)
    port = await service.listening
    with open(os.path.join(stateDir, "api-token")) as f:
        token = f.read().strip()
    client = RPCClient(f"http://127.0.0.1:{port.getHost().port}/", token, reactor=reactor,
                       timeout=120)
    testcase.addCleanup(client.close)
    return service, client


class ManagerProcess(ProcessProtocol):
    """A C{twistd -n conpaassql-manager} child process."""

    def __init__(self) -> None:
        self.output = bytearray()
        self.ended: Deferred[None] = Deferred()
        self.status: Any = None
        self.pid = 0

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.output += data

    def processEnded(self, reason: Failure) -> None:
        self.status = reason.value
        self.ended.callback(None)


async def startManager(
    testcase: TestCase, stateDir: str, config: str
) -> tuple[ManagerProcess, RPCClient]:
    """
    Start a manager process on C{stateDir} with the C{config} file, listening
    on a free port; wait until it listens.  Cleanups kill it (if it still
    runs) and close the client.

    @return: the process and a client of its API.
    """
    urlFile = os.path.join(stateDir, "manager-url")
    if os.path.exists(urlFile):
        os.unlink(urlFile)
    protocol = ManagerProcess()
    argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
            "--pidfile=", "conpaassql-manager",
            "--listen", "tcp:0:interface=127.0.0.1", "--state-dir", stateDir,
            "--config", config]
    transport = reactor.spawnProcess(protocol, sys.executable, argv, env=dict(os.environ))
    protocol.pid = transport.pid

    def stop() -> Deferred[None] | None:
        if protocol.ended.called:
            return None
        transport.signalProcess("KILL")
        return protocol.ended

    testcase.addCleanup(stop)

    async def listening() -> bool:
        if protocol.ended.called:
            raise AssertionError(f"the manager exited: {protocol.output.decode()[-3000:]}")
        return os.path.exists(urlFile)

    await until(listening, "the manager to listen", 60)
    with open(urlFile) as f:
        url = f.read().strip()
    with open(os.path.join(stateDir, "api-token")) as f:
        token = f.read().strip()
    client = RPCClient(url, token, reactor=reactor, timeout=60)
    testcase.addCleanup(client.close)
    return protocol, client
