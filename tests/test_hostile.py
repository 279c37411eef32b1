"""
Hostile values (quotes, backticks, semicolons, NUL, newlines, shell
metacharacters, path traversal, very long values, odd unicode) in every
string parameter of every method: of the manager on the LOCAL driver (its
node a real agent with its real mariadbd), of a real agent directly, and
in the web front-end's forms.  Each is refused with -32602 or handled as a
plain value, and nothing is executed: a canary file a shell would create
never appears, the node's accounts, grants, databases and my.cnf are as
before (queried on the server itself), and an upload named C{../../x}
writes nothing outside the spool.
"""

from __future__ import annotations

import configparser
import glob
import json
import os
import secrets
import tempfile
from typing import Any
from urllib.parse import quote

import pymysql
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from conpaassql.gui.tap import GUIService
from conpaassql.rpc.client import RPCClient
from conpaassql.rpc.errors import RPCError
from tests.support.agent import RunningAgent, startAgent
from tests.support.localmanager import startLocalManager
from tests.support.mariadb import skip_unless_mariadb
from tests.test_agent_hostile import _snapshot as agentSnapshot
from tests.test_gui_http import WebClient

#: Error codes that say "refused" or "handled" for a value (never -32603).
HANDLED = {-32602, 1001, 1002, 1003, 1004, 1005, 1006}


def hostileValues(canary: str) -> list[str]:
    """Values to put in every string parameter; C{canary} must never be created."""
    return [
        "x'; DROP USER root; --", "a`b`c", "' OR '1'='1", "a;b", "x\x00y", "line\nbreak",
        "cr\r\nX-Injected: 1", f"$(touch {canary})", f"`touch {canary}`", f"; touch {canary}",
        f"| touch {canary}", f"&& touch {canary} &&", f"\n touch {canary}",
        "${IFS}cat${IFS}/etc/passwd", "../../etc/passwd", "..\\..\\boot.ini", "/etc/passwd",
        "%s%s%n", "{0}{1}", "%00", "\u202e\u00e9\u6f22\u5b57\U0001f642", "\ud800",
        "<script>alert(1)</script>", '"; rm -rf / #', "A" * 100_000, " ", "*", "%", "NULL",
    ]


async def _call(client: RPCClient, method: str, params: dict[str, Any]) -> tuple[str, Any]:
    """C{("ok", result)} or C{("error", code)}."""
    try:
        return "ok", await client.call(method, params)
    except RPCError as e:
        return "error", e.code


def _nodeRoot(stateDir: str, port: int) -> dict[str, Any]:
    """Root's connection arguments for the node's mariadbd (from its root.cnf)."""
    found = glob.glob(os.path.join(stateDir, "**", "root.cnf"), recursive=True)
    assert len(found) == 1, found
    cnf = configparser.ConfigParser(interpolation=None)
    cnf.read(found[0])
    client = cnf["client"]
    return {"host": "127.0.0.1", "port": port, "user": client.get("user", "root"),
            "password": client["password"].strip("'\""), "connect_timeout": 10}


def _snapshot(connectArgs: dict[str, Any]) -> dict[str, Any]:
    """What an injection would change: accounts, their grants, databases (blocking)."""
    conn = pymysql.connect(**connectArgs)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT User, Host FROM mysql.user ORDER BY User, Host")
            users = list(cur.fetchall())
            grants = {}
            for user, host in users:
                if user in ("mariadb.sys", "PUBLIC"):
                    continue
                cur.execute("SHOW GRANTS FOR %s@%s", (user, host))
                grants[f"{user}@{host}"] = sorted(r[0] for r in cur.fetchall())
            cur.execute("SHOW DATABASES")
            databases = sorted(r[0] for r in cur.fetchall())
            return {"users": users, "grants": grants, "databases": databases}
    finally:
        conn.close()


def _filesUnder(top: str) -> set[str]:
    return {os.path.join(d, f) for d, _, files in os.walk(top) for f in files}


class Canary:
    def __init__(self, testcase: TestCase) -> None:
        self.path = os.path.join(tempfile.gettempdir(), "conpaassql-canary-" + secrets.token_hex(8))
        testcase.addCleanup(self.remove)

    def remove(self) -> None:
        if os.path.exists(self.path):
            os.unlink(self.path)

    def check(self, testcase: TestCase) -> None:
        testcase.assertFalse(os.path.exists(self.path), "a hostile value was executed")


class ManagerHostileTests(TestCase):
    """The manager on the LOCAL driver, and the web front-end in front of it."""

    skip = skip_unless_mariadb()
    timeout = 900

    async def test_every_string_parameter(self) -> None:
        canary = Canary(self)
        m = await startLocalManager(self, nodes=1)
        cloud, service, url, token, client = m.cloud, m.service, m.url, m.token, m.client
        info = (await client.call("get_node_info", {"serviceNodeId": 1}))["serviceNode"]
        root = _nodeRoot(cloud.stateDir, info["mysqld_port"])
        before = await deferToThread(_snapshot, root)
        filesBefore = _filesUnder(cloud.stateDir)

        valid: dict[str, dict[str, Any]] = {
            "add_nodes": {"function": "agent", "count": 1},
            "remove_nodes": {"serviceNodeId": 1}, "delete_nodes": {"serviceNodeId": 1},
            "get_node_info": {"serviceNodeId": 1}, "get_users": {"serviceNodeId": 1},
            "configure_user": {"serviceNodeId": 1, "username": "hostile_u", "password": "pw",
                               "host": "%", "databases": ["hostiledb"],
                               "privileges": ["SELECT"]},
            "delete_user": {"serviceNodeId": 1, "username": "hostile_u", "host": "%"},
            "set_up_replica_master": {"id": 1}, "set_up_replica_slave": {"id": 1},
        }
        described = await client.call("list_methods")
        tried = 0
        for spec in described:
            name = spec["name"]
            if name == "send_mysqldump" or not spec["params"]:
                continue  # uploads below; methods without parameters take no string
            self.assertIn(name, valid, f"a new manager method to cover: {name}")
            for param in spec["params"]:
                for value in hostileValues(canary.path):
                    for form in (value, [value]) if param in ("databases", "privileges") \
                            else (value,):
                        params = {**valid[name], param: form}
                        outcome, detail = await _call(client, name, params)
                        tried += 1
                        what = (name, param, value[:60])
                        if outcome == "error":
                            self.assertIn(detail, HANDLED, what)
                            continue
                        # Handled as a plain value: only a user (or password) can be.
                        self.assertIn(name, ("configure_user", "delete_user", "get_node_info",
                                             "get_users"), what)
                        if name == "configure_user":
                            username = params["username"]
                            host = params.get("host", "%")
                            await client.call("delete_user", {
                                "serviceNodeId": 1, "username": username, "host": host})
        self.assertGreater(tried, 200)

        # Uploads: hostile file names and database names.
        assert service.manager is not None
        for value in hostileValues(canary.path)[:-5] + ["../../x", "../../../../tmp/x", "..",
                                                       "/etc/cron.d/x"]:
            for field in ("filename", "database"):
                with tempfile.TemporaryFile() as dump:
                    dump.write(b"SELECT 1;\n")
                    dump.seek(0)
                    params = {"serviceNodeId": "1"}
                    filename = "dump.sql"
                    if field == "database":
                        params["database"] = value
                    else:
                        filename = value
                    try:
                        await client.upload("send_mysqldump", params,
                                            {"mysqldump": (filename, dump)})
                    except RPCError as e:
                        self.assertIn(e.code, HANDLED, (field, value[:60]))
                    except ValueError:
                        pass  # our own client refuses CR/LF in a file name
        await self.frontEnd(url, token, canary)

        canary.check(self)
        self.assertEqual(await deferToThread(_snapshot, root), before)
        self.assertEqual(await client.call("list_nodes"), {"serviceNode": [1]})
        # Nothing new outside the spool but logs and the nodes' own files.
        new = {p for p in _filesUnder(cloud.stateDir) - filesBefore
               if "/uploads/" not in p and not p.endswith(".log")}
        self.assertFalse([p for p in new if os.path.basename(p) in ("x", "passwd")], new)
        self.assertFalse(os.path.exists(os.path.join(os.path.dirname(cloud.stateDir), "x")))

    async def frontEnd(self, managerURL: str, token: str, canary: Canary) -> None:
        """The web front-end's forms, with hostile values in every field."""
        gui = GUIService(os.path.abspath(self.mktemp()), managerURL,
                         "tcp:0:interface=127.0.0.1")
        gui.startService()
        self.addCleanup(gui.stopService)
        port = await gui.listening
        web = WebClient(f"http://127.0.0.1:{port.getHost().port}/ui/")
        self.addCleanup(web.close)
        values = [v for v in hostileValues(canary.path) if v != "\ud800"][:-4]
        # Sign-in with hostile tokens: refused, and the value is not echoed raw.
        for value in values:
            page = await web.get("login")
            response = await web.post("login", {"csrf": page.csrf(), "token": value})
            self.assertIn(response.code, (200, 400, 401, 403, 413), value[:60])
            self.assertNotIn("<script>alert", response.text)
        self.assertEqual((await web.signIn(token)).code, 303)
        csrf = (await web.get("nodes")).csrf()
        for value in values:
            for path, fields in (
                ("nodes/add", {"count": value}),
                ("nodes/1/users", {"username": value, "password": "pw"}),
                ("nodes/1/users", {"username": "hostile_g", "password": value}),
                ("nodes/1/users/delete", {"username": value}),
                # (in the URL, cut to what Twisted's request line takes)
                (f"nodes/{quote(value[:2000], safe='')}/remove", {}),
                (f"nodes/{quote(value[:2000], safe='')}/users", {"username": "u",
                                                                   "password": "p"}),
            ):
                response = await web.post(path, {"csrf": csrf, **fields},
                                          headers={"Accept": "text/html"})
                what = (path[:60], str(fields)[:80])
                self.assertNotEqual(response.code, 500, what)
                self.assertNotIn("<script>alert", response.text, what)
            await web.post("nodes/1/users/delete", {"csrf": csrf, "username": "hostile_g"})
        for value in values + ["../../x"]:
            # (treq, the test's client, never finishes a request whose file
            # name is over 64 KiB; the services refuse part headers over 16 KiB)
            filename = value.replace("\r", "").replace("\n", "")[:20_000]
            response = await web.request(
                "POST", "nodes/1/dump",
                files={"mysqldump": (filename, "text/plain",
                                     _bytes(b"SELECT 1;\n"))},
                headers={"Accept": "application/json", "X-CSRF-Token": csrf})
            self.assertNotEqual(response.code, 500, value[:60])
            body = json.loads(response.body)
            self.assertIn("ok", body)
        page = await web.get("nodes/1")
        self.assertEqual(page.code, 200)
        self.assertNotIn("<script>alert", page.text)


def _bytes(data: bytes) -> Any:
    import io

    return io.BytesIO(data)


class AgentHostileTests(TestCase):
    """A real agent, directly: every string parameter, and every settable option."""

    skip = skip_unless_mariadb()
    timeout = 900

    async def test_every_string_parameter(self) -> None:
        canary = Canary(self)
        agent: RunningAgent = await startAgent(self)
        server: Any = agent.service.server
        with open(server.mycnf_path) as f:
            cnfBefore = f.read()
        before = await agentSnapshot(agent)
        valid: dict[str, dict[str, Any]] = {
            "configure_user": {"username": "hostile_u", "password": "pw", "host": "%",
                               "databases": ["hostiledb"], "privileges": ["SELECT"]},
            "delete_user": {"username": "hostile_u", "host": "%"},
            "set_server_configuration": {"id_param": "max_connections", "value": "151"},
            "set_read_only": {"value": True},
            "wait_for_gtid": {"gtid_pos": "0-1-1", "timeout": 1},
        }
        # The replication set-ups take some hostile-looking values as they
        # are (a user named NULL, any password) and then change the server
        # for good (binary log, accounts, replication), which this test's
        # before/after comparison cannot allow: tests.test_agent_replication
        # (hostile names refused, hostile credentials working as values) and
        # tests.test_agent_replsql (validation and quoting of every value,
        # property-tested) cover them.
        coveredElsewhere = {"create_with_MySQLdump", "set_up_replica_master",
                            "set_up_replica_slave"}
        tried = 0
        for spec in await agent.call("list_methods"):
            name = spec["name"]
            if name in coveredElsewhere or not spec["params"]:
                continue
            self.assertIn(name, valid, f"a new agent method to cover: {name}")
            for param in spec["params"]:
                if param == "grant_option":
                    continue
                for value in hostileValues(canary.path):
                    params = {**valid[name], param: [value] if param in (
                        "databases", "privileges") else value}
                    outcome, detail = await _call(agent.client, name, params)
                    tried += 1
                    what = (name, param, value[:60])
                    if outcome == "error":
                        self.assertIn(detail, HANDLED, what)
                        continue
                    self.assertIn(name, ("configure_user", "delete_user"), what)
                    if name == "configure_user":
                        await agent.call("delete_user", {"username": params["username"],
                                                         "host": params["host"]})
        # Every settable option, with every hostile value: refused, no restart.
        options = sorted([
            "port", "bind-address", "datadir", "max_connections", "innodb_buffer_pool_size",
            "max_allowed_packet", "wait_timeout", "slow_query_log", "long_query_time",
            "character_set_server", "collation_server", "sql_mode", "server_id", "log_bin",
            "binlog_format", "read_only", "gtid_domain_id", "log_slave_updates", "relay_log"])
        plain = {"NULL", "*", "%", " "}  # (a valid sql_mode, or refused as empty)
        for option in options:
            for value in [v for v in hostileValues(canary.path) if v not in plain]:
                outcome, detail = await _call(agent.client, "set_server_configuration",
                                              {"id_param": option, "value": value})
                tried += 1
                self.assertEqual((outcome, detail), ("error", -32602), (option, value[:60]))
        # Uploads: hostile database names and file names; nothing written outside.
        spool = os.path.join(agent.service.stateDir, "uploads")
        filesBefore = _filesUnder(agent.service.stateDir)
        for value in hostileValues(canary.path)[:-5] + ["../../x", "../x"]:
            for field in ("database", "filename"):
                params = {"database": value} if field == "database" else {}
                filename = value if field == "filename" else "d.sql"
                with tempfile.TemporaryFile() as f:
                    f.write(b"SELECT 1;\n")
                    f.seek(0)
                    try:
                        await agent.client.upload("create_with_MySQLdump", params,
                                                  {"mysqldump": (filename, f)})
                    except RPCError as e:
                        self.assertIn(e.code, HANDLED, (field, value[:60]))
                    except ValueError:
                        pass  # our own client refuses CR/LF in a file name
        self.assertGreater(tried, 300)
        new = _filesUnder(agent.service.stateDir) - filesBefore
        self.assertFalse([p for p in new if not p.startswith(spool) and not p.endswith(".log")
                          and "/data/" not in p], new)
        canary.check(self)
        self.assertEqual(await agentSnapshot(agent), before)
        with open(server.mycnf_path) as f:
            self.assertEqual(f.read(), cnfBefore)
        self.assertEqual((await agent.state())["state"], "RUNNING")
        self.assertEqual(agent.shutdowns, 0)
