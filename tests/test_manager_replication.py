"""
Replication through the manager, end to end: the real manager on the LOCAL
driver, real detached agents each with its own real C{mariadbd}, driven over
the manager's HTTP API; the data is checked with PyMySQL on every server.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
from typing import Any

import pymysql
from twisted.internet import reactor as _reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from conpaassql.manager.config import ManagerConfig
from conpaassql.manager.tap import ManagerService
from conpaassql.rpc.client import RPCClient
from conpaassql.rpc.errors import Conflict, WrongState
from tests import test_manager_local
from tests.support.mariadb import skip_unless_mariadb
from tests.test_iaas_local import localCloud
from tests.support.managerproc import WAIT, nodesIn, until

reactor: Any = _reactor

PASSWORD = "app pw 1"

DUMP = b"""-- loaded on the master before any slave exists
CREATE DATABASE IF NOT EXISTS shop;
USE shop;
CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(40)) ENGINE=InnoDB;
INSERT INTO items VALUES (1, 'apple'), (2, 'pear'), (3, 'plum');
CREATE TABLE acks (id INT PRIMARY KEY, note VARCHAR(40)) ENGINE=InnoDB;
"""


def _connect(port: int) -> Any:
    return pymysql.connect(host="127.0.0.1", port=port, user="app", password=PASSWORD,
                           database="shop", connect_timeout=10, autocommit=True)


def sql(port: int, statement: str, args: Any = None) -> list[tuple[Any, ...]]:
    connection = _connect(port)
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement, args)
            return list(cursor.fetchall())
    finally:
        connection.close()


def insertRows(port: int, start: int, count: int, batch: int = 100) -> None:
    """C{count} rows into shop.items, C{batch} per statement."""
    connection = _connect(port)
    try:
        with connection.cursor() as cursor:
            for first in range(start, start + count, batch):
                rows = [(i, f"row {i}") for i in range(first, min(first + batch, start + count))]
                cursor.executemany("INSERT INTO items (id, name) VALUES (%s, %s)", rows)
    finally:
        connection.close()


class Writer:
    """Commits one row at a time on a server until one fails; keeps the acknowledged ids."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.acked: list[int] = []
        self.error: str | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        connection = _connect(self.port)
        try:
            with connection.cursor() as cursor:
                i = 0
                while not self.stop.is_set():
                    i += 1
                    try:
                        cursor.execute("INSERT INTO acks (id, note) VALUES (%s, 'x')", (i,))
                    except pymysql.MySQLError as e:
                        self.error = str(e)
                        return
                    self.acked.append(i)
        finally:
            connection.close()


class ManagerReplicationTests(TestCase):
    skip = skip_unless_mariadb()
    timeout = 600

    async def startManager(self, stateDir: str) -> tuple[ManagerService, RPCClient]:
        service = ManagerService(
            stateDir, ManagerConfig(poll_interval=0.25, boot_timeout=WAIT, metrics_interval=0.5),
            "tcp:0:interface=127.0.0.1", os.path.join(stateDir, "api-token"),
            reactor=reactor, stopProcess=lambda: None,
        )
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)
        port = await service.listening
        with open(os.path.join(stateDir, "api-token")) as tokenFile:
            self.token = tokenFile.read().strip()
        self.url = f"http://127.0.0.1:{port.getHost().port}/"
        client = RPCClient(self.url, self.token, reactor=reactor, timeout=120)
        self.addCleanup(client.close)
        return service, client

    async def info(self, client: RPCClient, nodeId: int) -> dict[str, Any]:
        return dict((await client.call("get_node_info", {"serviceNodeId": nodeId}))["serviceNode"])

    async def roles(self, client: RPCClient, ids: list[int]) -> list[str | None]:
        return [(await self.info(client, i))["role"] for i in ids]

    async def checksums(self, ports: list[int], table: str = "items") -> list[Any]:
        return [(await deferToThread(sql, p, f"CHECKSUM TABLE shop.{table}"))[0][1]
                for p in ports]

    async def inSync(self, ports: list[int], table: str, rows: int) -> bool:
        counts = [(await deferToThread(sql, p, f"SELECT COUNT(*) FROM shop.{table}"))[0][0]
                  for p in ports]
        if counts != [rows] * len(ports):
            return False
        return len(set(await self.checksums(ports, table))) == 1

    async def metrics(self, token: str | None) -> tuple[int, bytes]:
        pool = HTTPConnectionPool(reactor, persistent=False)
        headers = Headers({b"authorization": [f"Bearer {token}".encode()]} if token else {})
        try:
            response = await Agent(reactor, pool=pool).request(
                b"GET", (self.url + "metrics").encode(), headers)
            return response.code, await readBody(response)
        finally:
            await pool.closeCachedConnections()

    async def test_master_slaves_switchover(self) -> None:
        cloud = localCloud(self)
        service, client = await self.startManager(cloud.stateDir)
        await client.call("add_nodes", {"function": "agent", "count": 3})
        await until(lambda: nodesIn(client, "RUNNING", [1, 2, 3]), "three RUNNING nodes")
        ports = {i: (await self.info(client, i))["mysqld_port"] for i in (1, 2, 3)}

        with self.assertRaises(WrongState) as e:
            await client.call("set_up_replica_slave", {"id": 2})
        self.assertIn("no replication master yet", e.exception.message)

        # The master; a second call changes nothing.
        made = await client.call("set_up_replica_master", {"id": 1})
        self.assertEqual((made["id"], made["role"], made["changed"]), (1, "MASTER", True))
        again = await client.call("set_up_replica_master", {"id": 1})
        self.assertEqual(again["changed"], False)
        self.assertIn("already the master", again["message"])
        self.assertEqual((await client.call("get_service_info"))["master"], 1)
        with self.assertRaises(Conflict):
            await client.call("set_up_replica_slave", {"id": 1})

        # Data and a user before any slave exists.
        self.assertEqual(await client.call("configure_user", {
            "serviceNodeId": 1, "username": "app", "password": PASSWORD,
            "databases": ["shop"]}), {"1": "OK"})
        path = os.path.join(cloud.stateDir, "shop.sql")
        with open(path, "wb") as out:
            out.write(DUMP)
        with open(path, "rb") as dump:
            await client.upload("send_mysqldump", {"serviceNodeId": "1"},
                                {"mysqldump": ("shop.sql", dump)}, timeout=120)

        # Two slaves, seeded at the same time.
        for nodeId in (2, 3):
            seeding = await client.call("set_up_replica_slave", {"id": nodeId})
            self.assertEqual((seeding["state"], seeding["master"]), ("SEEDING", 1))
        with self.assertRaises(Conflict):
            await client.call("set_up_replica_slave", {"id": 2})

        async def slaves(ids: list[int]) -> bool:
            for i in ids:
                info = await self.info(client, i)
                setup = info.get("replication", {}).get("setup", {})
                if setup.get("error"):
                    raise AssertionError(f"node {i}: {info}")
                if info["role"] != "SLAVE":
                    return False
            return True

        await until(lambda: slaves([2, 3]), "nodes 2 and 3 SLAVE")
        info = await self.info(client, 2)
        self.assertEqual(info["state"], "RUNNING")
        self.assertEqual(info["replication"]["setup"]["kind"], "seed")
        self.assertEqual(info["replication"]["setup"]["phase"], "replicating")
        self.assertGreater(info["replication"]["setup"]["bytes"], 0)
        again = await client.call("set_up_replica_slave", {"id": 2})
        self.assertEqual(again["changed"], False)

        async def replicating(nodeId: int) -> bool:
            r = (await self.info(client, nodeId)).get("replication", {})
            return bool(r.get("io_running") and r.get("sql_running")
                        and r.get("seconds_behind") is not None)

        await until(lambda: replicating(2), "node 2's replication shown")
        self.assertEqual(await deferToThread(sql, ports[2], "SELECT name FROM items WHERE id = 2"),
                         [("pear",)])

        # 10,000 rows on the master reach both slaves; the load shows in the figures.
        await deferToThread(insertRows, ports[1], 1000, 10000)
        await until(lambda: self.inSync(list(ports.values()), "items", 10003), "slaves in sync")

        async def busy() -> bool:
            # A sample taken after the load, within the minute's window.
            perf = await client.call("get_service_performance")
            return bool(perf["nodes"].get("1", {}).get("writes_per_second"))

        await until(busy, "the load in the master's figures")
        perf = await client.call("get_service_performance")
        self.assertEqual(sorted(perf["nodes"]), ["1", "2", "3"])
        self.assertGreater(perf["service"]["queries_per_second"], 0)
        self.assertGreater(perf["service"]["writes_per_second"], 0)
        self.assertEqual(perf["nodes"]["2"]["role"], "SLAVE")
        self.assertEqual(perf["request_rate"], perf["service"]["queries_per_second"])

        code, body = await self.metrics(self.token)
        self.assertEqual(code, 200)
        self.assertIn(b"conpaassql_service_queries_per_second", body)
        self.assertIn(b'conpaassql_node_connections{node="2",role="SLAVE"}', body)
        self.assertEqual((await self.metrics(None))[0], 401)
        self.assertEqual((await self.metrics("wrong"))[0], 401)

        # A write on a slave is refused by its server; writes through the
        # manager go to the master.
        with self.assertRaises(pymysql.MySQLError) as refused:
            await deferToThread(sql, ports[2], "INSERT INTO items VALUES (%s, 'no')", (99999,))
        self.assertIn("read-only", str(refused.exception))
        routed = await client.call("configure_user", {
            "serviceNodeId": "all", "username": "reporter", "password": "r pw"})
        self.assertEqual(routed, {"1": "OK", "2": "by replication from node 1",
                                  "3": "by replication from node 1"})

        async def userOn(nodeId: int) -> bool:
            users = await client.call("get_users", {"serviceNodeId": nodeId})
            return "reporter" in [u["username"] for u in users[str(nodeId)]]

        await until(lambda: userOn(3), "the user replicated to node 3")

        # The master cannot go while slaves replicate from it.
        with self.assertRaises(Conflict):
            await client.call("remove_nodes", {"serviceNodeId": 1})

        # A slave stopped and started catches up.
        manager = service.manager
        assert manager is not None
        record = manager.nodes[3].core.record
        agent = RPCClient(f"http://127.0.0.1:{record.agent_port}/", record.token,
                          reactor=reactor, timeout=120)
        self.addCleanup(agent.close)
        await agent.call("stop_server")
        await deferToThread(insertRows, ports[1], 20000, 500)
        await agent.call("start_server")
        await until(lambda: self.inSync(list(ports.values()), "items", 10503), "node 3 caught up")

        async def reachable() -> bool:
            info = await self.info(client, 3)
            return info["isRunningMySQL"] and not info.get("unreachable")

        await until(reachable, "the manager to see node 3 up again")

        # Switchover to node 2 while a client writes on node 1: every
        # acknowledged commit is on the new master, and on every node.
        writer = Writer(ports[1])
        writing = deferToThread(writer.run)
        await until(lambda: len(writer.acked) >= 50, "the writer going")
        try:
            switched = await client.call("set_up_replica_master", {"id": 2})
        finally:
            writer.stop.set()
            await writing
        self.assertEqual((switched["role"], switched["previous_master"]), ("MASTER", 1))
        self.assertEqual(switched["following"], [1, 3])
        self.assertIsNotNone(writer.error, "the old master kept accepting writes")
        self.assertIn("read-only", writer.error or "")
        acked = set(writer.acked)
        self.assertEqual({r[0] for r in await deferToThread(sql, ports[2], "SELECT id FROM acks")},
                         acked)
        self.assertEqual((await client.call("get_service_info"))["master"], 2)
        await until(lambda: slaves([1, 3]), "nodes 1 and 3 follow node 2")
        self.assertEqual(await self.roles(client, [1, 2, 3]), ["SLAVE", "MASTER", "SLAVE"])
        await deferToThread(insertRows, ports[2], 30000, 100)
        await until(lambda: self.inSync(list(ports.values()), "items", 10603),
                    "all in sync after the switchover")
        await until(lambda: self.inSync(list(ports.values()), "acks", len(acked)), "acks in sync")
        with self.assertRaises(pymysql.MySQLError):
            await deferToThread(sql, ports[1], "INSERT INTO items VALUES (%s, 'no')", (99998,))

        # A restarted manager knows the same roles, master and password.
        password = await manager.replication.password()
        await service.stopService()
        service, client = await self.startManager(cloud.stateDir)
        assert service.manager is not None
        await service.manager.ready
        self.assertEqual(await self.roles(client, [1, 2, 3]), ["SLAVE", "MASTER", "SLAVE"])
        self.assertEqual((await client.call("get_service_info"))["master"], 2)
        self.assertEqual(await service.manager.replication.password(), password)

        # Removing a slave is fine.
        self.assertEqual(await client.call("remove_nodes", {"serviceNodeId": 3}),
                         {"result": "OK"})
        await until(lambda: 3 not in service.manager.nodes, "node 3 gone")  # type: ignore[union-attr]
        self.assertEqual(await client.call("list_nodes"), {"serviceNode": [1, 2]})


class ManagerKilledTests(TestCase):
    """The manager as its own process, killed with SIGKILL during a seed."""

    skip = skip_unless_mariadb()
    timeout = 600
    startManager = test_manager_local.SeparateProcessTests.startManager

    async def test_kill_9_during_seed(self) -> None:
        cloud = localCloud(self)
        config = os.path.join(cloud.stateDir, "manager.cnf")
        with open(config, "w") as f:
            f.write("[iaas]\nDRIVER = LOCAL\n\n[manager]\npoll_interval = 0.25\n")
        first, client = await self.startManager(cloud.stateDir, config)
        await client.call("add_nodes", {"function": "agent", "count": 2})
        await until(lambda: nodesIn(client, "RUNNING", [1, 2]), "two RUNNING nodes")
        await client.call("set_up_replica_master", {"id": 1})
        self.assertEqual((await client.call("set_up_replica_slave", {"id": 2}))["state"],
                         "SEEDING")
        os.kill(first.pid, signal.SIGKILL)  # type: ignore[attr-defined]
        await first.ended
        await client.close()
        registry = os.path.join(cloud.stateDir, "registry.sqlite")
        password = _meta(registry, "replication.password")
        self.assertTrue(password)

        second, client = await self.startManager(cloud.stateDir, config)

        # The seed went on on the agents; the restarted manager watches it to its end.
        async def slave() -> bool:
            info = (await client.call("get_node_info", {"serviceNodeId": 2}))["serviceNode"]
            if info.get("replication", {}).get("setup", {}).get("error"):
                raise AssertionError(info)
            return info["role"] == "SLAVE"

        await until(slave, "node 2 SLAVE after the restart")
        self.assertEqual((await client.call("get_service_info"))["master"], 1)
        self.assertEqual(_meta(registry, "replication.password"), password)
        self.assertEqual(await client.call("shutdown"), {"state": "EPILOGUE"})
        await until(lambda: second.ended.called, "the manager process to exit")


def _meta(path: str, key: str) -> str | None:
    connection = sqlite3.connect(path)
    try:
        row = connection.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])
    finally:
        connection.close()
