"""
Replication between real agents: each test agent runs its own mariadbd on
free ports, and the agents talk to each other over real HTTP (the slave
pulls its seed from the master agent's /snapshot) and their servers over
real MariaDB replication.
"""

from __future__ import annotations

from typing import Any

import pymysql
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from conpaassql.rpc.errors import (
    Conflict,
    InvalidParams,
    NotFound,
    OperationFailed,
    Timeout,
    WrongState,
)
from tests.support.agent import RunningAgent, startAgent
from tests.support.mariadb import skip_unless_mariadb

PASSWORD = "repl-S3cret"
HOSTILE_PASSWORD = "p'a\"s\\s`w%s;o) DROP DATABASE shop; -- \u00e9\u6f22"


def connect(agent: RunningAgent, **extra: Any) -> pymysql.Connection:
    server = agent.service.server
    if "user" in extra:
        args = {"host": "127.0.0.1", "port": server.port, "connect_timeout": 10, **extra}
    else:
        args = {**server.connect_args(), **extra}
    args.setdefault("charset", "utf8mb4")
    return pymysql.connect(autocommit=True, **args)


async def sql(agent: RunningAgent, statement: str, args: Any = None, **extra: Any) -> list[Any]:
    def run() -> list[Any]:
        conn = connect(agent, **extra)
        try:
            with conn.cursor() as cur:
                cur.execute(statement, args)
                return list(cur.fetchall())
        finally:
            conn.close()

    return await deferToThread(run)


async def insertRows(agent: RunningAgent, count: int, start: int = 0) -> None:
    def run() -> None:
        conn = connect(agent)
        try:
            with conn.cursor() as cur:
                for base in range(start, start + count, 1000):
                    rows = [(i, f"row {i}", i * 7) for i in range(base, min(base + 1000,
                                                                            start + count))]
                    cur.executemany("INSERT INTO shop.items (id, name, qty) VALUES (%s, %s, %s)",
                                    rows)
        finally:
            conn.close()

    await deferToThread(run)


async def checksums(agent: RunningAgent, *tables: str) -> dict[str, Any]:
    rows = await sql(agent, f"CHECKSUM TABLE {', '.join(tables)}")
    return {name: value for name, value in rows}


async def replication(agent: RunningAgent) -> dict[str, Any]:
    return (await agent.state())["replication"]


async def waitSeeded(agent: RunningAgent, timeout: float = 120.0) -> dict[str, Any]:
    """Wait until the agent's set-up ended; return its replication object."""
    waited = 0.0
    while True:
        state = await replication(agent)
        if "last_setup" in state:
            return state
        if waited > timeout:
            raise AssertionError(f"the seed did not end: {state}")
        await deferLater(reactor, 0.2, lambda: None)
        waited += 0.2


async def makeMaster(testcase: TestCase, serverId: int = 1, password: str = PASSWORD,
                     user: str = "conpaassql_repl") -> tuple[RunningAgent, dict[str, Any]]:
    master = await startAgent(testcase)
    result = await master.call("set_up_replica_master", {
        "server_id": serverId, "repl_user": user, "repl_password": password})
    return master, result["return"]


async def loadShop(master: RunningAgent) -> None:
    await sql(master, "CREATE DATABASE shop")
    await sql(master, "CREATE TABLE shop.items (id INT PRIMARY KEY, name VARCHAR(40), "
                      "qty INT, note TEXT) ENGINE=InnoDB")
    await sql(master, "CREATE TABLE shop.audit (n INT AUTO_INCREMENT PRIMARY KEY, item INT)")
    await sql(master, "CREATE TRIGGER shop.items_ai AFTER INSERT ON shop.items FOR EACH ROW "
                      "INSERT INTO shop.audit (item) VALUES (NEW.id)")
    await sql(master, "CREATE FUNCTION shop.double_it(x INT) RETURNS INT DETERMINISTIC "
                      "RETURN x * 2")


async def bigMaster(testcase: TestCase, rows: int) -> RunningAgent:
    """A master with the shop and C{rows} rows of about 2 kB in shop.big."""
    master, _ = await makeMaster(testcase)
    await loadShop(master)
    await sql(master, "CREATE TABLE shop.big (id INT PRIMARY KEY, pad TEXT)")
    await sql(master, f"INSERT INTO shop.big SELECT seq, REPEAT(MD5(seq), 60) "
                      f"FROM shop.seq_1_to_{rows}")
    return master


def seedParams(master: RunningAgent, serverId: int, **extra: Any) -> dict[str, Any]:
    return {
        "master_agent_url": master.url,
        "master_agent_token": master.token,
        "master_host": "127.0.0.1",
        "master_port": master.service.server.port,
        "slave_server_id": serverId,
        "repl_user": "conpaassql_repl",
        "repl_password": PASSWORD,
        **extra,
    }


class MasterTests(TestCase):
    skip = skip_unless_mariadb()
    timeout = 300

    async def test_master_set_up(self) -> None:
        """
        The master gets a server id, a ROW binary log, GTID strict mode and
        a replication account with only REPLICATION SLAVE; a second call
        changes nothing; the password never reaches the log.
        """
        logged: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            logged.append(repr(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        master, result = await makeMaster(self, serverId=7, password=HOSTILE_PASSWORD)
        self.assertEqual(result["role"], "master")
        self.assertTrue(result["changed"])
        self.assertEqual(result["server_id"], 7)
        self.assertFalse(result["read_only"])
        self.assertRegex(result["master_log_file"], r"^mysql-bin\.[0-9]+$")
        self.assertGreaterEqual(result["master_log_pos"], 4)
        self.assertRegex(result["gtid_binlog_pos"], r"^0-7-[0-9]+$")
        variables = dict(await sql(master, "SHOW GLOBAL VARIABLES WHERE Variable_name IN "
                                   "('log_bin', 'binlog_format', 'server_id', "
                                   "'gtid_strict_mode', 'log_slave_updates', 'read_only')"))
        self.assertEqual(variables, {"log_bin": "ON", "binlog_format": "ROW", "server_id": "7",
                                     "gtid_strict_mode": "ON", "log_slave_updates": "ON",
                                     "read_only": "OFF"})
        grants = await sql(master, "SHOW GRANTS FOR 'conpaassql_repl'@'%'")
        self.assertEqual(len(grants), 1)
        self.assertRegex(grants[0][0], r"^GRANT REPLICATION SLAVE ON \*\.\* TO `conpaassql_repl`")
        # The account works with the hostile password, over TCP.
        rows = await sql(master, "SELECT CURRENT_USER()", user="conpaassql_repl",
                         password=HOSTILE_PASSWORD.encode())
        self.assertEqual(rows[0][0], "conpaassql_repl@%")

        again = (await master.call("set_up_replica_master", {
            "server_id": 7, "repl_user": "conpaassql_repl",
            "repl_password": HOSTILE_PASSWORD}))["return"]
        self.assertFalse(again["changed"])
        self.assertIn("nothing changed", again["message"])
        self.assertEqual(again["gtid_binlog_pos"], result["gtid_binlog_pos"])
        with self.assertRaises(Conflict):
            await master.call("set_up_replica_master", {"server_id": 8, "repl_password": "x"})
        state = await master.state()
        self.assertEqual(state["role"], "master")
        self.assertEqual(state["replication"]["role"], "master")
        self.assertFalse([line for line in logged if "p'a" in line or "S3cret" in line])

    async def test_master_refuses_hostile_names(self) -> None:
        master = await startAgent(self)
        for params in (
            {"server_id": 1, "repl_user": "x'@'%' IDENTIFIED BY 'y", "repl_password": "p"},
            {"server_id": 1, "repl_user": "root", "repl_password": "p"},
            {"server_id": 1, "repl_password": "p", "repl_host": "%' OR '1"},
            {"server_id": 0, "repl_password": "p"},
            {"server_id": 1, "repl_password": "p" * 97},
        ):
            with self.assertRaises(InvalidParams):
                await master.call("set_up_replica_master", params)
        self.assertIsNone((await master.state())["role"])


class SeedTests(TestCase):
    skip = skip_unless_mariadb()
    timeout = 600

    async def test_master_and_two_seeded_slaves(self) -> None:
        """
        Data loaded before the slaves exist arrives through the seed; 10,000
        rows written afterwards arrive by replication; CHECKSUM TABLE agrees
        on all three; a slave refuses writes; a stopped slave catches up.
        """
        master, _ = await makeMaster(self)
        await loadShop(master)
        await insertRows(master, 500)
        await master.call("configure_user", {"username": "app", "password": "app-pw",
                                             "databases": ["shop"]})
        await sql(master, "CREATE ROLE auditor")
        await sql(master, "GRANT SELECT ON shop.audit TO auditor")
        await sql(master, "GRANT auditor TO app@'%'")
        await sql(master, "CREATE DATABASE other")
        await sql(master, "CREATE TABLE other.t (a INT PRIMARY KEY)")
        slaves = [await startAgent(self), await startAgent(self)]
        for n, slave in enumerate(slaves):
            started = await slave.call("set_up_replica_slave", seedParams(master, 10 + n))
            self.assertEqual(started["return"], "OK")
            self.assertEqual(started["state"], "SEEDING")
        with self.assertRaises(Conflict):
            await slaves[0].call("set_up_replica_slave", seedParams(master, 10))
        for slave in slaves:
            state = await waitSeeded(slave)
            self.assertNotIn("error", state)
            self.assertEqual(state["last_setup"]["phase"], "replicating")
            self.assertGreater(state["last_setup"]["bytes"], 10000)
            self.assertEqual(state["role"], "slave")
            self.assertTrue(state["io_running"])
            self.assertTrue(state["sql_running"])
            self.assertEqual(state["master_port"], master.service.server.port)
            self.assertEqual((await slave.state())["state"], "RUNNING")
            # Seeded data, routines, triggers and accounts are there.
            self.assertEqual((await sql(slave, "SELECT COUNT(*) FROM shop.items"))[0][0], 500)
            self.assertEqual((await sql(slave, "SELECT shop.double_it(21)"))[0][0], 42)
            self.assertEqual((await sql(slave, "SELECT COUNT(*) FROM shop.audit"))[0][0], 500)
            self.assertEqual(await sql(slave, "SHOW GRANTS FOR auditor"),
                             await sql(master, "SHOW GRANTS FOR auditor"))
            self.assertEqual(await sql(slave, "SHOW GRANTS FOR app@'%'"),
                             await sql(master, "SHOW GRANTS FOR app@'%'"))
            self.assertEqual(await sql(slave, "SHOW TABLES FROM other"), [("t",)])
            # The slave keeps its own root account.
            self.assertEqual((await sql(slave, "SELECT CURRENT_USER()"))[0][0], "root@localhost")

        await insertRows(master, 10000, start=1000)
        await sql(master, "UPDATE shop.items SET note = REPEAT('x', id % 100) WHERE id % 3 = 0")
        target = (await master.call("get_replication_status"))["return"]["gtid_binlog_pos"]
        expected = await checksums(master, "shop.items", "shop.audit")
        for slave in slaves:
            waited = await slave.call("wait_for_gtid", {"gtid_pos": target, "timeout": 120})
            self.assertTrue(waited["return"]["reached"])
            self.assertEqual(await checksums(slave, "shop.items", "shop.audit"), expected)
            self.assertEqual((await sql(slave, "SELECT COUNT(*) FROM shop.items"))[0][0], 10500)

        # A write on a slave is refused for an ordinary account (read_only)...
        with self.assertRaises(pymysql.err.OperationalError) as caught:
            await sql(slaves[0], "INSERT INTO shop.items (id, name) VALUES (99999, 'no')",
                      user="app", password="app-pw")
        self.assertEqual(caught.exception.args[0], 1290)
        # ... and the agent sends writes to the master.
        with self.assertRaises(WrongState):
            await slaves[0].call("configure_user", {"username": "x", "password": "y"})

        # A stopped slave catches up once started again.
        stopped = (await slaves[1].call("stop_replica"))["return"]
        self.assertFalse(stopped["io_running"])
        self.assertEqual(stopped["phase"], "stopped")
        await insertRows(master, 2000, start=20000)
        target = (await master.call("get_replication_status"))["return"]["gtid_binlog_pos"]
        with self.assertRaises(Timeout):
            await slaves[1].call("wait_for_gtid", {"gtid_pos": target, "timeout": 1})
        restarted = (await slaves[1].call("start_replica"))["return"]
        self.assertTrue(restarted["io_running"] and restarted["sql_running"])
        await slaves[1].call("wait_for_gtid", {"gtid_pos": target, "timeout": 120})
        self.assertEqual(await checksums(slaves[1], "shop.items"),
                         await checksums(master, "shop.items"))

    async def test_seed_does_not_lock_the_master(self) -> None:
        """
        While the seed's transfer is held (the slave pauses reading), the
        master's dump is running and a write on the master succeeds at
        once; the write is not in the snapshot but arrives by replication.
        """
        master = await bigMaster(self, 20000)
        slave = await startAgent(self)
        held: Deferred[None] = Deferred()
        reached: Deferred[int] = Deferred()

        def gate(count: int) -> Deferred[None] | None:
            if count > 100_000 and not reached.called:
                reached.callback(count)
                return held
            return None

        slave.service.replication.seedGate = gate
        await slave.call("set_up_replica_slave", seedParams(master, 2))
        await reached
        self.assertEqual((await replication(slave))["phase"], "copying")
        self.assertEqual(len(master.service.snapshots.dumps), 1)
        # The master takes writes, and DDL on another table, without waiting.
        await sql(master, "INSERT INTO shop.items (id, name) VALUES (424242, 'during seed')",
                  init_command="SET SESSION innodb_lock_wait_timeout = 5, lock_wait_timeout = 5")
        await sql(master, "UPDATE shop.big SET pad = 'changed' WHERE id = 1",
                  init_command="SET SESSION innodb_lock_wait_timeout = 5, lock_wait_timeout = 5")
        self.assertEqual(len(master.service.snapshots.dumps), 1)
        held.callback(None)
        state = await waitSeeded(slave)
        self.assertNotIn("error", state)
        target = (await master.call("get_replication_status"))["return"]["gtid_binlog_pos"]
        await slave.call("wait_for_gtid", {"gtid_pos": target, "timeout": 120})
        self.assertEqual((await sql(slave, "SELECT name FROM shop.items WHERE id = 424242")),
                         [("during seed",)])
        self.assertEqual(await checksums(slave, "shop.big", "shop.items"),
                         await checksums(master, "shop.big", "shop.items"))

    async def test_seed_from_unreachable_master(self) -> None:
        """
        A seed whose master agent cannot be reached fails cleanly: the node
        stays RUNNING, the error is reported, no replica is configured.
        """
        master = await startAgent(self)
        slave = await startAgent(self)
        params = seedParams(master, 3)
        params["master_agent_url"] = "http://127.0.0.1:1/"
        await slave.call("set_up_replica_slave", params)
        state = await waitSeeded(slave)
        self.assertEqual(state["phase"], "failed")
        self.assertIn("cannot reach the master agent", state["error"])
        self.assertIsNone(state["role"])
        self.assertNotIn("io_running", state)
        self.assertEqual((await slave.state())["state"], "RUNNING")
        self.assertEqual(await sql(slave, "SHOW SLAVE STATUS"), [])
        # Writable again, as it was before the set-up.
        self.assertEqual(await sql(slave, "SELECT @@read_only"), [(0,)])

    async def test_seed_refused_by_master_agent(self) -> None:
        """A wrong token, or a master without a binary log, fail the seed cleanly."""
        master = await startAgent(self)
        slave = await startAgent(self)
        await slave.call("set_up_replica_slave", seedParams(master, 3))
        state = await waitSeeded(slave)
        self.assertIn("set_up_replica_master first", state["error"])
        await master.call("set_up_replica_master", {"server_id": 1, "repl_password": PASSWORD})
        await slave.call("set_up_replica_slave",
                         seedParams(master, 3, master_agent_token="wrong"))
        state = await waitSeeded(slave)
        self.assertIn("wrong API token", state["error"])
        self.assertEqual(await sql(slave, "SHOW SLAVE STATUS"), [])
        response = await master.http.get(master.url + "snapshot")
        self.assertEqual(response.code, 401)
        await response.content()
        response = await master.http.get(master.url + "nothing-here")
        self.assertEqual(response.code, 404)
        self.assertEqual((await response.json())["error"]["code"], NotFound.code)

    async def test_master_dump_fails_mid_stream(self) -> None:
        """
        When the master's dump fails after data was sent, the master breaks
        the stream; the slave reports it and is left with no replica set up.
        """
        master, _ = await makeMaster(self)
        await loadShop(master)
        await insertRows(master, 2000)
        await sql(master, "CREATE TABLE shop.zz (a INT)")
        await sql(master, "CREATE VIEW shop.v AS SELECT a FROM shop.zz")
        await sql(master, "DROP TABLE shop.zz")
        slave = await startAgent(self)
        await slave.call("set_up_replica_slave", seedParams(master, 3))
        state = await waitSeeded(slave)
        self.assertEqual(state["phase"], "failed")
        self.assertIn("the master's snapshot failed", state["error"])
        self.assertIn("references invalid table", state["error"])
        self.assertGreater(state["last_setup"]["bytes"], 0)
        self.assertEqual(await sql(slave, "SHOW SLAVE STATUS"), [])
        self.assertIsNone(state["role"])
        self.assertEqual((await slave.state())["state"], "RUNNING")
        self.assertEqual(master.service.snapshots.dumps, [])

    async def test_agent_stops_during_seed(self) -> None:
        """
        A slave agent stopped in the middle of a seed cancels it: its client
        and the master's dump end, and nothing is left running.
        """
        master = await bigMaster(self, 10000)
        slave = await startAgent(self)
        reached: Deferred[int] = Deferred()

        def gate(count: int) -> Deferred[None] | None:
            if not reached.called:
                reached.callback(count)
                return Deferred()
            return None

        slave.service.replication.seedGate = gate
        await slave.call("set_up_replica_slave", seedParams(master, 2))
        await reached
        await slave.service.stopService()
        for _ in range(100):
            if not master.service.snapshots.dumps:
                break
            await deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(master.service.snapshots.dumps, [])
        self.assertEqual(master.service.snapshots.active, 0)

    async def test_seed_selected_databases(self) -> None:
        """With C{databases}, only those are copied (the accounts still are)."""
        master, _ = await makeMaster(self)
        await loadShop(master)
        await sql(master, "CREATE DATABASE other")
        slave = await startAgent(self)
        await slave.call("set_up_replica_slave", seedParams(master, 4, databases=["shop"]))
        state = await waitSeeded(slave)
        self.assertNotIn("error", state)
        self.assertEqual(await sql(slave, "SHOW DATABASES LIKE 'shop'"), [("shop",)])
        self.assertEqual(await sql(slave, "SHOW DATABASES LIKE 'other'"), [])
        with self.assertRaises(InvalidParams):
            await slave.call("set_up_replica_slave",
                             seedParams(master, 4, databases=["shop`; DROP"]))

    async def test_wrong_password_fails_cleanly(self) -> None:
        master, _ = await makeMaster(self)
        slave = await startAgent(self)
        await slave.call("set_up_replica_slave", seedParams(master, 3, repl_password="nope"))
        state = await waitSeeded(slave)
        self.assertEqual(state["phase"], "failed")
        self.assertIn("replication did not start", state["error"])
        self.assertIn("Access denied", state["error"])
        self.assertEqual(await sql(slave, "SHOW SLAVE STATUS"), [])
        self.assertIsNone(state["role"])


class FormTests(TestCase):
    skip = skip_unless_mariadb()
    timeout = 300

    async def test_explicit_coordinates(self) -> None:
        """The original's form: binary log file and position."""
        master, coords = await makeMaster(self)
        await loadShop(master)
        slave = await startAgent(self)
        result = (await slave.call("set_up_replica_slave", {
            "master_host": "127.0.0.1", "master_port": master.service.server.port,
            "master_log_file": coords["master_log_file"],
            "master_log_pos": coords["master_log_pos"],
            "slave_server_id": 5, "repl_user": "conpaassql_repl", "repl_password": PASSWORD,
        }))["return"]
        self.assertTrue(result["io_running"] and result["sql_running"])
        self.assertEqual(result["role"], "slave")
        await insertRows(master, 100)
        target = (await master.call("get_replication_status"))["return"]["gtid_binlog_pos"]
        await slave.call("wait_for_gtid", {"gtid_pos": target, "timeout": 60})
        self.assertEqual(await checksums(slave, "shop.items"),
                         await checksums(master, "shop.items"))

    async def test_gtid_form_with_hostile_credentials(self) -> None:
        """
        The GTID form, with a replication account whose name and password
        are full of quotes and SQL: replication works, nothing is injected.
        """
        logged: list[str] = []
        globalLogPublisher.addObserver(lambda event: logged.append(repr(event)))
        self.addCleanup(globalLogPublisher.removeObserver, globalLogPublisher._observers[-1])
        user = "r.e-p_l"
        master, coords = await makeMaster(self, password=HOSTILE_PASSWORD, user=user)
        await loadShop(master)
        slave = await startAgent(self)
        base = {"master_host": "127.0.0.1", "master_port": master.service.server.port,
                "slave_server_id": 6, "repl_user": user, "repl_password": HOSTILE_PASSWORD}
        for bad in ({"master_host": "127.0.0.1', MASTER_USER='root"},
                    {"repl_user": "x', MASTER_HOST='evil"},
                    {"master_gtid_pos": "0-1-1'; DROP DATABASE shop; --"}):
            with self.assertRaises(InvalidParams):
                await slave.call("set_up_replica_slave",
                                 {**base, "master_gtid_pos": coords["gtid_binlog_pos"], **bad})
        result = (await slave.call("set_up_replica_slave", {
            **base, "master_gtid_pos": coords["gtid_binlog_pos"]}))["return"]
        self.assertTrue(result["io_running"] and result["sql_running"])
        self.assertEqual(result["using_gtid"], "Slave_Pos")
        await insertRows(master, 100)
        target = (await master.call("get_replication_status"))["return"]["gtid_binlog_pos"]
        await slave.call("wait_for_gtid", {"gtid_pos": target, "timeout": 60})
        self.assertEqual(await checksums(slave, "shop.items"),
                         await checksums(master, "shop.items"))
        self.assertEqual((await sql(master, "SHOW DATABASES LIKE 'shop'")), [("shop",)])
        # A wrong password fails the start; neither password reaches the log.
        other = await startAgent(self)
        with self.assertRaises(OperationFailed) as caught:
            await other.call("set_up_replica_slave", {
                **base, "slave_server_id": 7, "repl_password": "wrong'\\pw",
                "master_gtid_pos": coords["gtid_binlog_pos"]})
        self.assertIn("Access denied", caught.exception.message)
        self.assertEqual(await sql(other, "SHOW SLAVE STATUS"), [])
        self.assertFalse([line for line in logged if "p'a" in line or "wrong'" in line])

    async def test_switchover(self) -> None:
        """
        The switchover steps: the old master goes read-only, the slave
        catches up and is promoted, the old master follows it by GTID; no
        committed row is lost.
        """
        master, _ = await makeMaster(self)
        await loadShop(master)
        await insertRows(master, 300)
        slave = await startAgent(self)
        await slave.call("set_up_replica_slave", seedParams(master, 2))
        self.assertNotIn("error", await waitSeeded(slave))
        await master.call("set_read_only", {"value": True})
        target = (await master.call("get_replication_status"))["return"]["gtid_binlog_pos"]
        await slave.call("wait_for_gtid", {"gtid_pos": target, "timeout": 60})
        promoted = (await slave.call("promote"))["return"]
        self.assertEqual(promoted["role"], "master")
        self.assertFalse(promoted["read_only"])
        self.assertEqual(await sql(slave, "SHOW SLAVE STATUS"), [])
        await insertRows(slave, 50, start=5000)
        old = master.service.server
        # The old master follows the new one from its own GTID position.
        await master.call("set_up_replica_slave", {
            "master_host": "127.0.0.1", "master_port": slave.service.server.port,
            "master_gtid_pos": target, "slave_server_id": 1,
            "repl_password": PASSWORD})
        newTarget = promoted["gtid_binlog_pos"]
        newTarget = (await slave.call("get_replication_status"))["return"]["gtid_binlog_pos"]
        await master.call("wait_for_gtid", {"gtid_pos": newTarget, "timeout": 60})
        self.assertEqual((await sql(master, "SELECT COUNT(*) FROM shop.items"))[0][0], 350)
        self.assertEqual(await checksums(master, "shop.items"),
                         await checksums(slave, "shop.items"))
        self.assertEqual((await master.state())["role"], "slave")
        self.assertIs(old, master.service.server)
