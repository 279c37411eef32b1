"""
Integration tests: the real manager on the real LOCAL driver, with real
detached agents, each running its own real C{mariadbd}, driven over HTTP.

Every test registers, before it starts anything, a cleanup that terminates
every node of its state directory and fails the test if any process of it
is left (L{tests.test_iaas_local.localCloud}).
"""

from __future__ import annotations

import os
import signal
from typing import Any

import pymysql
from twisted.internet import reactor as _reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from conpaassql.rpc.client import RPCClient
from tests.support.localmanager import startLocalManager
from tests.support.managerproc import ManagerProcess, nodesIn, startManager, until
from tests.support.mariadb import pid_alive, skip_unless_mariadb
from tests.test_iaas_local import _processesMentioning, localCloud

reactor: Any = _reactor

DUMP = b"""-- a small dump
CREATE DATABASE IF NOT EXISTS shop;
USE shop;
CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(40)) ENGINE=InnoDB;
INSERT INTO items VALUES (1, 'apple'), (2, 'pear'), (3, 'plum');
"""


def selectItems(port: int, user: str, password: str) -> list[tuple[Any, ...]]:
    connection = pymysql.connect(host="127.0.0.1", port=port, user=user, password=password,
                                 database="shop", connect_timeout=10)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT id, name FROM items ORDER BY id")
            return list(cursor.fetchall())
    finally:
        connection.close()


class InProcessTests(TestCase):
    skip = skip_unless_mariadb()
    timeout = 600

    async def test_two_nodes_users_dump_remove_shutdown(self) -> None:
        m = await startLocalManager(self)
        cloud, service, client, stops = m.cloud, m.service, m.client, m.stops

        added = await client.call("add_nodes", {"function": "agent", "count": 2})
        self.assertEqual([n["state"] for n in added["serviceNode"]], ["PENDING", "PENDING"])
        await until(lambda: nodesIn(client, "RUNNING", [1, 2]), "two RUNNING nodes")
        infos = [(await client.call("get_node_info", {"serviceNodeId": i}))["serviceNode"]
                 for i in (1, 2)]
        for info in infos:
            self.assertTrue(info["isRunningMySQL"], info)
            self.assertEqual(info["ip"], "127.0.0.1")
            self.assertIsInstance(info["mysqld_port"], int)
        self.assertNotEqual(infos[0]["port"], infos[1]["port"])
        self.assertEqual(await client.call("get_service_info"), {
            "state": "RUNNING", "type": "conpaassql", "nodes": {"RUNNING": 2}, "master": None})

        # A user on every node, checked with each agent's own get_all_users.
        result = await client.call("configure_user", {
            "serviceNodeId": "all", "username": "app", "password": "s3cret pw",
            "databases": ["shop"]})
        self.assertEqual(result, {"1": "OK", "2": "OK"})
        manager = service.manager
        assert manager is not None
        for nodeId in (1, 2):
            node = manager.nodes[nodeId]
            agent = RPCClient(f"http://127.0.0.1:{node.core.record.agent_port}/",
                              node.core.record.token, reactor=reactor)
            try:
                users = (await agent.call("get_all_users"))["return"]
            finally:
                await agent.close()
            self.assertIn("app", [u["username"] for u in users])
        users = await client.call("get_users", {"serviceNodeId": "all"})
        self.assertIn("app", [u["username"] for u in users["2"]])

        # A dump, streamed through the manager to both agents.
        path = os.path.join(cloud.stateDir, "shop.sql")
        with open(path, "wb") as out:
            out.write(DUMP)
        with open(path, "rb") as dump:
            loaded = await client.upload("send_mysqldump", {"serviceNodeId": "all"},
                                         {"mysqldump": ("shop.sql", dump)}, timeout=120)
        self.assertEqual(loaded["1"]["bytes"], len(DUMP))
        for info in infos:
            rows = await deferToThread(selectItems, info["mysqld_port"], "app", "s3cret pw")
            self.assertEqual(rows, [(1, "apple"), (2, "pear"), (3, "plum")])

        # Removing a node ends its processes and data.
        nodeDir = os.path.join(cloud.baseDir, infos[0]["name"])
        pids = _processesMentioning(nodeDir + os.sep)
        self.assertTrue(pids)
        self.assertEqual(await client.call("remove_nodes", {"serviceNodeId": 1}),
                         {"result": "OK"})

        async def gone() -> bool:
            return not any(pid_alive(p) for p in pids) and not os.path.exists(nodeDir)

        await until(gone, "node 1's processes and directory to go")
        await until(lambda: 1 not in manager.nodes, "node 1 TERMINATED")
        self.assertEqual(await client.call("list_nodes"), {"serviceNode": [2]})

        # Shutdown ends every node; the manager ends STOPPED.
        self.assertEqual(await client.call("shutdown"), {"state": "EPILOGUE"})

        async def stopped() -> bool:
            return (await client.call("get_service_info"))["state"] == "STOPPED"

        await until(stopped, "the manager to be STOPPED")
        await until(lambda: stops, "stopProcess")
        self.assertEqual(_processesMentioning(cloud.baseDir + os.sep), [])


class SeparateProcessTests(TestCase):
    skip = skip_unless_mariadb()
    timeout = 600

    async def startManager(
        self, stateDir: str, config: str
    ) -> tuple[ManagerProcess, RPCClient]:
        return await startManager(self, stateDir, config)

    async def test_kill_9_and_restart(self) -> None:
        cloud = localCloud(self)
        config = os.path.join(cloud.stateDir, "manager.cnf")
        with open(config, "w") as f:
            f.write("[iaas]\nDRIVER = LOCAL\n\n[manager]\npoll_interval = 0.25\n")
        first, client = await self.startManager(cloud.stateDir, config)
        await client.call("add_nodes", {"function": "agent"})
        await until(lambda: nodesIn(client, "RUNNING", [1]), "node 1 RUNNING")
        await client.call("add_nodes", {"function": "agent"})
        # Killed while node 2 is being provisioned.
        os.kill(first.pid, signal.SIGKILL)
        await first.ended
        await client.close()

        second, client = await self.startManager(cloud.stateDir, config)
        self.assertEqual(await client.call("list_nodes"), {"serviceNode": [1, 2]})
        await until(lambda: nodesIn(client, "RUNNING", [1, 2]), "nodes 1 and 2 RUNNING")
        # Exactly one agent per node: nothing leaked, nothing started twice.
        agents = [p for p in _processesMentioning(cloud.baseDir + os.sep)
                  if "conpaassql-agent" in open(f"/proc/{p}/cmdline", "rb").read().decode()]
        self.assertEqual(len(agents), 2, agents)
        nodeDirs = sorted(n for n in os.listdir(cloud.baseDir) if n.startswith("conpaassql-"))
        self.assertEqual(len(nodeDirs), 2)

        # shutdown ends every node, and the process exits by itself.
        self.assertEqual(await client.call("shutdown"), {"state": "EPILOGUE"})
        await until(lambda: second.ended.called, "the manager process to exit")
        self.assertEqual(_processesMentioning(cloud.baseDir + os.sep), [])
        # Every node's directory is gone; the datadir template stays (a cache).
        self.assertEqual(os.listdir(cloud.baseDir), ["templates"])
