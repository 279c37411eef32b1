"""
Unit tests of the web front-end's parts: sessions (on a Clock), the
configuration file, the reading of the manager's answers, the twistd
options.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from conpaassql.gui import model
from conpaassql.gui.config import ConfigError, GUIConfig, parse_config
from conpaassql.gui.session import SessionStore
from conpaassql.gui.tap import DEFAULT_LISTEN, DEFAULT_MANAGER_URL, GUIService, Options, makeService
from conpaassql.rpc.errors import NotAvailable, NotFound, TransportError, Unauthorized, fromWire

SECRET = b"0123456789abcdef0123456789abcdef"


class SessionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.store = SessionStore(SECRET, self.clock.seconds, idleTimeout=100, maxAge=1000,
                                  maxSessions=3)

    def test_create_and_get(self) -> None:
        session = self.store.create("tok")
        self.assertIs(self.store.get(session.sid), session)
        self.assertIsNone(self.store.get("other"))
        self.assertIsNone(self.store.get(None))
        self.assertGreaterEqual(len(session.sid), 40)
        self.assertNotIn("tok", repr(session))

    def test_idle_timeout(self) -> None:
        session = self.store.create("tok")
        self.clock.advance(90)
        self.assertIs(self.store.get(session.sid), session)  # touched
        self.clock.advance(90)
        self.assertIs(self.store.get(session.sid), session)
        self.clock.advance(101)
        self.assertIsNone(self.store.get(session.sid))
        self.assertEqual(len(self.store), 0)

    def test_max_age(self) -> None:
        session = self.store.create("tok")
        for _ in range(11):
            self.clock.advance(95)
            self.store.get(session.sid)
        self.assertIsNone(self.store.get(session.sid))

    def test_bounded(self) -> None:
        """The least recently used session goes when the store is full."""
        first = self.store.create("a")
        self.clock.advance(1)
        second = self.store.create("b")
        self.clock.advance(1)
        self.store.get(first.sid)
        self.store.create("c")
        self.store.create("d")
        self.assertEqual(len(self.store), 3)
        self.assertIsNone(self.store.get(second.sid))
        self.assertIsNotNone(self.store.get(first.sid))

    def test_csrf(self) -> None:
        a, b = self.store.create("a"), self.store.create("b")
        tokenA = self.store.csrfToken(a.sid)
        self.assertTrue(self.store.checkCsrf(a.sid, tokenA))
        self.assertFalse(self.store.checkCsrf(b.sid, tokenA))
        self.assertFalse(self.store.checkCsrf(a.sid, None))
        self.assertFalse(self.store.checkCsrf(a.sid, ""))
        self.assertFalse(self.store.checkCsrf(None, tokenA))
        self.assertFalse(self.store.checkCsrf(a.sid, tokenA + "\u00e9"))
        # Keyed by the secret: another front-end's tokens do not pass.
        other = SessionStore(b"x" * 32, self.clock.seconds)
        self.assertNotEqual(other.csrfToken(a.sid), tokenA)

    def test_end_and_flash(self) -> None:
        session = self.store.create("a")
        session.addFlash("ok", "done")
        self.assertEqual(session.popFlash(), [("ok", "done")])
        self.assertEqual(session.popFlash(), [])
        self.store.end(session.sid)
        self.store.end(session.sid)
        self.assertIsNone(self.store.get(session.sid))

    def test_short_secret(self) -> None:
        self.assertRaises(ValueError, SessionStore, b"short", self.clock.seconds)


class ConfigTests(SynchronousTestCase):
    def test_original_format(self) -> None:
        config = parse_config("MANAGER_HOST = 'db-manager.example'\nMANAGER_PORT = 50001\n"
                              "AGENT_PORT = 60000\n")
        self.assertEqual(config.managerURL, "http://db-manager.example:50001/")

    def test_default_port(self) -> None:
        self.assertEqual(parse_config("MANAGER_HOST = \"10.0.0.5\"").managerURL,
                         "http://10.0.0.5:50000/")
        self.assertEqual(parse_config("MANAGER_HOST = ::1").managerURL, "http://[::1]:50000/")

    def test_section(self) -> None:
        config = parse_config(
            "[gui]\nmanager_url = https://m.example/\nlisten = tcp:5001\n"
            "secure_cookies = yes\nallowed_origins = https://a.example, https://b.example\n"
        )
        self.assertEqual(config, GUIConfig("https://m.example/", "tcp:5001", True,
                                           ("https://a.example", "https://b.example")))

    def test_empty(self) -> None:
        self.assertEqual(parse_config(""), GUIConfig())

    def test_all_problems_together(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            parse_config("[gui]\nMANAGER_HOST = a/b\nMANAGER_PORT = 99999\ncolour = red\n"
                         "secure_cookies = maybe\n[other]\n", "f.conf")
        lines = str(caught.exception).splitlines()
        self.assertEqual(len(lines), 5, lines)
        self.assertTrue(all(line.startswith("f.conf: ") for line in lines))
        for fragment in ["unknown section [other]", "unknown key 'colour'", "MANAGER_HOST 'a/b'",
                         "MANAGER_PORT '99999'", "secure_cookies must be true or false"]:
            self.assertTrue(any(fragment in line for line in lines), fragment)

    def test_url_and_host(self) -> None:
        self.assertRaises(ConfigError, parse_config,
                          "manager_url = http://a/\nMANAGER_HOST = b")
        self.assertRaises(ConfigError, parse_config, "manager_url = ftp://a/")
        self.assertRaises(ConfigError, parse_config, "MANAGER_PORT = 1")


class OptionsTests(SynchronousTestCase):
    def parse(self, *argv: str) -> Options:
        options = Options()
        options.parseOptions(list(argv))
        return options

    def test_defaults(self) -> None:
        options = self.parse()
        self.assertEqual(options["listen"], DEFAULT_LISTEN)
        self.assertEqual(options["listen"], "tcp:5000:interface=127.0.0.1")
        self.assertEqual(options["manager-url"], DEFAULT_MANAGER_URL)
        self.assertTrue(os.path.isabs(options["state-dir"]))

    def test_config_and_override(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("MANAGER_HOST = 'm.example'\nMANAGER_PORT = 51000\n")
        self.assertEqual(self.parse("--config", path)["manager-url"], "http://m.example:51000/")
        self.assertEqual(
            self.parse("--config", path, "--manager-url", "http://x:1/")["manager-url"],
            "http://x:1/",
        )

    def test_bad_config(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("colour = red\n")
        self.assertRaises(usage.UsageError, self.parse, "--config", path)
        self.assertRaises(usage.UsageError, self.parse, "--config", path + ".missing")

    def test_make_service(self) -> None:
        options = self.parse("--listen", "tcp:0", "--manager-url", "http://m:1/",
                             "--state-dir", self.mktemp())
        svc = makeService(options)
        self.assertIsInstance(svc, GUIService)
        assert isinstance(svc, GUIService)
        self.assertEqual((svc.listen, svc.managerURL), ("tcp:0", "http://m:1/"))
        self.assertFalse(os.path.exists(options["state-dir"]))  # nothing done before start

    def test_service_start_stop(self) -> None:
        """Starting makes the state dir and a 0600 secret; stopping closes the port."""
        from twisted.internet.testing import MemoryReactorClock

        reactor = MemoryReactorClock()
        state = os.path.abspath(self.mktemp())
        svc = GUIService(state, "http://m:1/", "tcp:0:interface=127.0.0.1", reactor=reactor)
        svc.startService()
        self.assertEqual(len(reactor.tcpServers), 1)
        # Uploads are spooled to disk, never parsed into memory by Twisted.
        self.assertIs(reactor.tcpServers[0][1]._parsePOSTFormSubmission, False)
        secret = os.path.join(state, "session-secret")
        self.assertEqual(os.stat(secret).st_mode & 0o777, 0o600)
        with open(secret) as f:
            first = f.read()
        self.successResultOf(svc.stopService())
        svc = GUIService(state, "http://m:1/", "tcp:0", reactor=reactor)
        svc.startService()
        with open(secret) as f:
            self.assertEqual(f.read(), first)  # kept across restarts
        self.successResultOf(svc.stopService())


class FakeClient:
    url = "http://m/"

    def __init__(self, nodes: dict[int, Any]) -> None:
        self.nodes = nodes

    async def call(self, method: str, params: Any = None, *, timeout: Any = None) -> Any:
        if method == "list_nodes":
            return {"serviceNode": sorted(self.nodes)}
        node = self.nodes[params["serviceNodeId"]]
        if isinstance(node, Exception):
            raise node
        return {"serviceNode": node}

    async def upload(self, *a: Any, **kw: Any) -> Any:
        raise NotImplementedError


class ModelTests(SynchronousTestCase):
    def test_error_text(self) -> None:
        self.assertEqual(model.errorText(NotFound("no node 7")), "Not found: no node 7")
        self.assertEqual(model.errorText(fromWire({"code": 1005, "message": "later"})),
                         "Not available in this deployment: later")
        self.assertIn("sign in again", model.errorText(Unauthorized("wrong API token")))
        text = model.errorText(TransportError("list_nodes: refused"), "http://m:1/")
        self.assertTrue(text.startswith("Cannot reach the manager at http://m:1/"))
        self.assertIn("error 4242: odd", model.errorText(fromWire({"code": 4242, "message": "odd"})))

    def test_node_rows(self) -> None:
        client = FakeClient({
            2: {"id": 2, "name": "b", "ip": "10.0.0.2", "state": "RUNNING", "role": "SLAVE",
                "isRunningMySQL": True, "replication": {"Seconds_Behind_Master": "4"}},
            1: {"id": 1, "name": "a", "state": "PENDING", "ip": None},
            3: NotFound("no node 3"),
        })
        rows = self.successResultOf(Deferred.fromCoroutine(model.nodeRows(client)))
        self.assertEqual(rows, [
            {"id": 1, "name": "a", "ip": None, "state": "PENDING", "role": None, "mysql": None,
             "lag": None, "error": None},
            {"id": 2, "name": "b", "ip": "10.0.0.2", "state": "RUNNING", "role": "SLAVE",
             "mysql": True, "lag": 4.0, "error": None},
            {"id": 3, "name": None, "ip": None, "state": None, "role": None, "mysql": None,
             "lag": None, "error": "Not found: no node 3"},
        ])

    def test_performance(self) -> None:
        self.assertEqual(
            model.performanceFigures({"service": {"queries_per_second": 5, "connections": 2,
                                                  "max_replication_lag": 1.5}}),
            {"qps": 5.0, "connections": 2.0, "lag": 1.5},
        )
        self.assertEqual(
            model.performanceFigures({"qps": "7.5", "Threads_connected": 3,
                                      "nodes": {"1": {"lag": 2}, "2": {"replication": {
                                          "seconds_behind_master": 9}}, "3": {}}}),
            {"qps": 7.5, "connections": 3.0, "lag": 9.0},
        )
        self.assertEqual(
            model.performanceFigures({"request_rate": 1, "nodes": [{"lag": None}]}),
            {"qps": 1.0, "connections": None, "lag": None},
        )
        self.assertEqual(model.performanceFigures(None),
                         {"qps": None, "connections": None, "lag": None})

    def test_users(self) -> None:
        users = [{"username": "a", "location": "%", "managed": False}]
        self.assertEqual(model.usersOfNode({"1": users, "2": []}, 1), users)
        self.assertEqual(model.usersOfNode({"users": users}, 1), users)
        self.assertEqual(model.usersOfNode(users, 1), users)
        self.assertEqual(model.usersOfNode({"5": users}, 1), users)
        self.assertEqual(model.usersOfNode({"2": users, "3": users}, 1), [])
        self.assertEqual(model.usersOfNode(["x"], 1),
                         [{"username": "x", "location": "%", "managed": False}])
        self.assertEqual(model.usersOfNode([{"user": "u", "host": "h", "managed": True}], 1),
                         [{"username": "u", "location": "h", "managed": True}])
        self.assertEqual(model.usersOfNode(None, 1), [])

    def test_not_available_is_an_rpc_error(self) -> None:
        self.assertIn("Not available", model.errorText(NotAvailable("x")))


class ReplicationFactsTests(SynchronousTestCase):
    def test_nested_setup_flattened(self) -> None:
        """The manager's nested C{setup} object is shown as facts of its own."""
        from conpaassql.gui.pages import replicationFacts

        facts = replicationFacts({"replication": {
            "io_running": True, "seconds_behind": 0,
            "setup": {"kind": "seed", "bytes": 201400, "phase_seconds": {"copying": 0.2}}}})
        self.assertEqual(facts, [
            ("io_running", "yes"), ("seconds_behind", "0"), ("setup bytes", "201400"),
            ("setup kind", "seed"), ("setup phase_seconds", "{'copying': 0.2}"),
        ])
