"""
Tests of C{conpaassql-client}: the command table as pure functions, the
command line around it, and the whole client over real HTTP against a small
fake manager served by the project's own JSON-RPC server side.
"""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase, TestCase

from conpaassql.client import cli
from conpaassql.client.cli import (
    COMMANDS_BY_NAME,
    DEFAULT_TOKEN_FILES,
    DEFAULT_WAIT,
    EXIT_ERROR_REPLY,
    EXIT_OK,
    EXIT_TRANSPORT,
    EXIT_USAGE,
    EXIT_WAIT_TIMEOUT,
    Invocation,
    ProgressBar,
    Request,
    UsageError,
    parseCommand,
    prepare,
    render,
    resolveToken,
    run,
    splitTarget,
    waitNodes,
)
from conpaassql.rpc.dispatch import Dispatcher, Introspection
from conpaassql.rpc.errors import NotFound
from conpaassql.rpc.resource import RPCResource, TokenAuth, makeSite
from tests.support.fakemanager import FakeManagerAPI

TOKEN = "test-token-9f8e7d6c5b4a"

# The real reactor, untyped: its interfaces are zope declarations mypy cannot follow.
reactor: Any = _reactor


def listen(dispatcher: Dispatcher, tokens: list[str]) -> Any:
    """Serve C{dispatcher} over HTTP on a free port of 127.0.0.1; return the port."""
    resource: Any = RPCResource(dispatcher, TokenAuth(tokens, hint="in the test"))
    return reactor.listenTCP(0, makeSite(resource), interface="127.0.0.1")


# ---------------------------------------------------------------------------
# (a) argv -> (method, params, upload): every command and alias

MAPPINGS: list[tuple[list[str], Request]] = [
    (["list_nodes"], Request("list_nodes", {})),
    (["get_node_info", "3"], Request("get_node_info", {"serviceNodeId": 3})),
    (["get_service_info"], Request("get_service_info", {})),
    (["add_node", "agent"], Request("add_nodes", {"function": "agent"})),
    (["add_nodes", "agent"], Request("add_nodes", {"function": "agent"})),
    (["add_nodes"], Request("add_nodes", {"function": "agent"})),
    (["add_nodes", "2"], Request("add_nodes", {"function": "agent", "count": 2})),
    (["add_nodes", "agent", "4"], Request("add_nodes", {"function": "agent", "count": 4})),
    (["add_node", "agent", "1"], Request("add_nodes", {"function": "agent", "count": 1})),
    (["remove_nodes", "7"], Request("remove_nodes", {"serviceNodeId": 7})),
    (["delete_nodes", "7"], Request("remove_nodes", {"serviceNodeId": 7})),
    (
        ["configure_user", "3", "app", "pw"],
        Request("configure_user", {"serviceNodeId": 3, "username": "app", "password": "pw"}),
    ),
    (
        ["configure_user", "all", "app", "pw"],
        Request("configure_user", {"serviceNodeId": "all", "username": "app", "password": "pw"}),
    ),
    (
        ["configure_user", "all", "app"],
        Request("configure_user", {"serviceNodeId": "all", "username": "app"}, askPassword=True),
    ),
    (["get_users"], Request("get_users", {"serviceNodeId": "all"})),
    (["get_users", "all"], Request("get_users", {"serviceNodeId": "all"})),
    (["get_users", "5"], Request("get_users", {"serviceNodeId": 5})),
    (["delete_user", "5", "app"], Request("delete_user", {"serviceNodeId": 5, "username": "app"})),
    (
        ["delete_user", "all", "app"],
        Request("delete_user", {"serviceNodeId": "all", "username": "app"}),
    ),
    (
        ["send_mysqldump", "3", "dump.sql"],
        Request("send_mysqldump", {"serviceNodeId": "3"}, upload="dump.sql"),
    ),
    (
        ["send_mysqldump", "all", "/tmp/d.sql"],
        Request("send_mysqldump", {"serviceNodeId": "all"}, upload="/tmp/d.sql"),
    ),
    (["set_up_replica_master", "1"], Request("set_up_replica_master", {"id": 1})),
    (["set_up_replica_slave", "2"], Request("set_up_replica_slave", {"id": 2})),
    (["get_service_performance"], Request("get_service_performance", {})),
    (["shutdown"], Request("shutdown", {})),
    (["wait_nodes"], Request(None, {"timeout": DEFAULT_WAIT})),
    (["wait_nodes", "90"], Request(None, {"timeout": 90.0})),
    (["wait_nodes", "0.5"], Request(None, {"timeout": 0.5})),
    (["list_methods"], Request("list_methods", {})),
    (["call", "get_users"], Request("get_users", {})),
    (
        ["call", "remove_nodes", '{"count": 2}'],
        Request("remove_nodes", {"count": 2}),
    ),
    (["call", "get_node_info", "[3]"], Request("get_node_info", [3])),
]

BAD: list[tuple[list[str], str]] = [
    ([], "no command"),
    (["frobnicate"], "unknown command 'frobnicate'"),
    (["list_nodes", "x"], "unexpected argument 'x'"),
    (["get_node_info"], "missing argument"),
    (["get_node_info", "all"], "a node id is a number"),
    (["get_node_info", "-1"], "a node id is a number"),
    (["get_node_info", "1", "2"], "unexpected argument '2'"),
    (["add_nodes", "0"], "positive number"),
    (["add_nodes", "agent", "x"], "positive number"),
    (["add_nodes", "Agent!"], "node function"),
    (["add_nodes", "agent", "1", "2"], "unexpected argument"),
    (["add_nodes", "2", "3"], "unexpected argument '3'"),
    (["remove_nodes"], "missing argument"),
    (["delete_nodes", "all"], "a node id is a number"),
    (["configure_user", "3"], "missing argument"),
    (["configure_user", "some", "app", "pw"], "a node id or 'all'"),
    (["configure_user", "3", "", "pw"], "user name must not be empty"),
    (["configure_user", "3", "a", "b", "c"], "unexpected argument 'c'"),
    (["get_users", "x"], "a node id or 'all'"),
    (["delete_user", "3"], "missing argument"),
    (["send_mysqldump", "3"], "missing argument"),
    (["send_mysqldump", "x", "f"], "a node id or 'all'"),
    (["set_up_replica_master"], "missing argument"),
    (["set_up_replica_slave", "a"], "a node id is a number"),
    (["shutdown", "now"], "unexpected argument"),
    (["wait_nodes", "soon"], "positive number of seconds"),
    (["wait_nodes", "-3"], "positive number of seconds"),
    (["wait_nodes", "inf"], "positive number of seconds"),
    (["call"], "missing argument"),
    (["call", "no such"], "not a method name"),
    (["call", "m", "{nope"], "not valid JSON"),
    (["call", "m", "3"], "object or array"),
]


class CommandMappingTests(SynchronousTestCase):
    def test_mappings(self) -> None:
        for words, expected in MAPPINGS:
            self.assertEqual(parseCommand(words), expected, words)

    def test_every_command_and_alias_is_covered(self) -> None:
        covered = {words[0] for words, _ in MAPPINGS}
        self.assertEqual(covered, set(COMMANDS_BY_NAME))

    def test_table_names_are_unique(self) -> None:
        names = [n for c in cli.COMMANDS for n in c.names]
        self.assertEqual(len(names), len(set(names)))

    def test_bad(self) -> None:
        for words, message in BAD:
            e = self.assertRaises(UsageError, parseCommand, words)
            self.assertIn(message, str(e), words)

    def test_usage_error_names_the_command_synopsis(self) -> None:
        e = self.assertRaises(UsageError, parseCommand, ["delete_nodes"])
        self.assertIn("usage: conpaassql-client ... remove_nodes|delete_nodes ID", str(e))

    def test_password_stdin(self) -> None:
        request = parseCommand(["configure_user", "1", "app"], passwordStdin=True)
        self.assertTrue(request.askPassword)
        # A password on the command line is not also read from stdin.
        for words in (["configure_user", "1", "app", "pw"], ["list_nodes"]):
            e = self.assertRaises(UsageError, parseCommand, words, passwordStdin=True)
            self.assertIn("--password-stdin", str(e))


class TargetTests(SynchronousTestCase):
    def test_host_port(self) -> None:
        self.assertEqual(
            splitTarget(["10.30.1.1", "50000", "list_nodes"], None, {}),
            ("http://10.30.1.1:50000/", ["list_nodes"]),
        )
        self.assertEqual(
            splitTarget(["::1", "50000", "get_node_info", "3"], None, {}),
            ("http://[::1]:50000/", ["get_node_info", "3"]),
        )

    def test_url(self) -> None:
        self.assertEqual(
            splitTarget(["list_nodes"], "https://m.example:8443/", {}),
            ("https://m.example:8443/", ["list_nodes"]),
        )

    def test_default_url(self) -> None:
        self.assertEqual(splitTarget(["shutdown"], None, {}), (cli.DEFAULT_URL, ["shutdown"]))
        self.assertEqual(
            splitTarget(["shutdown"], None, {"CONPAASSQL_URL": "http://h:1/"}),
            ("http://h:1/", ["shutdown"]),
        )

    def test_bad(self) -> None:
        for words, url, message in [
            (["h", "50000"], None, "HOST PORT COMMAND"),
            (["h", "port", "list_nodes"], None, "PORT must be a port number"),
            (["h", "70000", "list_nodes"], None, "PORT must be a port number"),
            (["u@h", "1", "list_nodes"], None, "HOST must be"),
            (["list_nodes"], "ftp://h/", "--url must be"),
        ]:
            e = self.assertRaises(UsageError, splitTarget, words, url, {})
            self.assertIn(message, str(e))


class TokenTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)

    def tokenFile(self, name: str, text: str) -> str:
        path = os.path.join(self.dir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_precedence(self) -> None:
        option = "from-option"
        env = {"CONPAASSQL_TOKEN": "from-env\n"}
        path = self.tokenFile("given", " from-file \n")
        default = self.tokenFile("default", "from-default")
        self.assertEqual(resolveToken(option, path, env, [default]), ("from-option", "--token"))
        self.assertEqual(
            resolveToken(None, path, env, [default]), ("from-env", "$CONPAASSQL_TOKEN")
        )
        self.assertEqual(resolveToken(None, path, {}, [default]), ("from-file", path))
        self.assertEqual(resolveToken(None, None, {}, [default]), ("from-default", default))
        self.assertEqual(resolveToken(None, None, {}, []), (None, "nowhere"))

    def test_default_files_in_order_skipping_unreadable(self) -> None:
        home = os.path.join(self.dir, "home")
        homeFile = self.tokenFile("home/.local/state/conpaassql/manager/api-token", "tok-home")
        missing = os.path.join(self.dir, "missing")
        empty = self.tokenFile("empty", "  \n")
        self.assertEqual(
            resolveToken(None, None, {"HOME": home}, [missing, empty, DEFAULT_TOKEN_FILES[1]]),
            ("tok-home", homeFile),
        )

    def test_given_file_must_be_readable(self) -> None:
        missing = os.path.join(self.dir, "missing")
        e = self.assertRaises(UsageError, resolveToken, None, missing, {}, [])
        self.assertIn("cannot read the token file", str(e))
        empty = self.tokenFile("empty", "\n")
        e = self.assertRaises(UsageError, resolveToken, None, empty, {}, [])
        self.assertIn("is empty", str(e))


class PrepareTests(SynchronousTestCase):
    """The synchronous half: options, password prompting, help."""

    def prepare(
        self, *argv: str, stdin: str = "", answers: list[str] | None = None
    ) -> tuple[Invocation | int, str, str, list[str]]:
        out, err = io.StringIO(), io.StringIO()
        prompts: list[str] = []
        replies = iter(answers or [])

        def getpass(prompt: str) -> str:
            prompts.append(prompt)
            return next(replies)

        result = prepare(
            list(argv), out, err, stdin=io.StringIO(stdin), environ={}, getpass=getpass
        )
        return result, out.getvalue(), err.getvalue(), prompts

    def test_help(self) -> None:
        result, out, err, _ = self.prepare("--help")
        self.assertEqual(result, 0)
        self.assertIn("conpaassql-client [OPTIONS] HOST PORT COMMAND [ARGS...]", out)
        for command in cli.COMMANDS:
            self.assertIn(cli._synopsis(command), out)
        self.assertEqual(err, "")

    def test_options_anywhere(self) -> None:
        result, _, _, _ = self.prepare(
            "h", "1", "get_node_info", "--json", "3", "--timeout", "5", "--token", "t"
        )
        assert isinstance(result, Invocation)
        self.assertEqual(
            (result.url, result.token, result.json, result.timeout, result.request),
            ("http://h:1/", "t", True, 5.0, Request("get_node_info", {"serviceNodeId": 3})),
        )

    def test_usage_errors(self) -> None:
        for argv, message in [
            (["h", "1"], "HOST PORT COMMAND"),
            (["h", "1", "nope"], "unknown command 'nope'"),
            (["--timeout", "0", "list_nodes"], "--timeout"),
            (["--bogus", "list_nodes"], "unrecognized arguments: --bogus"),
            (["--token-file", "/nonexistent/t", "list_nodes"], "cannot read the token file"),
        ]:
            result, out, err, _ = self.prepare(*argv)
            self.assertEqual(result, EXIT_USAGE, argv)
            self.assertIn(message, err)
            self.assertEqual(out, "")

    def test_password_prompted_twice(self) -> None:
        result, _, _, prompts = self.prepare(
            "--token", "t", "configure_user", "all", "app", answers=["s3cret", "s3cret"]
        )
        assert isinstance(result, Invocation)
        self.assertEqual(
            result.request.params, {"serviceNodeId": "all", "username": "app", "password": "s3cret"}
        )
        self.assertEqual(prompts, ["Password for app: ", "Repeat the password: "])

    def test_password_mismatch(self) -> None:
        result, out, err, _ = self.prepare(
            "configure_user", "1", "app", answers=["pw-one", "pw-two"]
        )
        self.assertEqual(result, EXIT_USAGE)
        self.assertIn("do not match", err)
        self.assertNotIn("pw-", out + err)

    def test_password_end_of_input(self) -> None:
        out, err = io.StringIO(), io.StringIO()

        def getpass(prompt: str) -> str:
            raise EOFError()

        result = prepare(["configure_user", "1", "app"], out, err, environ={}, getpass=getpass)
        self.assertEqual(result, EXIT_USAGE)
        self.assertIn("no password given", err.getvalue())

    def test_empty_password(self) -> None:
        result, _, err, _ = self.prepare("configure_user", "1", "app", answers=["", ""])
        self.assertEqual(result, EXIT_USAGE)
        self.assertIn("must not be empty", err)

    def test_password_stdin(self) -> None:
        result, _, _, prompts = self.prepare(
            "--password-stdin", "configure_user", "1", "app", stdin="from stdin\nmore\n"
        )
        assert isinstance(result, Invocation)
        self.assertEqual(
            result.request.params,
            {"serviceNodeId": 1, "username": "app", "password": "from stdin"},
        )
        self.assertEqual(prompts, [])

    def test_password_stdin_with_password_argument(self) -> None:
        result, _, err, _ = self.prepare(
            "--password-stdin", "configure_user", "1", "app", "--", "-pw"
        )
        self.assertEqual(result, EXIT_USAGE)
        self.assertIn("--password-stdin", err)


class RenderTests(SynchronousTestCase):
    def show(self, words: list[str], result: Any) -> str:
        out = io.StringIO()
        COMMANDS_BY_NAME[words[0]].show(result, parseCommand(words), out)
        return out.getvalue()

    def test_list_nodes(self) -> None:
        self.assertEqual(self.show(["list_nodes"], {"serviceNode": [1, 12]}), "1\n12\n")
        self.assertEqual(self.show(["list_nodes"], {"serviceNode": []}), "(no nodes)\n")

    def test_node_info_table(self) -> None:
        info = {"serviceNode": {"id": 3, "ip": "10.0.0.3", "isRunningMySQL": True,
                                "state": "RUNNING", "extra": None}}
        self.assertEqual(
            self.show(["get_node_info", "3"], info),
            "id:             3\n"
            "ip:             10.0.0.3\n"
            "isRunningMySQL: true\n"
            "state:          RUNNING\n"
            "extra:          -\n",
        )

    def test_added(self) -> None:
        node = {"id": 3, "name": "conpaassql-agent-3", "state": "PENDING", "ip": None}
        self.assertEqual(
            self.show(["add_nodes"], {"serviceNode": node}),
            "added node 3 (conpaassql-agent-3), state PENDING\n",
        )
        self.assertEqual(
            self.show(["add_nodes", "2"], {"serviceNode": [node, {**node, "id": 4}]}),
            "added node 3 (conpaassql-agent-3), state PENDING\n"
            "added node 4 (conpaassql-agent-3), state PENDING\n",
        )

    def test_done_messages(self) -> None:
        self.assertEqual(self.show(["remove_nodes", "3"], {"result": "OK"}), "removed node 3\n")
        self.assertEqual(
            self.show(["configure_user", "all", "app", "x"], None),
            "configured user 'app' on every node\n",
        )
        self.assertEqual(
            self.show(["delete_user", "2", "app"], {"2": "OK", "3": "not there"}),
            "deleted user 'app' on node 2\n  2: OK\n  3: not there\n",
        )

    def test_generic(self) -> None:
        self.assertEqual(
            render({"a": 1, "bb": [1, 2], "c": {"d": "e"}, "f": []}),
            ["a:  1", "bb: 1, 2", "c:", "  d: e", "f:  (none)"],
        )
        self.assertEqual(
            render([{"username": "app", "location": "%"}, {"username": "root", "location": "x"}]),
            ["username  location", "app       %", "root      x"],
        )
        self.assertEqual(render([]), ["(none)"])
        self.assertEqual(self.show(["shutdown"], {"state": "EPILOGUE"}), "state: EPILOGUE\n")
        self.assertEqual(self.show(["call", "x"], "OK"), "OK\n")

    def test_methods(self) -> None:
        methods = [
            {"name": "list_nodes", "params": [], "aliases": [], "upload": False,
             "doc": "The nodes."},
            {"name": "send_mysqldump", "params": ["serviceNodeId"], "aliases": ["load"],
             "upload": True, "doc": "Load a dump."},
        ]
        self.assertEqual(
            self.show(["list_methods"], methods),
            "list_nodes()                            The nodes.\n"
            "send_mysqldump(serviceNodeId) [upload]  Load a dump. (also: load)\n",
        )

    def test_progress_line(self) -> None:
        self.assertEqual(
            ProgressBar.line(104_000_000, 200_000_000),
            "[##########..........]  52% 104.0/200.0 MB",
        )
        self.assertEqual(ProgressBar.line(0, 0), "[####################] 100% 0/0 B")
        self.assertEqual(ProgressBar.line(1500, 3000), "[##########..........]  50% 1.5/3.0 kB")


class _TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


class ProgressBarTests(SynchronousTestCase):
    def test_tty_redraws_in_place(self) -> None:
        stream = _TTY()
        bar = ProgressBar(stream, "d.sql")
        for sent in (0, 400, 400, 800):
            bar.update(sent, 800)
        bar.finish()
        self.assertEqual(
            stream.getvalue(),
            "\rd.sql [....................]   0% 0/800 B"
            "\rd.sql [##########..........]  50% 400/800 B"
            "\rd.sql [####################] 100% 800/800 B\n",
        )

    def test_not_a_tty_one_final_line(self) -> None:
        stream = io.StringIO()
        bar = ProgressBar(stream, "d.sql")
        for sent in (0, 500, 1000):
            bar.update(sent, 1000)
        bar.finish()
        self.assertEqual(stream.getvalue(), "d.sql [####################] 100% 1.0/1.0 kB\n")

    def test_nothing_sent_nothing_shown(self) -> None:
        stream = io.StringIO()
        ProgressBar(stream, "d.sql").finish()
        self.assertEqual(stream.getvalue(), "")


class FakeCaller:
    """A manager whose nodes walk through given state sequences, one step per poll."""

    def __init__(self, states: dict[int, list[str]]) -> None:
        self.states = states
        self.calls: list[tuple[str, Any]] = []

    async def call(self, method: str, params: Any = None, *, timeout: float | None = None) -> Any:
        self.calls.append((method, params))
        if method == "list_nodes":
            return {"serviceNode": sorted(self.states)}
        nodeId = params["serviceNodeId"]
        if nodeId not in self.states:
            raise NotFound(f"no node {nodeId}")
        sequence = self.states[nodeId]
        state = sequence.pop(0) if len(sequence) > 1 else sequence[0]
        return {"serviceNode": {"id": nodeId, "state": state}}


class WaitNodesTests(SynchronousTestCase):
    """C{wait_nodes} on a fake clock: no wall-clock time."""

    def wait(
        self, caller: FakeCaller, timeout: float, steps: int
    ) -> tuple[int, str, dict[str, str], Clock]:
        clock = Clock()
        out = io.StringIO()
        states: dict[str, str] = {}
        d = Deferred.fromCoroutine(waitNodes(caller, clock, timeout, out, result=states))
        for _ in range(steps):
            clock.advance(1)
        return self.successResultOf(d), out.getvalue(), states, clock

    def test_until_running(self) -> None:
        caller = FakeCaller({1: ["PENDING", "PROLOGUE", "RUNNING"], 2: ["RUNNING"]})
        code, out, states, clock = self.wait(caller, 60, 2)
        self.assertEqual(code, EXIT_OK)
        self.assertEqual(
            out,
            "node 1: PENDING\nnode 2: RUNNING\nnode 1: PENDING -> PROLOGUE\n"
            "node 1: PROLOGUE -> RUNNING\nall 2 nodes RUNNING\n",
        )
        self.assertEqual(states, {"1": "RUNNING", "2": "RUNNING"})
        self.assertEqual(clock.seconds(), 2)
        self.assertEqual(len([c for c in caller.calls if c[0] == "list_nodes"]), 3)

    def test_error_node(self) -> None:
        code, out, _, _ = self.wait(FakeCaller({1: ["PENDING", "ERROR"], 2: ["RUNNING"]}), 60, 1)
        self.assertEqual(code, EXIT_ERROR_REPLY)
        self.assertTrue(out.endswith("in ERROR: node 1\n"), out)

    def test_timeout(self) -> None:
        clock = Clock()
        out = io.StringIO()
        d = Deferred.fromCoroutine(
            waitNodes(FakeCaller({4: ["PENDING"]}), clock, 2.5, out, interval=1.0)
        )
        clock.advance(1)
        clock.advance(1)
        self.assertNoResult(d)
        clock.advance(0.5)
        self.assertEqual(self.successResultOf(d), EXIT_WAIT_TIMEOUT)
        self.assertIn("timed out after 2.5 s; still waiting for node 4 (PENDING)", out.getvalue())

    def test_no_nodes(self) -> None:
        code, out, _, _ = self.wait(FakeCaller({}), 60, 0)
        self.assertEqual((code, out), (EXIT_OK, "no nodes\n"))

    def test_removed_node(self) -> None:
        caller = FakeCaller({1: ["PENDING", "PENDING", "RUNNING"], 2: ["PENDING"]})
        clock = Clock()
        out = io.StringIO()
        d = Deferred.fromCoroutine(waitNodes(caller, clock, 60, out))
        del caller.states[2]
        clock.advance(1)
        clock.advance(1)
        self.assertEqual(self.successResultOf(d), EXIT_OK)
        self.assertIn("node 2: removed\n", out.getvalue())


# ---------------------------------------------------------------------------
# (b) end to end over real HTTP


def fakeManager() -> FakeManagerAPI:
    """The shared fake manager (tests.support.fakemanager), two nodes RUNNING."""
    api = FakeManagerAPI(replication=True)
    api.addNode(state="RUNNING")
    api.addNode(state="RUNNING")
    return api


class EndToEndTests(TestCase):
    """The client's C{run} against a real HTTP JSON-RPC server on 127.0.0.1."""

    def setUp(self) -> None:
        self.api = fakeManager()
        dispatcher = Dispatcher(self.api)
        dispatcher.collect(Introspection(dispatcher))
        self.port = listen(dispatcher, [TOKEN])
        self.addCleanup(self.port.stopListening)
        self.hostPort = ["127.0.0.1", str(self.port.getHost().port)]
        self.home = os.path.abspath(self.mktemp())
        os.makedirs(self.home)

    async def cli(
        self, *argv: str, token: str | None = TOKEN, **kwargs: Any
    ) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        environ = {"HOME": self.home}
        if token is not None:
            environ["CONPAASSQL_TOKEN"] = token
        kwargs.setdefault("pollInterval", 0.01)
        code = await run(list(argv), out, err, environ=environ, **kwargs)
        # Nothing the client printed may hold the token.
        self.assertNotIn(TOKEN, out.getvalue() + err.getvalue())
        return code, out.getvalue(), err.getvalue()

    async def test_list_nodes(self) -> None:
        self.assertEqual(await self.cli(*self.hostPort, "list_nodes"), (0, "1\n2\n", ""))

    async def test_json(self) -> None:
        code, out, err = await self.cli(*self.hostPort, "--json", "get_node_info", "2")
        self.assertEqual((code, err), (EXIT_OK, ""))
        self.assertEqual(json.loads(out), {"serviceNode": self.api.nodes[2]})

    async def test_url_form(self) -> None:
        url = f"http://127.0.0.1:{self.hostPort[1]}/"
        code, out, _ = await self.cli("--url", url, "get_service_info")
        self.assertEqual((code, out), (EXIT_OK, "state:  RUNNING\ntype:   conpaassql\nnodes:\n"
                                               "  RUNNING: 2\nmaster: -\n"))

    async def test_node_info(self) -> None:
        code, out, _ = await self.cli(*self.hostPort, "get_node_info", "1")
        self.assertEqual(code, EXIT_OK)
        self.assertEqual(
            out,
            "id:             1\nip:             127.0.0.2\nstate:          RUNNING\n"
            "role:           -\nname:           conpaassql-agent-1\nisRunningMySQL: true\n"
            "port:           -\nmysqld_port:    -\n",
        )

    async def test_add_and_remove(self) -> None:
        code, out, _ = await self.cli(*self.hostPort, "add_node", "agent")
        self.assertEqual((code, out), (0, "added node 3 (conpaassql-agent-3), state PENDING\n"))
        code, out, _ = await self.cli(*self.hostPort, "add_nodes", "2")
        self.assertEqual(code, 0)
        self.assertEqual(
            out,
            "added node 4 (conpaassql-agent-4), state PENDING\n"
            "added node 5 (conpaassql-agent-5), state PENDING\n",
        )
        self.assertEqual(
            [c for c in self.api.calls if c[0] == "add_nodes"],
            [("add_nodes", {"function": "agent"}), ("add_nodes", {"function": "agent", "count": 2})],
        )
        self.assertEqual(await self.cli(*self.hostPort, "delete_nodes", "4"),
                         (0, "removed node 4\n", ""))
        self.assertEqual(sorted(self.api.nodes), [1, 2, 3, 5])

    async def test_error_reply(self) -> None:
        code, out, err = await self.cli(*self.hostPort, "get_node_info", "99")
        self.assertEqual((code, out, err),
                         (EXIT_ERROR_REPLY, "", "error 1002: no node 99 in this service\n"))
        code, _, err = await self.cli(*self.hostPort, "--json", "set_up_replica_slave", "1")
        self.assertEqual((code, err), (EXIT_ERROR_REPLY, "error 1001: there is no master yet: "
                                                         "make a node the master first\n"))
        self.assertEqual(self.api.calls[-1], ("set_up_replica_slave", {"id": 1}))

    async def test_unknown_method(self) -> None:
        code, _, err = await self.cli(*self.hostPort, "call", "getLog")
        self.assertEqual(code, EXIT_ERROR_REPLY)
        self.assertIn("error -32601: no method named 'getLog'", err)

    async def test_wrong_token(self) -> None:
        code, out, err = await self.cli(*self.hostPort, "list_nodes", token="wrong")
        self.assertEqual((code, out), (EXIT_ERROR_REPLY, ""))
        self.assertIn("error -32001: wrong API token", err)
        self.assertIn("(the token used came from $CONPAASSQL_TOKEN)", err)

    async def test_no_token(self) -> None:
        code, _, err = await self.cli(*self.hostPort, "list_nodes", token=None)
        self.assertEqual(code, EXIT_ERROR_REPLY)
        self.assertIn("error -32001: authentication required", err)
        self.assertIn("no API token found", err)

    async def test_default_token_file(self) -> None:
        directory = os.path.join(self.home, ".local", "state", "conpaassql", "manager")
        os.makedirs(directory)
        FilePath(directory).child("api-token").setContent(TOKEN.encode() + b"\n")
        self.assertEqual(await self.cli(*self.hostPort, "list_nodes", token=None),
                         (0, "1\n2\n", ""))

    async def test_connection_refused(self) -> None:
        port = listen(Dispatcher(), ["x"])
        number = port.getHost().port
        await port.stopListening()
        code, out, err = await self.cli("127.0.0.1", str(number), "list_nodes")
        self.assertEqual((code, out), (EXIT_TRANSPORT, ""))
        self.assertIn(f"list_nodes: cannot connect to http://127.0.0.1:{number}/", err)

    async def test_users(self) -> None:
        code, out, _ = await self.cli(
            *self.hostPort, "configure_user", "all", "app", getpass=lambda prompt: "pa ss"
        )
        self.assertEqual((code, out), (0, "configured user 'app' on every node\n"))
        code, out, _ = await self.cli(
            *self.hostPort, "--password-stdin", "configure_user", "2", "bob",
            stdin=io.StringIO("from-stdin\n"),
        )
        self.assertEqual((code, out), (0, "configured user 'bob' on node 2\n"))
        self.assertEqual(
            [c[1] for c in self.api.calls if c[0] == "configure_user"],
            [{"serviceNodeId": "all", "username": "app", "password": "pa ss"},
             {"serviceNodeId": 2, "username": "bob", "password": "from-stdin"}],
        )
        code, out, _ = await self.cli(*self.hostPort, "get_users")
        self.assertEqual(code, 0)
        self.assertEqual(out, "1:\n  username  location   managed\n  root      localhost  true\n"
                              "  app       %          false\n2:\n  username  location   managed\n"
                              "  root      localhost  true\n  app       %          false\n"
                              "  bob       %          false\n")
        self.assertEqual(self.api.calls[-1], ("get_users", {"serviceNodeId": "all"}))
        code, _, err = await self.cli(*self.hostPort, "delete_user", "1", "ghost")
        self.assertEqual((code, err), (EXIT_ERROR_REPLY, "error 1002: no user 'ghost' on node 1\n"))
        self.assertEqual(await self.cli(*self.hostPort, "delete_user", "1", "app"),
                         (0, "deleted user 'app' on node 1\n", ""))

    async def test_upload_sends_exact_bytes(self) -> None:
        path = os.path.join(self.home, "dump.sql")
        data = os.urandom(3_000_000) + b"\r\n--boundary--\r\n\x00" + b"INSERT 1;\n" * 1000
        FilePath(path).setContent(data)
        code, out, err = await self.cli(*self.hostPort, "send_mysqldump", "2", path)
        self.assertEqual(code, EXIT_OK, err)
        self.assertEqual(out, "loaded dump.sql on node 2\n  return: OK\n  nodes:  2\n"
                              f"  bytes:  {len(data)}\n")
        self.assertEqual(err, "dump.sql [####################] 100% 3.0/3.0 MB\n")
        self.assertEqual(len(self.api.uploads), 1)
        params, filename, received = self.api.uploads[0]
        self.assertEqual((params, filename), ("2", "dump.sql"))
        self.assertEqual(received, data)

    async def test_upload_progress_on_tty(self) -> None:
        path = os.path.join(self.home, "small.sql")
        FilePath(path).setContent(b"SELECT 1;\n")
        out, err = io.StringIO(), _TTY()
        code = await run([*self.hostPort, "--json", "send_mysqldump", "all", path], out, err,
                         environ={"CONPAASSQL_TOKEN": TOKEN})
        self.assertEqual(code, EXIT_OK)
        self.assertEqual(json.loads(out.getvalue()), {"return": "OK", "nodes": [1, 2],
                                                      "bytes": 10})
        self.assertTrue(err.getvalue().startswith("\rsmall.sql ["), err.getvalue())
        self.assertTrue(err.getvalue().endswith("100% 10/10 B\n"), err.getvalue())
        self.assertEqual(self.api.uploads[0][0], "all")

    async def test_upload_missing_file(self) -> None:
        code, out, err = await self.cli(*self.hostPort, "send_mysqldump", "1", "/nonexistent.sql")
        self.assertEqual((code, out), (EXIT_USAGE, ""))
        self.assertIn("No such file or directory", err)
        self.assertEqual(self.api.uploads, [])

    async def test_wait_nodes(self) -> None:
        self.api.script = {1: ["PENDING", "PROLOGUE", "RUNNING"], 2: ["PENDING", "RUNNING"]}
        code, out, err = await self.cli(*self.hostPort, "wait_nodes", "30")
        self.assertEqual((code, err), (EXIT_OK, ""))
        self.assertEqual(
            out,
            "node 1: PENDING\nnode 2: PENDING\nnode 1: PENDING -> PROLOGUE\n"
            "node 2: PENDING -> RUNNING\nnode 1: PROLOGUE -> RUNNING\nall 2 nodes RUNNING\n",
        )

    async def test_wait_nodes_json_and_error(self) -> None:
        self.api.script = {2: ["PENDING", "ERROR"]}
        code, out, err = await self.cli(*self.hostPort, "--json", "wait_nodes")
        self.assertEqual(code, EXIT_ERROR_REPLY)
        self.assertEqual(json.loads(out), {"1": "RUNNING", "2": "ERROR"})
        self.assertIn("node 2: PENDING -> ERROR\nin ERROR: node 2\n", err)

    async def test_wait_nodes_timeout(self) -> None:
        self.api.script = {1: ["PENDING"] * 1000}
        code, _, _ = await self.cli(*self.hostPort, "wait_nodes", "0.05")
        self.assertEqual(code, EXIT_WAIT_TIMEOUT)

    async def test_list_methods_and_call(self) -> None:
        code, out, _ = await self.cli(*self.hostPort, "list_methods")
        self.assertEqual(code, 0)
        self.assertIn("send_mysqldump(serviceNodeId) [upload]", out)
        self.assertIn("list_methods()", out)
        code, out, _ = await self.cli(*self.hostPort, "--json", "call", "get_node_info", "[1]")
        self.assertEqual((code, json.loads(out)), (0, {"serviceNode": self.api.nodes[1]}))

    async def test_other_commands(self) -> None:
        code, out, _ = await self.cli(*self.hostPort, "set_up_replica_master", "1")
        self.assertEqual((code, out), (0, "OK\n"))
        code, out, _ = await self.cli(*self.hostPort, "set_up_replica_slave", "2")
        self.assertEqual((code, out), (0, "OK\n"))
        self.assertEqual(self.api.calls[-1], ("set_up_replica_slave", {"id": 2}))
        code, out, _ = await self.cli(*self.hostPort, "get_service_performance")
        self.assertEqual(
            (code, out),
            (0, "service:\n  queries_per_second:  11.0\n  connections:         3\n"
                "  max_replication_lag: 1.0\nnodes:\n  (none)\n"),
        )
        self.assertEqual(await self.cli(*self.hostPort, "shutdown"), (0, "state: EPILOGUE\n", ""))

    async def test_usage_error_makes_no_call(self) -> None:
        code, out, err = await self.cli(*self.hostPort, "get_node_info")
        self.assertEqual((code, out), (EXIT_USAGE, ""))
        self.assertIn("get_node_info: missing argument", err)
        self.assertEqual(self.api.calls, [])


class ConsoleScriptTests(TestCase):
    """The installed C{conpaassql-client} script, as a real child process."""

    async def test_script(self) -> None:
        script = os.path.join(os.path.dirname(sys.executable), "conpaassql-client")
        if not os.path.exists(script):
            self.fail(f"{script} is missing: run `pip install -e .` (tools/setup does)")
        api = fakeManager()
        port = listen(Dispatcher(api), [TOKEN])
        self.addCleanup(port.stopListening)
        tokenFile = os.path.abspath(self.mktemp())
        FilePath(tokenFile).setContent(TOKEN.encode())
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.path.dirname(tokenFile)}
        host = ["127.0.0.1", str(port.getHost().port)]
        run: Callable[..., Deferred[tuple[bytes, bytes, int]]] = getProcessOutputAndValue
        out, err, code = await run(
            script, [*host, "--token-file", tokenFile, "add_nodes", "agent"], env=env
        )
        self.assertEqual((code, err), (0, b""))
        self.assertEqual(out, b"added node 3 (conpaassql-agent-3), state PENDING\n")
        out, err, code = await run(script, [*host, "get_node_info", "1"], env=env)
        self.assertEqual(code, EXIT_ERROR_REPLY)
        self.assertIn(b"error -32001: authentication required", err)
        self.assertNotIn(TOKEN.encode(), out + err)
