"""
Faults of a node the manager must survive: its C{mariadbd} killed, its agent
killed.  A real manager (in this process, to count its poll cycles) on the
LOCAL driver, with real detached agents and real C{mariadbd}s.

What is checked: the manager reports the fault no later than the second poll
cycle that ends after it (the first may have begun before it), and the node
is RUNNING again afterwards with its data; a killed agent is started again by
the LOCAL cloud (as systemd does on a real VM), and one that dies again soon
after its restart makes the node ERROR with the reason.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from conpaassql.manager.config import ManagerConfig
from conpaassql.manager.service import Manager
from conpaassql.rpc.client import RPCClient
from tests.support.managerproc import nodeProcesses, nodesIn, startInProcess, until
from tests.support.mariadb import skip_unless_mariadb
from tests.test_iaas_local import LocalCloud, localCloud
from tests.test_manager_local import DUMP, selectItems

POLL = 0.5


class NodeFaultTests(TestCase):
    skip = skip_unless_mariadb()
    timeout = 600

    async def startManager(self) -> tuple[LocalCloud, Manager, RPCClient]:
        """An in-process manager with one RUNNING node holding a user and data."""
        cloud = localCloud(self)
        service, client = await startInProcess(
            self, cloud.stateDir, ManagerConfig(poll_interval=POLL, boot_timeout=180))
        await client.call("add_nodes", {"function": "agent"})
        await until(lambda: nodesIn(client, "RUNNING", [1]), "node 1 RUNNING")
        await client.call("configure_user", {"serviceNodeId": 1, "username": "app",
                                             "password": "pw 1", "databases": ["shop"]})
        path = os.path.join(cloud.stateDir, "shop.sql")
        with open(path, "wb") as out:
            out.write(DUMP)
        with open(path, "rb") as dump:
            await client.upload("send_mysqldump", {"serviceNodeId": 1},
                                {"mysqldump": ("shop.sql", dump)}, timeout=120)
        assert service.manager is not None
        return cloud, service.manager, client

    async def reportedBy(
        self, manager: Manager, sign: Callable[[dict[str, Any]], bool], what: str
    ) -> dict[str, Any]:
        """
        Wait until node 1's info shows C{sign}; check that it did by the end
        of the second poll cycle since now.  The node's info then.
        """
        start = manager.cycles

        def seen() -> dict[str, Any] | None:
            info = manager.nodeInfo(manager.nodes[1])
            return info if sign(info) else None

        info = await until(seen, what, step=0.02)
        self.assertLessEqual(manager.cycles - start, 2,
                             f"{what}: seen only after {manager.cycles - start} poll cycles")
        return info

    async def recovered(self, cloud: LocalCloud, client: RPCClient, before: dict[str, Any]
                        ) -> dict[str, Any]:
        async def running() -> dict[str, Any] | None:
            info = (await client.call("get_node_info", {"serviceNodeId": 1}))["serviceNode"]
            ok = info["state"] == "RUNNING" and info["isRunningMySQL"]
            return info if ok and not info.get("unreachable") else None

        info = await until(running, "node 1 RUNNING again")
        self.assertEqual((info["port"], info["mysqld_port"]),
                         (before["port"], before["mysqld_port"]))
        self.assertNotIn("error", info)
        rows = await deferToThread(selectItems, info["mysqld_port"], "app", "pw 1")
        self.assertEqual(rows, [(1, "apple"), (2, "pear"), (3, "plum")])
        kinds = nodeProcesses(cloud.baseDir)
        self.assertEqual((len(kinds["agent"]), len(kinds["mariadbd"]), kinds["other"]),
                         (1, 1, []), kinds)
        return info

    async def test_mariadbd_killed(self) -> None:
        """
        SIGKILL of the node's mariadbd: the manager shows it not running (or
        already restarted, with the count), the agent restarts it, the node
        is RUNNING again with its data.
        """
        cloud, manager, client = await self.startManager()
        before = (await client.call("get_node_info", {"serviceNodeId": 1}))["serviceNode"]
        pid = manager.nodes[1].core.agentInfo["pid"]
        os.kill(pid, signal.SIGKILL)
        info = await self.reportedBy(
            manager,
            lambda i: not i["isRunningMySQL"] or bool(i.get("server_restarts")),
            "the manager to see mariadbd die",
        )
        if not info["isRunningMySQL"]:
            self.assertNotIn("agent unreachable", info["error"])
            self.assertIn("database server is", info["error"])
        after = await self.recovered(cloud, client, before)
        self.assertGreaterEqual(after["server_restarts"], 1)
        self.assertNotEqual(manager.nodes[1].core.agentInfo["pid"], pid)

    async def test_agent_killed(self) -> None:
        """
        SIGKILL of the node's agent: the manager shows the node unreachable,
        the LOCAL cloud starts the agent again (which replaces the mariadbd
        the dead one left), the node is RUNNING again with its data.  Killed
        again at once, the agent is not restarted: the node is ERROR with
        the reason.
        """
        cloud, manager, client = await self.startManager()
        before = (await client.call("get_node_info", {"serviceNodeId": 1}))["serviceNode"]
        pidFile = os.path.join(cloud.baseDir, before["name"], "twistd.pid")
        with open(pidFile) as f:
            agentPid = int(f.read())
        os.kill(agentPid, signal.SIGKILL)
        info = await self.reportedBy(manager, lambda i: bool(i.get("unreachable")),
                                     "the manager to see the agent die")
        self.assertFalse(info["isRunningMySQL"])
        self.assertIn("agent unreachable", info["error"])
        await self.recovered(cloud, client, before)

        with open(pidFile) as f:
            agentPid = int(f.read())
        os.kill(agentPid, signal.SIGKILL)
        info = await self.reportedBy(manager, lambda i: i["state"] == "ERROR",
                                     "the node ERROR")
        self.assertIn("the cloud reports the VM failed", info["error"])
        self.assertIn("not restarted again", info["error"])
        info = await client.call("get_service_info")
        self.assertEqual(info["nodes"], {"ERROR": 1})
