"""
No secret in logs, process arguments, environments or world-readable
files: a real C{twistd -n conpaassql-manager} process on the LOCAL driver,
with its own state directory, adds a node (a real agent and its real
mariadbd), creates a user with a known password and uploads a dump; then
every file under the state directory, the C{cmdline} and C{environ} of
every process it started, and the twistd log are scanned for the secrets:
the manager's token, the agent's token, the root password of the node's
server, the user's password.
"""

from __future__ import annotations

import os
import secrets
import stat
import tempfile
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.trial.unittest import TestCase

from conpaassql.rpc.client import RPCClient
from conpaassql.rpc.errors import Unauthorized
from tests import test_manager_local as tml
from tests.support.mariadb import skip_unless_mariadb
from tests.test_iaas_local import _processesMentioning, localCloud
from tests.test_manager_local import nodesIn, until

reactor: Any = _reactor

DUMP = b"CREATE DATABASE IF NOT EXISTS vault;\nCREATE TABLE vault.t (id INT);\n"


def _children(root: int) -> set[int]:
    """C{root} and every process descending from it."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                parents[int(entry)] = int(fields[1])
            except (OSError, IndexError, ValueError):
                continue
    found = {root}
    changed = True
    while changed:
        changed = False
        for pid, ppid in parents.items():
            if ppid in found and pid not in found:
                found.add(pid)
                changed = True
    return found


def _readProc(pid: int, what: str) -> bytes:
    try:
        with open(f"/proc/{pid}/{what}", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _rootPassword(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        for line in f:
            key, _, value = line.partition("=")
            if key.strip() == "password":
                return value.strip().strip("'\"")
    raise AssertionError(f"no password in {path}")


async def startTwistdManager(testcase: TestCase, managerSettings: str = "") -> Any:
    """
    A real C{twistd conpaassql-manager} process on the LOCAL driver in a
    fresh state directory (tests.test_manager_local's way of starting one),
    with C{managerSettings} (lines) added to its C{[manager]} section.

    @return: the local cloud, the process protocol and an API client.
    """
    cloud = localCloud(testcase)
    config = os.path.join(cloud.stateDir, "manager.cnf")
    with open(config, "w") as f:
        f.write("[iaas]\nDRIVER = LOCAL\n\n[manager]\npoll_interval = 0.25\n" + managerSettings)
    start: Any = tml.SeparateProcessTests.startManager
    protocol, client = await start(testcase, cloud.stateDir, config)
    return cloud, protocol, client


class SecretsTests(TestCase):
    skip = skip_unless_mariadb()
    timeout = 600

    async def test_no_secret_leaks(self) -> None:
        cloud, protocol, client = await startTwistdManager(self)
        stateDir = cloud.stateDir
        with open(os.path.join(stateDir, "manager-url")) as f:
            url = f.read().strip()
        with open(os.path.join(stateDir, "api-token")) as f:
            managerToken = f.read().strip()
        managerPid: int = protocol.pid  # type: ignore[attr-defined]

        await client.call("add_nodes", {"function": "agent"})
        await until(lambda: nodesIn(client, "RUNNING", [1]), "node 1 RUNNING")
        password = "Known-Pw-" + secrets.token_hex(12)
        await client.call("configure_user", {"serviceNodeId": 1, "username": "leaky",
                                             "password": password, "databases": ["vault"]})
        with tempfile.TemporaryFile() as dump:
            dump.write(DUMP)
            dump.seek(0)
            await client.upload("send_mysqldump", {"serviceNodeId": "1"},
                                {"mysqldump": ("vault.sql", dump)})
        # A refused attempt with a wrong token, and one with the user's
        # password in a query string: neither may reach a log.
        wrong = RPCClient(url, "wrong-" + secrets.token_hex(8), reactor=reactor, timeout=30)
        self.addCleanup(wrong.close)
        with self.assertRaises(Unauthorized):
            await wrong.call("list_nodes")
        # And the manager's token presented to the node's agent (refused).
        info = (await client.call("get_node_info", {"serviceNodeId": 1}))["serviceNode"]
        atAgent = RPCClient(f"http://{info['ip']}:{info['port']}/", managerToken,
                            reactor=reactor, timeout=30)
        self.addCleanup(atAgent.close)
        with self.assertRaises(Unauthorized):
            await atAgent.call("get_server_state")

        # The secrets.
        agentTokens = []
        rootPasswords = []
        for directory, _, files in os.walk(stateDir):
            if "root.cnf" in files:
                rootPasswords.append(_rootPassword(os.path.join(directory, "root.cnf")))
        import sqlite3

        with sqlite3.connect(os.path.join(stateDir, "registry.sqlite")) as db:
            agentTokens = [row[0] for row in db.execute("SELECT token FROM nodes")]
        self.assertEqual(len(agentTokens), 1)
        self.assertEqual(len(rootPasswords), 1)
        found = {"manager token": managerToken, "agent token": agentTokens[0],
                 "root password": rootPasswords[0], "user password": password}
        for value in found.values():
            self.assertGreaterEqual(len(value), 12)

        # Processes: the twistd, its children, and the (detached) node's.
        pids = _children(managerPid) | set(_processesMentioning(stateDir + os.sep))
        self.assertGreaterEqual(len(pids), 3, pids)  # twistd, an agent, a mariadbd
        for pid in pids:
            for what in ("cmdline", "environ"):
                text = _readProc(pid, what)
                for name, value in found.items():
                    self.assertNotIn(value.encode(), text, f"{name} in /proc/{pid}/{what}")

        # Files: a secret only in 0600/0400 files, in 0700 directories.
        self.assertEqual(stat.S_IMODE(os.stat(stateDir).st_mode), 0o700)
        holders: dict[str, list[str]] = {name: [] for name in found}
        for directory, _, files in os.walk(stateDir):
            for name in files:
                path = os.path.join(directory, name)
                if os.path.islink(path) or not os.path.isfile(path):
                    continue
                with open(path, "rb") as data:
                    content = data.read()
                for what, value in found.items():
                    if value.encode() not in content:
                        continue
                    holders[what].append(os.path.relpath(path, stateDir))
                    mode = stat.S_IMODE(os.stat(path).st_mode)
                    self.assertIn(mode, (0o600, 0o400), f"{what} in {path}, mode {mode:o}")
                    parent = directory
                    while True:
                        dmode = stat.S_IMODE(os.stat(parent).st_mode)
                        self.assertEqual(dmode & 0o077, 0,
                                         f"{what} in {path}, under {parent} of mode {dmode:o}")
                        if parent == stateDir:
                            break
                        parent = os.path.dirname(parent)
        # Each secret lives where it should (and was found by the scan).
        self.assertIn("api-token", holders["manager token"])
        self.assertTrue(any(p.startswith("registry.sqlite") for p in holders["agent token"]),
                        holders)
        self.assertTrue(any(p.endswith("root.cnf") for p in holders["root password"]),
                        holders)
        self.assertEqual(holders["user password"], [], "the user's password is kept nowhere")
        logs = [p for paths in holders.values() for p in paths if ".log" in os.path.basename(p)
                or os.path.basename(p).startswith("log")]
        self.assertEqual(logs, [], "a secret in a log file")

        # The twistd log (its standard output and error).
        await client.call("shutdown")
        await until(lambda: protocol.ended.called, "the manager process to exit")
        log = bytes(protocol.output)
        self.assertIn(b"refused a request", log)
        for name, value in found.items():
            self.assertNotIn(value.encode(), log, f"{name} in the twistd log")
