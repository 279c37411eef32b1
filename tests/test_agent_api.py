"""
Integration tests of the agent: a real agent with its own real mariadbd,
driven over real HTTP, checked by querying the server directly.
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from conpaassql.rpc.errors import (
    Conflict,
    InvalidParams,
    MethodNotFound,
    MySQLError,
    NotFound,
    OperationFailed,
    WrongState,
)
from tests.support.agent import canLogin, rootQuery, startAgent

HOSTILE = "x'; DROP USER root; --"

ROUTINES_DUMP = b"""\
-- a dump with DELIMITER blocks, a trigger, a procedure, a function and a view
/*!40101 SET NAMES utf8mb4 */;
CREATE DATABASE IF NOT EXISTS shop;
USE shop;
DROP TABLE IF EXISTS orders;
CREATE TABLE orders (id INT PRIMARY KEY, total DECIMAL(10,2), note TEXT);
CREATE TABLE audit (id INT AUTO_INCREMENT PRIMARY KEY, order_id INT, what VARCHAR(20));
DELIMITER ;;
CREATE TRIGGER orders_ai AFTER INSERT ON orders FOR EACH ROW
BEGIN
  INSERT INTO audit (order_id, what) VALUES (NEW.id, 'insert');
END ;;
CREATE PROCEDURE add_order(IN oid INT, IN amount DECIMAL(10,2))
BEGIN
  INSERT INTO orders VALUES (oid, amount, 'via procedure; with ;; semicolons');
END ;;
CREATE FUNCTION order_count() RETURNS INT READS SQL DATA
BEGIN
  RETURN (SELECT COUNT(*) FROM orders);
END ;;
DELIMITER ;
CREATE VIEW big_orders AS SELECT id, total FROM orders WHERE total > 100;
INSERT INTO orders VALUES (1, 10.50, 'it''s quoted'), (2, 250.00, 'back\\\\slash'),
  (3, 99.99, 'line\\nbreak');
CALL add_order(4, 500.00);
"""


class AgentAPITests(TestCase):
    timeout = 180

    async def test_state(self) -> None:
        """
        get_server_state answers the seed's GET form with the server's
        state, version, flavor, ports and uptime.
        """
        agent = await startAgent(self)
        response = await agent.http.get(
            agent.url + "?method=get_server_state&id=1",
            headers={"Authorization": "Bearer " + agent.token},
        )
        body = json.loads(await treq.content(response))
        self.assertEqual(body["error"], None)
        self.assertEqual(body["id"], "1")
        state = body["result"]["return"]
        self.assertEqual(state["state"], "RUNNING")
        self.assertTrue(state["isRunningMySQL"])
        self.assertEqual(state["flavor"], "mariadb")
        self.assertIn("MariaDB", state["version"])
        self.assertEqual(state["port"], int(agent.url.rsplit(":", 1)[1].strip("/")))
        self.assertIsInstance(state["mysqld_port"], int)
        self.assertNotEqual(state["mysqld_port"], 3306)
        rows = await rootQuery(agent, "SELECT @@port, @@tmpdir")
        self.assertEqual(rows[0][0], state["mysqld_port"])
        # A private temporary directory, not the shared /tmp.
        self.assertEqual(rows[0][1], os.path.join(agent.service.stateDir, "mysql", "tmp"))
        token = os.stat(os.path.join(agent.service.stateDir, "api-token"))
        self.assertEqual(stat.S_IMODE(token.st_mode), 0o600)

    async def test_unauthenticated(self) -> None:
        """A request without the token gets 401 and touches nothing."""
        agent = await startAgent(self)
        response = await agent.http.post(
            agent.url,
            data=json.dumps({"method": "delete_user", "params": {"username": "root"},
                             "id": 1}).encode(),
        )
        self.assertEqual(response.code, 401)
        body = json.loads(await treq.content(response))
        self.assertEqual(body["error"]["code"], -32001)
        self.assertIn("Bearer", body["error"]["message"])
        rows = await rootQuery(agent, "SELECT COUNT(*) FROM mysql.user WHERE User='root'")
        self.assertGreater(rows[0][0], 0)

    async def test_users(self) -> None:
        """
        configure_user creates a user with exactly the asked privileges,
        changes its password, and delete_user drops it.  Hostile names are
        refused; hostile passwords are only values.
        """
        agent = await startAgent(self)
        await rootQuery(agent, "CREATE DATABASE shop")
        result = (await agent.call("configure_user", {
            "username": "app", "password": HOSTILE, "databases": ["shop"]}))
        self.assertEqual(result["return"], "OK")
        self.assertTrue(result["created"])
        self.assertTrue(await canLogin(agent, "app", HOSTILE))
        grants = await rootQuery(agent, "SHOW GRANTS FOR 'app'@'%'")
        text = " ".join(g[0] for g in grants)
        self.assertIn("ON `shop`.*", text)
        self.assertNotIn("GRANT OPTION", text)
        self.assertNotIn("ON *.*", text.replace("GRANT USAGE ON *.*", ""))

        result = await agent.call("configure_user", {"username": "app", "password": "new-pw"})
        self.assertFalse(result["created"])
        self.assertFalse(await canLogin(agent, "app", HOSTILE))
        self.assertTrue(await canLogin(agent, "app", "new-pw"))

        users = (await agent.call("get_all_users"))["return"]
        self.assertIn({"username": "app", "location": "%", "managed": False}, users)
        self.assertTrue(any(u["username"] == "root" and u["managed"] for u in users))

        for bad in (HOSTILE, "a`b", "", "a" * 81, "x\x00y", "-rf"):
            with self.assertRaises(InvalidParams) as cm:
                await agent.call("configure_user", {"username": bad, "password": "p"})
            self.assertEqual(cm.exception.data, {"param": "username"})
        with self.assertRaises(InvalidParams):
            await agent.call("configure_user", {"username": "u", "password": "p",
                                                "databases": ["x`; DROP DATABASE mysql"]})
        with self.assertRaises(InvalidParams):
            await agent.call("configure_user", {"username": "u", "password": "p",
                                                "host": "'%' OR 1=1"})
        with self.assertRaises(InvalidParams):
            await agent.call("delete_user", {"username": "root"})
        with self.assertRaises(InvalidParams) as cm:
            await agent.call("configure_user", {"username": "u", "password": 5})
        self.assertEqual(cm.exception.data, {"param": "password"})
        rows = await rootQuery(agent, "SELECT COUNT(*) FROM mysql.user WHERE User='root'")
        self.assertGreater(rows[0][0], 0)

        self.assertEqual((await agent.call("delete_user", {"username": "app"}))["hosts"], ["%"])
        self.assertFalse(await canLogin(agent, "app", "new-pw"))
        with self.assertRaises(NotFound):
            await agent.call("delete_user", {"username": "app"})

    async def test_dump_with_routines(self) -> None:
        """
        A dump with DELIMITER blocks, a trigger, a procedure, a function and
        a view loads; the trigger and routines work afterwards.
        """
        agent = await startAgent(self)
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(ROUTINES_DUMP)
        with open(path, "rb") as f:
            result = await agent.client.upload("create_with_MySQLdump", {},
                                               {"mysqldump": ("dump.sql", f)})
        self.assertEqual(result["return"], "OK")
        self.assertEqual(result["bytes"], len(ROUTINES_DUMP))
        self.assertEqual(await rootQuery(agent, "SELECT COUNT(*) FROM shop.orders"), [(4,)])
        self.assertEqual(await rootQuery(agent, "SELECT COUNT(*) FROM shop.audit"), [(4,)])
        self.assertEqual(await rootQuery(agent, "SELECT shop.order_count()"), [(4,)])
        self.assertEqual(
            await rootQuery(agent, "SELECT note FROM shop.orders WHERE id IN (1, 2, 3, 4) "
                                    "ORDER BY id"),
            [("it's quoted",), ("back\\slash",), ("line\nbreak",),
             ("via procedure; with ;; semicolons",)],
        )
        self.assertEqual(await rootQuery(agent, "SELECT id FROM shop.big_orders ORDER BY id"),
                         [(2,), (4,)])
        state = await agent.state()
        self.assertEqual(state["last_load"]["state"], "DONE")
        self.assertEqual(state["last_load"]["bytes_loaded"], len(ROUTINES_DUMP))

    async def test_dump_error(self) -> None:
        """
        A bad statement fails the call with the server's message and the
        dump's line; the statements before it were applied, as reported.
        """
        agent = await startAgent(self)
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"CREATE DATABASE d1;\nCREATE TABLE d1.t (a INT);\n"
                    b"INSERT INTO d1.t VALUES (1);\nINSERT INTO d1.nope VALUES (2);\n"
                    b"INSERT INTO d1.t VALUES (3);\n")
        with open(path, "rb") as f, self.assertRaises(OperationFailed) as cm:
            await agent.client.upload("send_mysqldump", {}, {"mysqldump": ("x.sql", f)})
        self.assertEqual(cm.exception.data["line"], 4)
        self.assertEqual(cm.exception.data["errno"], 1146)
        self.assertIn("nope", cm.exception.message)
        self.assertEqual(await rootQuery(agent, "SELECT a FROM d1.t"), [(1,)])
        with self.assertRaises(InvalidParams) as cm2:
            await agent.call("create_with_MySQLdump", {})
        self.assertEqual(cm2.exception.data, {"param": "mysqldump"})

    async def test_dump_progress(self) -> None:
        """
        While a dump loads, get_server_state shows its progress, and calls
        that would disturb it are refused.
        """
        agent = await startAgent(self)
        path = self.mktemp()
        rows = 2000
        with open(path, "wb") as f:
            f.write(b"CREATE DATABASE big;\nCREATE TABLE big.t (id INT PRIMARY KEY, v TEXT);\n")
            for i in range(rows):
                f.write(b"INSERT INTO big.t VALUES (%d, '%s');\n" % (i, b"x" * 4000))
        total = os.path.getsize(path)
        seen: list[dict[str, Any]] = []
        conflicts: list[Exception] = []

        async def watch() -> None:
            while True:
                state = await agent.state()
                if "load" in state:
                    seen.append(state["load"])
                    if len(seen) == 1:
                        try:
                            await agent.call("stop_server")
                        except Conflict as e:
                            conflicts.append(e)
                elif seen:
                    return
                await deferLater(reactor, 0.02)

        from twisted.internet.defer import Deferred

        watcher = Deferred.fromCoroutine(watch())
        with open(path, "rb") as f:
            result = await agent.client.upload("create_with_MySQLdump", {},
                                               {"mysqldump": ("big.sql", f)})
        await watcher
        self.assertEqual(result["bytes"], total)
        self.assertTrue(seen, "no progress was ever visible")
        self.assertTrue(all(s["bytes_total"] == total for s in seen))
        self.assertTrue(all(0 <= s["bytes_loaded"] <= total for s in seen))
        loaded = [s["bytes_loaded"] for s in seen]
        self.assertEqual(loaded, sorted(loaded))
        self.assertEqual(len(conflicts), 1)
        self.assertEqual(await rootQuery(agent, "SELECT COUNT(*) FROM big.t"), [(rows,)])

    async def test_performance(self) -> None:
        """get_performance reports real, growing counters."""
        agent = await startAgent(self)
        first = (await agent.call("get_performance"))["return"]
        for _ in range(5):
            await rootQuery(agent, "SELECT 1")
        second = (await agent.call("get_performance"))["return"]
        self.assertGreater(second["timestamp"], first["timestamp"])
        self.assertGreaterEqual(second["status"]["Questions"] - first["status"]["Questions"], 5)
        for key in ("Threads_connected", "Bytes_received", "Slow_queries", "Uptime"):
            self.assertIsInstance(second["status"][key], int)

    async def test_configuration(self) -> None:
        """
        set_server_configuration edits my.cnf and restarts the server;
        options outside the whitelist and bad values are refused.
        """
        agent = await startAgent(self)
        result = await agent.call("set_server_configuration",
                                  {"id_param": "max_connections", "value": "77"})
        self.assertEqual(result["return"], "OK")
        self.assertEqual(await rootQuery(agent, "SELECT @@max_connections"), [(77,)])
        with self.assertRaises(InvalidParams):
            await agent.call("set_server_configuration",
                             {"id_param": "init_file", "value": "/etc/shadow"})
        with self.assertRaises(InvalidParams):
            await agent.call("set_server_configuration",
                             {"id_param": "max_connections", "value": "77\ninit_file=/x"})
        with open(os.path.join(agent.service.stateDir, "mysql", "my.cnf")) as f:
            text = f.read()
        self.assertNotIn("init_file", text)
        self.assertNotIn("init-file", text)

    async def test_stop_start_restart(self) -> None:
        """The server can be stopped, started and restarted; data survives."""
        agent = await startAgent(self)
        await rootQuery(agent, "CREATE DATABASE keep")
        self.assertEqual((await agent.call("stop_server"))["state"], "STOPPED")
        state = await agent.state()
        self.assertFalse(state["isRunningMySQL"])
        with self.assertRaises(WrongState):
            await agent.call("get_all_users")
        self.assertEqual((await agent.call("start_server"))["state"], "RUNNING")
        self.assertEqual((await agent.call("restart_server"))["state"], "RUNNING")
        rows = await rootQuery(agent, "SHOW DATABASES LIKE 'keep'")
        self.assertEqual(rows, [("keep",)])
        self.assertEqual((await agent.call("create_server"))["state"], "RUNNING")

    async def test_errors(self) -> None:
        """Unknown methods and bad params get the documented codes."""
        agent = await startAgent(self)
        with self.assertRaises(MethodNotFound):
            await agent.call("drop_everything")
        with self.assertRaises(InvalidParams) as cm:
            await agent.call("configure_user", {"username": "u"})
        self.assertEqual(cm.exception.data, {"param": "password"})
        with self.assertRaises(InvalidParams):
            await agent.call("get_server_state", {"unexpected": 1})
        # A statement the server itself refuses: with a password policy
        # installed, a weak password (MariaDB grants on databases that do not
        # exist yet, so a grant is no way to provoke a refusal).
        await rootQuery(agent, "INSTALL SONAME 'simple_password_check'")
        with self.assertRaises(MySQLError) as cm2:
            await agent.call("configure_user", {"username": "u", "password": "p",
                                                "databases": ["nodb"],
                                                "privileges": ["EXECUTE"]})
        self.assertEqual(cm2.exception.data, {"errno": 1819})
        self.assertIn("policy", cm2.exception.message)
        rows = await rootQuery(agent, "SELECT COUNT(*) FROM mysql.user WHERE User='u'")
        self.assertEqual(rows, [(0,)])

    async def test_shutdown(self) -> None:
        """shutdown answers, then stops the agent (and so its server)."""
        agent = await startAgent(self)
        result = await agent.call("shutdown")
        self.assertEqual(result["return"], "OK")
        await deferLater(reactor, 0.5)
        self.assertEqual(agent.shutdowns, 1)
