"""
Integration tests of the agent against hostile and malformed input: a real
agent with its own real mariadbd, driven over real HTTP; after each attack
the server is queried directly to show that nothing was executed.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from twisted.trial.unittest import TestCase

from conpaassql.rpc.errors import InvalidParams, MethodNotFound, OperationFailed
from tests.support.agent import RunningAgent, canLogin, rootQuery, startAgent

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

INJECTION = "x'; DROP USER root; --"

HOSTILE_USERNAMES = [
    INJECTION, "a`b", "root'@'%", "x\x00y", "a" * 81, "", " ", "-rf", ".hidden", "user\n",
    "\u00fc", "%", "a b", "'", "\\", "a*", "root", "conpaassql_repl", "mariadb.sys",
    "u\"; SHUTDOWN; --", "x' IDENTIFIED BY 'y",
]
HOSTILE_HOSTS = [
    "'%' OR 1=1", "x`y", "h\x00", "h" * 256, "", "localhost'; DROP USER root; --", "%\n",
    "127.0.0.1 ", "a b", "h'@'%",
]
#: Passwords that are only values: accepted, and exactly these log in.
ODD_PASSWORDS = [
    INJECTION, "back`tick", 'quote"s', "back\\slash", "\u00fc \u6f22\u5b57", "p" * 256, "%s",
    "%(x)s", "?;--", " leading and trailing ", "new\nline",
]
#: Passwords refused with -32602: NUL, too long, empty.
BAD_PASSWORDS = ["p\x00w", "p" * 257, ""]
HOSTILE_DATABASES = [
    "x`; DROP DATABASE mysql; --", "a b", "../x", "*.*", "mysql`.`user", "d\x00",
    "d" * 65, "mysql", "information_schema", "performance_schema", "sys", "MySQL",
]


async def _snapshot(agent: RunningAgent) -> dict[str, Any]:
    """What an injection would change: accounts, their grants, databases."""
    users = await rootQuery(agent, "SELECT User, Host FROM mysql.user ORDER BY User, Host")
    grants = {}
    for user, host in users:
        if user in ("mariadb.sys", "PUBLIC"):
            continue
        rows = await rootQuery(agent, "SHOW GRANTS FOR %s@%s", (user, host))
        grants[f"{user}@{host}"] = sorted(r[0] for r in rows)
    databases = await rootQuery(agent, "SHOW DATABASES")
    return {"users": users, "grants": grants, "databases": sorted(databases)}


class HostileInputTests(TestCase):
    timeout = 300

    async def assertRefused(self, agent: RunningAgent, method: str, params: Any,
                            param: str | None) -> None:
        with self.assertRaises(InvalidParams, msg=f"{method} {params!r}") as cm:
            await agent.call(method, params)
        if param is not None:
            self.assertEqual(cm.exception.data, {"param": param}, f"{method} {params!r}")

    async def test_hostile_names(self) -> None:
        """
        Hostile user names, hosts, database names and privileges are
        refused with -32602 naming the parameter; afterwards the server's
        accounts, grants and databases are exactly as before.
        """
        agent = await startAgent(self)
        before = await _snapshot(agent)
        self.assertIn("root", [u for u, _ in before["users"]])
        for username in HOSTILE_USERNAMES:
            await self.assertRefused(agent, "configure_user",
                                     {"username": username, "password": "p"}, "username")
            await self.assertRefused(agent, "delete_user", {"username": username}, "username")
        for host in HOSTILE_HOSTS:
            await self.assertRefused(agent, "configure_user",
                                     {"username": "u", "password": "p", "host": host}, "host")
            await self.assertRefused(agent, "delete_user", {"username": "u", "host": host},
                                     "host")
        for database in HOSTILE_DATABASES:
            await self.assertRefused(agent, "configure_user", {
                "username": "u", "password": "p", "databases": [database]}, "databases")
        for privileges in (["ALL; DROP USER root"], ["GRANT OPTION"], ["SUPER"], ["FILE"],
                           ["SELECT`"], [""], "SELECT,SHUTDOWN"):
            await self.assertRefused(agent, "configure_user", {
                "username": "u", "password": "p", "databases": ["d"],
                "privileges": privileges}, "privileges")
        self.assertEqual(await _snapshot(agent), before)

    async def test_passwords_are_values(self) -> None:
        """
        Odd passwords (quotes, backticks, backslashes, format markers,
        newlines, 256 characters) are only values: the account logs in with
        exactly that password; NUL, over-long and empty ones are refused.
        """
        agent = await startAgent(self)
        before = await _snapshot(agent)
        for n, password in enumerate(ODD_PASSWORDS):
            user = f"odd{n}"
            result = await agent.call("configure_user", {"username": user, "password": password})
            self.assertTrue(result["created"])
            self.assertTrue(await canLogin(agent, user, password), repr(password))
            self.assertFalse(await canLogin(agent, user, password + "x"))
        for password in BAD_PASSWORDS:
            await self.assertRefused(agent, "configure_user",
                                     {"username": "bad", "password": password}, "password")
        after = await _snapshot(agent)
        made = {f"odd{n}@%" for n in range(len(ODD_PASSWORDS))}
        self.assertEqual(set(after["grants"]) - set(before["grants"]), made)
        for account in made:
            self.assertEqual(after["grants"][account][1:], [], account)
            self.assertNotIn("GRANT OPTION", after["grants"][account][0])
        self.assertEqual(after["databases"], before["databases"])
        self.assertEqual(await rootQuery(agent, "SELECT CURRENT_USER()"), [("root@localhost",)])

    async def test_malformed_calls(self) -> None:
        """
        Unknown methods, missing params, wrong types, unknown params and
        hostile option values get -32601/-32602 naming the parameter.
        """
        agent = await startAgent(self)
        before = await _snapshot(agent)
        for name in ("drop_everything", "configure_user; DROP", "__init__", "_database",
                     "GET_SERVER_STATE", "x" * 5000):
            with self.assertRaises(MethodNotFound):
                await agent.call(name)
        cases: list[tuple[str, Any, str | None]] = [
            ("configure_user", {}, "username"),
            ("configure_user", {"username": "u"}, "password"),
            ("configure_user", {"username": ["u"], "password": "p"}, "username"),
            ("configure_user", {"username": "u", "password": {"p": 1}}, "password"),
            ("configure_user", {"username": "u", "password": "p", "databases": 5}, "databases"),
            ("configure_user", {"username": "u", "password": "p", "databases": [None]},
             "databases"),
            ("configure_user", {"username": "u", "password": "p", "grant_option": "maybe"},
             "grant_option"),
            ("configure_user", {"username": "u", "password": "p", "role": "admin"}, "role"),
            ("configure_user", ["u", "p", "%", [], ["ALL"], False, "extra"], None),
            ("delete_user", {}, "username"),
            ("delete_user", {"username": 7}, "username"),
            ("set_server_configuration", {}, "id_param"),
            ("set_server_configuration", {"id_param": "port"}, "value"),
            ("set_server_configuration", {"id_param": ["port"], "value": "1"}, "id_param"),
            ("set_server_configuration", {"id_param": "init_file", "value": "/tmp/x"}, None),
            ("set_server_configuration", {"id_param": "port", "value": "3306\n[client]"}, None),
            ("set_server_configuration", {"id_param": "port", "value": "99999"}, None),
            ("set_server_configuration", {"id_param": "datadir", "value": "relative"}, None),
            ("set_server_configuration", {"id_param": "bind-address", "value": "a b"}, None),
            ("get_server_state", {"verbose": True}, "verbose"),
            ("get_all_users", [1], None),
            ("create_with_MySQLdump", {}, "mysqldump"),
            ("list_methods", "all", "params"),
        ]
        for method, params, param in cases:
            await self.assertRefused(agent, method, params, param)
        with open(os.path.join(agent.service.stateDir, "mysql", "my.cnf")) as f:
            mycnf = f.read()
        for word in ("init_file", "init-file", "[client]", "99999", "relative", "a b"):
            self.assertNotIn(word, mycnf)
        self.assertEqual((await agent.state())["state"], "RUNNING")
        self.assertEqual(await _snapshot(agent), before)

    async def test_raw_http(self) -> None:
        """
        Malformed HTTP requests get one JSON reply each with the documented
        code: bad JSON, a non-object, a batch, GET in the seed's form with a
        hostile parameter.
        """
        agent = await startAgent(self)
        headers = {"Authorization": "Bearer " + agent.token}

        async def post(body: bytes) -> tuple[int, Any]:
            response = await agent.http.post(agent.url, data=body, headers=headers)
            return response.code, json.loads(await response.content())

        self.assertEqual((await post(b'{"method": '))[1]["error"]["code"], -32700)
        self.assertEqual((await post(b'"get_server_state"'))[1]["error"]["code"], -32600)
        code, replies = await post(json.dumps([
            {"jsonrpc": "2.0", "method": "get_all_users", "id": 1},
            {"jsonrpc": "2.0", "method": "delete_user", "params": {"username": INJECTION},
             "id": 2},
        ]).encode())
        self.assertEqual(code, 200)
        self.assertTrue(any(u["username"] == "root" for u in replies[0]["result"]["return"]))
        self.assertEqual(replies[1]["error"]["code"], -32602)
        response = await agent.http.get(
            agent.url + "?params=%7B%22username%22%3A+%22x%27%3B+DROP+USER+root%3B+--%22%7D"
            "&method=delete_user&id=1", headers=headers)
        reply = json.loads(await response.content())
        self.assertEqual((reply["id"], reply["error"]["code"]), ("1", -32602))
        self.assertGreater(
            (await rootQuery(agent, "SELECT COUNT(*) FROM mysql.user WHERE User='root'"))[0][0], 0)


DUMP = b"""\
-- routines, triggers and views, in the shapes mariadb-dump writes them
/*!40101 SET NAMES utf8mb4 */;
CREATE DATABASE IF NOT EXISTS `shop`;
USE `shop`;
CREATE TABLE `items` (`id` int NOT NULL, `price` decimal(8,2) NOT NULL,
  `name` varchar(40) NOT NULL, PRIMARY KEY (`id`));
CREATE TABLE `price_log` (`item_id` int, `old` decimal(8,2), `new` decimal(8,2));
INSERT INTO `items` VALUES (1,9.99,'pen; ink'),(2,120.00,'lamp -- desk'),(3,45.50,'mug /* tea */');
/*!50003 SET @saved_sql_mode = @@sql_mode */ ;
/*!50003 SET sql_mode = 'STRICT_TRANS_TABLES' */ ;
DELIMITER ;;
/*!50003 CREATE*/ /*!50003 TRIGGER `items_bu` BEFORE UPDATE ON `items` FOR EACH ROW
BEGIN
  IF NEW.price <> OLD.price THEN
    INSERT INTO price_log VALUES (OLD.id, OLD.price, NEW.price);
  END IF;
END */;;
DELIMITER ;
/*!50003 SET sql_mode = @saved_sql_mode */ ;
DELIMITER $$
CREATE PROCEDURE `discount`(IN pct INT)
BEGIN
  DECLARE done INT DEFAULT 0;
  UPDATE items SET price = ROUND(price * (100 - pct) / 100, 2);
  SELECT 'semicolons; inside; strings' INTO @note;
END $$
CREATE FUNCTION `total`() RETURNS decimal(10,2) DETERMINISTIC READS SQL DATA
RETURN (SELECT SUM(price) FROM items) $$
DELIMITER ;
CREATE ALGORITHM=UNDEFINED SQL SECURITY DEFINER VIEW `cheap` AS
  SELECT `id`, `name` FROM `items` WHERE `price` < 50;
CALL discount(10);
"""


class DumpTests(TestCase):
    timeout = 300

    async def test_routines_triggers_views(self) -> None:
        """
        A dump with a trigger, a procedure and a function in DELIMITER
        blocks (both ;; and $$) and a view loads: the server's catalogue has
        them, and they work (the procedure ran at load time and fired the
        trigger for each row).
        """
        agent = await startAgent(self)
        result = await agent.loadDump(DUMP)
        self.assertEqual(result["bytes"], len(DUMP))
        self.assertEqual(
            await rootQuery(agent, "SELECT TRIGGER_NAME, EVENT_MANIPULATION, ACTION_TIMING "
                               "FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA='shop'"),
            [("items_bu", "UPDATE", "BEFORE")])
        self.assertEqual(
            await rootQuery(agent, "SELECT ROUTINE_NAME, ROUTINE_TYPE FROM information_schema.ROUTINES"
                               " WHERE ROUTINE_SCHEMA='shop' ORDER BY ROUTINE_NAME"),
            [("discount", "PROCEDURE"), ("total", "FUNCTION")])
        self.assertEqual(
            await rootQuery(agent, "SELECT TABLE_NAME FROM information_schema.VIEWS "
                               "WHERE TABLE_SCHEMA='shop'"), [("cheap",)])
        self.assertEqual(await rootQuery(agent, "SELECT id, price, name FROM shop.items ORDER BY id"),
                         [(1, pytest_decimal("8.99"), "pen; ink"),
                          (2, pytest_decimal("108.00"), "lamp -- desk"),
                          (3, pytest_decimal("40.95"), "mug /* tea */")])
        self.assertEqual(len(await rootQuery(agent, "SELECT * FROM shop.price_log")), 3)
        self.assertEqual(await rootQuery(agent, "SELECT shop.total()"), [(pytest_decimal("157.94"),)])
        self.assertEqual(await rootQuery(agent, "SELECT id FROM shop.cheap ORDER BY id"), [(1,), (3,)])

    async def test_failure_in_a_block(self) -> None:
        """
        A statement that fails inside a DELIMITER block reports the server's
        message and the line where that statement starts; the statements
        before it are applied and the ones after are not.
        """
        agent = await startAgent(self)
        dump = (b"CREATE DATABASE d;\n"            # 1
                b"CREATE TABLE d.t (a INT);\n"     # 2
                b"DELIMITER ;;\n"                  # 3
                b"CREATE PROCEDURE d.p()\n"        # 4
                b"BEGIN\n"                         # 5
                b"  SELECT 1;\n"                   # 6
                b"END ;;\n"                        # 7
                b"CREATE PROCEDURE d.p()\n"        # 8: already exists
                b"BEGIN\n"
                b"  SELECT 2;\n"
                b"END ;;\n"
                b"DELIMITER ;\n"
                b"INSERT INTO d.t VALUES (1);\n")
        with self.assertRaises(OperationFailed) as cm:
            await agent.loadDump(dump)
        error = cm.exception
        self.assertEqual(error.data["errno"], 1304)
        self.assertEqual(error.data["line"], 8)
        self.assertRegex(error.message, r"line 8.*PROCEDURE.*p.*already exists")
        self.assertEqual(await rootQuery(agent, "SELECT COUNT(*) FROM d.t"), [(0,)])
        self.assertEqual(await rootQuery(agent, "SELECT ROUTINE_NAME FROM information_schema.ROUTINES"
                                            " WHERE ROUTINE_SCHEMA='d'"), [("p",)])
        state = await agent.state()
        self.assertEqual(state["last_load"]["state"], "FAILED")
        self.assertEqual(state["last_load"]["line"], 8)

    async def test_into_database(self) -> None:
        """
        The optional database parameter selects the default database of the
        dump; a hostile one is refused before anything runs.
        """
        agent = await startAgent(self)
        await rootQuery(agent, "CREATE DATABASE target")
        dump = b"CREATE TABLE t (a INT);\nINSERT INTO t VALUES (7);\n"
        for database in ("x`y", "--execute=DROP DATABASE target", "t;", "a b"):
            with self.assertRaises(InvalidParams) as cm:
                await agent.loadDump(dump, {"database": database}, "send_mysqldump")
            self.assertEqual(cm.exception.data, {"param": "database"})
        self.assertEqual(await rootQuery(agent, "SHOW TABLES IN target"), [])
        await agent.loadDump(dump, {"database": "target"}, "send_mysqldump")
        self.assertEqual(await rootQuery(agent, "SELECT a FROM target.t"), [(7,)])


class EveryMethodTests(TestCase):
    timeout = 300

    async def test_list_methods_matches_readme(self) -> None:
        """
        list_methods over HTTP names exactly the methods in the README's
        agent table (aliases included), each with its parameters.
        """
        agent = await startAgent(self)
        methods = await agent.call("list_methods")
        published = set()
        for m in methods:
            published.add(m["name"])
            published.update(m["aliases"])
        with open(os.path.join(ROOT, "README.md")) as f:
            readme = f.read()
        section = readme.split("### Agent methods", 1)[1].split("\n## ", 1)[0]
        documented = set()
        for row in re.findall(r"(?m)^\| (`[^|]*`) \|", section):
            documented.update(re.findall(r"`([a-zA-Z_]+)`", row))
        self.assertEqual(published, documented)
        params = {m["name"]: m["params"] for m in methods}
        self.assertEqual(params["configure_user"],
                         ["username", "password", "host", "databases", "privileges",
                          "grant_option"])
        self.assertEqual(params["set_server_configuration"], ["id_param", "value"])


def pytest_decimal(text: str) -> Any:
    import decimal

    return decimal.Decimal(text)
