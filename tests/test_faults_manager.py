"""
Faults the manager must survive: a C{kill -9} of the manager process in the
middle of C{add_nodes} and of C{shutdown}.  The manager is a real
C{twistd -n conpaassql-manager} process on the LOCAL driver (real detached
agents, each with its own real C{mariadbd}); after the restart every node is
accounted for, no VM is duplicated or leaked (the agent and C{mariadbd}
processes of the cloud's directory are counted), and the interrupted
operation is finished and reported.
"""

from __future__ import annotations

import os
import signal
import sqlite3
from typing import Any

from twisted.trial.unittest import TestCase

from conpaassql.rpc.client import RPCClient
from tests.support.managerproc import (
    ManagerProcess,
    nodeProcesses,
    nodesIn,
    startManager,
    until,
)
from tests.support.mariadb import skip_unless_mariadb
from tests.test_iaas_local import LocalCloud, localCloud


def writeConfig(cloud: LocalCloud, extra: str = "") -> str:
    config = os.path.join(cloud.stateDir, "manager.cnf")
    with open(config, "w") as f:
        f.write("[iaas]\nDRIVER = LOCAL\n\n[manager]\npoll_interval = 0.25\n" + extra)
    return config


async def kill(manager: ManagerProcess) -> None:
    os.kill(manager.pid, signal.SIGKILL)
    await manager.ended


def registryStates(stateDir: str) -> dict[int, str]:
    """Every node of the registry and its state (TERMINATED ones too)."""
    connection = sqlite3.connect(os.path.join(stateDir, "registry.sqlite"))
    try:
        return dict(connection.execute("SELECT id, state FROM nodes ORDER BY id").fetchall())
    finally:
        connection.close()


class ManagerKilledTests(TestCase):
    skip = skip_unless_mariadb()
    timeout = 900

    def assertProcesses(self, cloud: LocalCloud, nodes: int) -> None:
        """Exactly one agent and one mariadbd per node, nothing else."""
        kinds = nodeProcesses(cloud.baseDir)
        self.assertEqual(
            (len(kinds["agent"]), len(kinds["mariadbd"]), kinds["other"]), (nodes, nodes, []),
            kinds,
        )
        dirs = os.listdir(cloud.baseDir) if os.path.isdir(cloud.baseDir) else []
        nodeDirs = [d for d in dirs if d.startswith("conpaassql-")]
        self.assertEqual(len(nodeDirs), nodes, dirs)

    async def restartedRuns(
        self, cloud: LocalCloud, config: str, ids: list[int]
    ) -> tuple[ManagerProcess, RPCClient]:
        manager, client = await startManager(self, cloud.stateDir, config)
        self.assertEqual(await client.call("list_nodes"), {"serviceNode": ids})
        await until(lambda: nodesIn(client, "RUNNING", ids), f"nodes {ids} RUNNING")
        for nodeId in ids:
            info = (await client.call("get_node_info", {"serviceNodeId": nodeId}))["serviceNode"]
            self.assertTrue(info["isRunningMySQL"], info)
            self.assertNotIn("error", info)

        async def settled() -> Any:
            info = await client.call("get_service_info")
            return info if info["state"] == "RUNNING" else None

        info = await until(settled, "the service RUNNING")
        self.assertEqual(info["nodes"], {"RUNNING": len(ids)})
        self.assertProcesses(cloud, len(ids))
        return manager, client

    async def test_killed_right_after_add_nodes(self) -> None:
        """
        Killed as soon as add_nodes answered (the nodes PENDING, their VMs
        being made or not yet asked for): the restarted manager finishes
        them, once each.
        """
        cloud = localCloud(self)
        config = writeConfig(cloud)
        first, client = await startManager(self, cloud.stateDir, config)
        added = await client.call("add_nodes", {"function": "agent", "count": 2})
        self.assertEqual([n["state"] for n in added["serviceNode"]], ["PENDING", "PENDING"])
        await kill(first)
        await client.close()
        await self.restartedRuns(cloud, config, [1, 2])

    async def test_killed_while_booting(self) -> None:
        """
        Killed while a node is BOOTING and another one runs: the booting
        one becomes RUNNING after the restart, nothing is made twice.
        """
        cloud = localCloud(self)
        config = writeConfig(cloud)
        first, client = await startManager(self, cloud.stateDir, config)
        await client.call("add_nodes", {"function": "agent"})
        await until(lambda: nodesIn(client, "RUNNING", [1]), "node 1 RUNNING")
        await client.call("add_nodes", {"function": "agent"})
        await until(lambda: nodesIn(client, "BOOTING", [2]), "node 2 BOOTING", step=0.02)
        await kill(first)
        await client.close()
        await self.restartedRuns(cloud, config, [1, 2])

    async def test_killed_during_shutdown(self) -> None:
        """
        Killed while shutdown ends the nodes (TERMINATING): the restarted
        manager reports the shutdown under way (EPILOGUE), finishes it (every
        VM ended, nothing left running) and exits, STOPPED.  The service can
        then be started afresh.
        """
        cloud = localCloud(self)
        config = writeConfig(cloud)
        first, client = await startManager(self, cloud.stateDir, config)
        await client.call("add_nodes", {"function": "agent", "count": 2})
        await until(lambda: nodesIn(client, "RUNNING", [1, 2]), "nodes 1 and 2 RUNNING")
        self.assertProcesses(cloud, 2)
        self.assertEqual(await client.call("shutdown"), {"state": "EPILOGUE"})
        await kill(first)
        await client.close()
        self.assertEqual(set(registryStates(cloud.stateDir).values()) - {"TERMINATED"},
                         {"TERMINATING"})

        second, client = await startManager(self, cloud.stateDir, config)
        info = await client.call("get_service_info")
        if not second.ended.called:
            self.assertIn(info["state"], ("EPILOGUE", "STOPPED"), info)
        await until(lambda: second.ended.called, "the restarted manager to finish and exit")
        self.assertEqual(registryStates(cloud.stateDir), {1: "TERMINATED", 2: "TERMINATED"})
        self.assertProcesses(cloud, 0)
        await client.close()

        # Started again, it is a fresh, running service.
        _third, client = await startManager(self, cloud.stateDir, config)

        async def running() -> bool:
            return (await client.call("get_service_info"))["state"] == "RUNNING"

        await until(running, "the service RUNNING again")
        self.assertEqual(await client.call("list_nodes"), {"serviceNode": []})
