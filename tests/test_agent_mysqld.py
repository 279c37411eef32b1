"""
Tests for the database server control: a real private MariaDB for the
managed mode, small fake service scripts for the script mode.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pymysql
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase

from conpaassql.agent import mycnf
from conpaassql.agent.config import (
    AgentConfig,
    MySQLConfiguration,
    RootConnection,
    ServerSettings,
    find_binary,
)
from conpaassql.agent.mysqld import (
    _TRANSITIONS,
    INIT,
    RUNNING,
    STARTING,
    STATES,
    STOPPED,
    ManagedServer,
    ScriptError,
    ScriptServer,
    ServerControl,
    ServerError,
    ServerStartError,
    make_server,
    parse_version,
)
from tests.support.mariadb import (
    make_managed_server,
    managed_server,
    pid_alive,
    root_password,
    skip_unless_mariadb,
    stop_and_check,
)


def _query(
    connect_args: dict[str, Any], sql: str, args: Any = None
) -> Deferred[list[tuple[Any, ...]]]:
    """
    Run one statement in a thread; fire with all rows.
    """

    def run() -> list[tuple[Any, ...]]:
        conn = pymysql.connect(**connect_args)
        try:
            with conn.cursor() as cursor:
                cursor.execute(sql, args)
                rows = list(cursor.fetchall())
            conn.commit()
            return rows
        finally:
            conn.close()

    return deferToThread(run)


async def _wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await deferLater(reactor, 0.02, lambda: None)  # type: ignore[arg-type]


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


_E = TypeVar("_E", bound=BaseException)


async def _raises(exc_type: type[_E], awaitable: Awaitable[object]) -> _E:
    """
    Await and return the exception of type C{exc_type} it raises.
    """
    try:
        await awaitable
    except exc_type as e:
        return e
    raise AssertionError(f"{exc_type.__name__} not raised")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class UnitTests(SynchronousTestCase):
    def test_parse_version(self) -> None:
        self.assertEqual(
            parse_version(
                "mariadbd  Ver 10.11.19-MariaDB-0+deb12u1 for debian-linux-gnu on x86_64"
            ),
            ("mariadb", "10.11.19-MariaDB-0+deb12u1"),
        )
        self.assertEqual(
            parse_version(
                "/usr/sbin/mysqld  Ver 8.0.36 for Linux on x86_64 (MySQL Community Server)"
            ),
            ("mysql", "8.0.36"),
        )
        self.assertEqual(parse_version("10.11.6-MariaDB-log"), ("mariadb", "10.11.6-MariaDB-log"))
        self.assertEqual(parse_version("8.0.36"), ("mysql", "8.0.36"))

    def test_transitions_cover_states(self) -> None:
        self.assertEqual(set(_TRANSITIONS), set(STATES))
        for targets in _TRANSITIONS.values():
            self.assertTrue(targets <= set(STATES))
        self.assertEqual(STATES, ("INIT", "STARTING", "RUNNING", "STOPPING", "STOPPED"))

    def test_make_server(self) -> None:
        state_dir = self.mktemp()
        managed = make_server(state_dir, AgentConfig(), reactor)
        self.assertIsInstance(managed, ManagedServer)
        self.assertIsInstance(managed, ServerControl)
        self.assertEqual(managed.state, INIT)
        self.assertIsNone(managed.pid)
        # Binaries a config built in code leaves unset are looked up.
        self.assertEqual(managed.client_binary, find_binary(["mariadb", "mysql"]))
        self.assertEqual(managed._settings.mysqld, find_binary(["mariadbd", "mysqld"]))
        config = AgentConfig(
            mysql=MySQLConfiguration(path_mysql_ssr="/bin/true"),
            server=ServerSettings(mode="script"),
        )
        script = make_server(state_dir, config, reactor)
        self.assertIsInstance(script, ScriptServer)
        self.assertIsInstance(script, ServerControl)
        self.assertEqual(script.port, 3306)
        self.assertFalse(os.path.exists(state_dir), "constructors must not touch the disk")

    def test_restart_backoff(self) -> None:
        """
        Automatic restarts are delayed 0.5 s, doubling up to 60 s.
        """
        clock = Clock()
        server = ManagedServer(self.mktemp(), AgentConfig(), clock)
        server._want_running = True
        delays = []
        for _ in range(10):
            server._schedule_restart()
            (call,) = clock.getDelayedCalls()
            when: float = call.getTime()  # type: ignore[misc]
            delays.append(when - clock.seconds())
            server._cancel_scheduled_restart()
        self.assertEqual(delays, [0.5, 1, 2, 4, 8, 16, 32, 60, 60, 60])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_connect_args_before_start(self) -> None:
        server = make_server(self.mktemp(), AgentConfig(), reactor)
        self.assertRaises(ServerError, server.connect_args)


class ManagedServerTests(TestCase):
    skip = skip_unless_mariadb()

    async def test_start_and_query(self) -> None:
        """
        A started server answers on connect_args; its attributes are filled.
        """
        server = await managed_server(self)
        self.assertEqual(server.state, RUNNING)
        self.assertEqual(server.flavor, "mariadb")
        assert server.pid is not None
        self.assertTrue(pid_alive(server.pid))
        self.assertGreater(server.port, 0)
        self.assertNotEqual(server.port, 3306)
        self.assertIsNotNone(server.started_at)
        self.assertIsNone(server.last_error)
        self.assertEqual(server.restarts, 0)
        args = server.connect_args()
        self.assertEqual(args["charset"], "utf8mb4")
        rows = await _query(args, "SELECT VERSION(), @@port, @@datadir, @@bind_address")
        version, port, datadir, bind = rows[0]
        self.assertEqual(version, server.version)
        self.assertEqual(port, server.port)
        self.assertEqual(os.path.realpath(datadir), os.path.realpath(server.datadir))
        self.assertTrue(server.datadir.startswith(server.base_dir))
        self.assertEqual(bind, "127.0.0.1")

    async def test_private_tmpdir(self) -> None:
        """
        The server's tmpdir is its own (0700): a starting mariadbd deletes
        every #sql* file in its tmpdir, other instances' temporary tables too.
        """
        server = await managed_server(self)
        [(tmpdir,)] = await _query(server.connect_args(), "SELECT @@tmpdir")
        self.assertEqual(os.path.realpath(tmpdir), os.path.realpath(server.tmp_dir))
        self.assertEqual(stat.S_IMODE(os.stat(server.tmp_dir).st_mode), 0o700)

    async def test_root_secured(self) -> None:
        """
        The root password is in a 0600 file; root without password is
        refused over TCP, with it accepted; no anonymous or root@hostname
        accounts remain.
        """
        server = await managed_server(self)
        for path in (server.root_cnf_path, server.client_defaults_file, server.mycnf_path):
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600, path)
        password = root_password(server)
        self.assertGreaterEqual(len(password), 24)
        self.assertNotIn(password, _read(server.mycnf_path))
        self.assertNotIn(password, _read(server.error_log_path))

        tcp = {"host": "127.0.0.1", "port": server.port, "user": "root", "connect_timeout": 5}
        error = await _raises(
            pymysql.err.OperationalError, _query({**tcp, "password": ""}, "SELECT 1")
        )
        self.assertEqual(error.args[0], 1045)
        rows = await _query({**tcp, "password": password}, "SELECT CURRENT_USER()")
        self.assertIn(rows[0][0], ("root@127.0.0.1", "root@localhost"))
        rows = await _query(server.connect_args(), "SELECT User, Host FROM mysql.user")
        accounts = {(str(u), str(h)) for u, h in rows}
        self.assertEqual(
            {a for a in accounts if a[0] in ("root", "")},
            {("root", "localhost"), ("root", "127.0.0.1"), ("root", "::1")},
        )

    async def test_client_defaults_file(self) -> None:
        """
        The client program connects with --defaults-extra-file only: no
        password on its command line.
        """
        server = await managed_server(self)
        assert server.client_binary is not None
        out, err, code = await getProcessOutputAndValue(
            server.client_binary,
            [f"--defaults-extra-file={server.client_defaults_file}", "-N", "-e", "SELECT 6*7"],
            env=server.child_environment(),
            reactor=reactor,
        )
        self.assertEqual((code, out.strip()), (0, b"42"), err)

    async def test_restart_keeps_data(self) -> None:
        server = await managed_server(self)
        args = server.connect_args()
        await _query(args, "CREATE DATABASE keep")
        await _query(args, "CREATE TABLE keep.t (x INT) ENGINE=InnoDB")
        await _query(args, "INSERT INTO keep.t VALUES (%s)", (17,))
        old_pid = server.pid
        server.max_error_log_bytes = 1
        await server.restart()
        self.assertEqual(server.state, RUNNING)
        self.assertTrue(os.path.exists(server.error_log_path + ".1"))
        self.assertNotEqual(server.pid, old_pid)
        assert old_pid is not None
        self.assertFalse(pid_alive(old_pid))
        rows = await _query(server.connect_args(), "SELECT x FROM keep.t")
        self.assertEqual(rows, [(17,)])

    async def test_crash_is_restarted(self) -> None:
        """
        kill -9 of mariadbd: the state goes to STARTING, then RUNNING with
        a new process; the restart is counted and the crash reported.
        """
        server = await managed_server(self)
        old_pid = server.pid
        assert old_pid is not None
        os.kill(old_pid, signal.SIGKILL)
        await _wait_for(lambda: server.state != RUNNING)
        self.assertEqual(server.state, STARTING)
        await _wait_for(lambda: server.state == RUNNING)
        self.assertEqual(server.restarts, 1)
        self.assertNotEqual(server.pid, old_pid)
        self.assertIn("signal 9", server.last_error or "")
        rows = await _query(server.connect_args(), "SELECT 1")
        self.assertEqual(rows, [(1,)])

    async def test_stop_leaves_no_process(self) -> None:
        server = await managed_server(self)
        pid = server.pid
        assert pid is not None
        await server.stop()
        self.assertEqual(server.state, STOPPED)
        self.assertIsNone(server.pid)
        self.assertIsNone(server.started_at)
        self.assertFalse(pid_alive(pid))
        # Stopping again is harmless; starting again works.
        await server.stop()
        await server.start()
        self.assertEqual(server.state, RUNNING)

    async def test_concurrent_start_stop(self) -> None:
        """
        Operations are serialised: a stop asked during a start wins after it.
        """
        server = make_managed_server(self)
        self.addCleanup(lambda: Deferred.fromCoroutine(stop_and_check(self, server)))
        started = Deferred.fromCoroutine(server.start())
        stopped = Deferred.fromCoroutine(server.stop())
        await started
        await stopped
        self.assertEqual(server.state, STOPPED)
        self.assertIsNone(server.pid)

    async def test_set_options(self) -> None:
        server = await managed_server(self)
        old_pid = server.pid
        written = await server.set_options({"max-connections": 77, "slow_query_log": "on"})
        self.assertEqual(written, {"max_connections": "77", "slow_query_log": "ON"})
        self.assertEqual(server.state, RUNNING)
        self.assertNotEqual(server.pid, old_pid)
        rows = await _query(server.connect_args(), "SELECT @@max_connections, @@slow_query_log")
        self.assertEqual(rows, [(77, 1)])

    async def test_set_port(self) -> None:
        """
        A new port is used after the restart and reflected in C{port}.
        """
        server = await managed_server(self)
        port = _free_port()
        await server.set_options({"port": port})
        self.assertEqual(server.port, port)
        rows = await _query(server.connect_args(), "SELECT @@port")
        self.assertEqual(rows, [(port,)])

    async def test_invalid_option_refused(self) -> None:
        server = await managed_server(self)
        before = _read(server.mycnf_path)
        pid = server.pid
        for options in (
            {"max_connections": "77\nskip-grant-tables"},
            {"skip-grant-tables": "1"},
            {"datadir": "../../etc"},
            {"max_connections": "77", "socket": "/tmp/x"},
        ):
            await _raises(mycnf.InvalidOption, server.set_options(options))
        self.assertEqual(_read(server.mycnf_path), before)
        self.assertEqual(server.pid, pid)
        self.assertEqual(server.state, RUNNING)

    async def test_set_options_rolled_back(self) -> None:
        """
        If the server does not start with the new options, the previous
        my.cnf is restored and the server runs again.
        """
        server = await managed_server(self)
        before = _read(server.mycnf_path)
        error = await _raises(
            ServerError, server.set_options({"character_set_server": "nosuchcharset"})
        )
        self.assertIn("previous my.cnf restored", str(error))
        self.assertIn("nosuchcharset", str(error))
        self.assertEqual(server.state, RUNNING)
        self.assertEqual(_read(server.mycnf_path), before)
        rows = await _query(server.connect_args(), "SELECT 1")
        self.assertEqual(rows, [(1,)])

    async def test_set_options_when_stopped(self) -> None:
        """
        On a stopped server the options are written and used at next start.
        """
        server = make_managed_server(self)
        self.addCleanup(lambda: Deferred.fromCoroutine(stop_and_check(self, server)))
        await server.set_options({"max_connections": "55"})
        self.assertEqual(server.state, INIT)
        await server.start()
        rows = await _query(server.connect_args(), "SELECT @@max_connections")
        self.assertEqual(rows, [(55,)])

    async def test_start_failure_reports_error_log(self) -> None:
        """
        If mariadbd dies during start, start() fails with the end of its
        error log and the state is STOPPED.
        """
        server = await managed_server(self)
        await server.stop()
        _write(server.mycnf_path, _read(server.mycnf_path) + "no_such_option_xyz = 1\n")
        error = await _raises(ServerStartError, server.start())
        self.assertIn("exited during start", str(error))
        self.assertIn("no_such_option_xyz", str(error))
        self.assertEqual(server.state, STOPPED)
        self.assertEqual(server.last_error, str(error))
        self.assertIsNone(server.pid)

    async def test_leftover_server_is_stopped(self) -> None:
        """
        A server left running on the instance by an agent that died is
        stopped before ours starts (it would hold the datadir and socket).
        """
        server = await managed_server(self)
        await server.stop()
        binary = server._settings.mysqld
        assert binary is not None
        argv = [binary, f"--defaults-file={server.mycnf_path}"]
        if os.geteuid() == 0:
            argv.append("--user=root")
        assert server.socket_path is not None
        os.makedirs(os.path.dirname(server.socket_path), mode=0o700, exist_ok=True)
        orphan = subprocess.Popen(  # noqa: ASYNC220 - a stand-in for a foreign process
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=server.base_dir
        )
        self.addCleanup(orphan.wait)
        self.addCleanup(lambda: None if orphan.poll() is not None else orphan.kill())
        # Wait until it serves (a SIGTERM very early in its start is lost).
        for _ in range(300):
            try:
                await _query(server.connect_args(), "SELECT 1")
                break
            except pymysql.err.MySQLError:
                await deferLater(reactor, 0.05, lambda: None)  # type: ignore[arg-type]
        await server.start()
        self.assertFalse(pid_alive(orphan.pid))
        self.assertNotEqual(server.pid, orphan.pid)
        rows = await _query(server.connect_args(), "SELECT 1")
        self.assertEqual(rows, [(1,)])

    async def test_long_state_dir(self) -> None:
        """
        When <state_dir>/mysql/mysqld.sock is too long for a unix socket,
        the socket goes to a short private directory, removed at stop.
        """
        base = os.path.abspath(self.mktemp())
        state_dir = os.path.join(base, "x" * 60, "y" * 60)
        os.makedirs(state_dir)
        source = make_managed_server(self)
        server = ManagedServer(state_dir, source._config, reactor)
        self.addCleanup(lambda: Deferred.fromCoroutine(stop_and_check(self, server)))
        await server.start()
        assert server.socket_path is not None
        self.assertLessEqual(len(os.fsencode(server.socket_path)), 107)
        self.assertTrue(os.path.basename(os.path.dirname(server.socket_path)).startswith("cq-"))
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(server.socket_path)).st_mode), 0o700)
        rows = await _query(server.connect_args(), "SELECT 1")
        self.assertEqual(rows, [(1,)])
        socket_dir = os.path.dirname(server.socket_path)
        cnf_before = _read(server.mycnf_path)
        await server.stop()
        self.assertFalse(os.path.exists(socket_dir))
        await server.start()
        self.assertEqual(os.path.dirname(server.socket_path), socket_dir)
        self.assertEqual(_read(server.mycnf_path), cnf_before)
        rows = await _query(server.connect_args(), "SELECT 1")
        self.assertEqual(rows, [(1,)])

    async def test_service(self) -> None:
        """
        startService starts the server; stopService stops it and waits.
        """
        server = make_managed_server(self)
        self.addCleanup(lambda: Deferred.fromCoroutine(stop_and_check(self, server)))
        server.startService()
        self.assertTrue(server.running)
        await _wait_for(lambda: server.state == RUNNING)
        pid = server.pid
        assert pid is not None
        await server.stopService()
        self.assertEqual(server.state, STOPPED)
        self.assertFalse(pid_alive(pid))


_SCRIPT = """#!/bin/sh
echo "$1" >> {calls}
echo "fake service script: $1"
{body}
"""


class ScriptServerTests(TestCase):
    def make(
        self,
        body: str = "exit 0",
        port: int | None = None,
        password: str = "",
        my_cnf: str | None = None,
    ) -> tuple[ScriptServer, str]:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        calls = os.path.join(directory, "calls")
        script = os.path.join(directory, "ssr")
        with open(script, "w") as f:
            f.write(_SCRIPT.format(calls=calls, body=body))
        os.chmod(script, 0o755)
        config = AgentConfig(
            root=RootConnection(location="127.0.0.1", username="root", password=password),
            mysql=MySQLConfiguration(my_cnf_file=my_cnf, path_mysql_ssr=script),
            server=ServerSettings(
                mode="script",
                mysqld_port=port or _free_port(),
                client=find_binary(["mariadb", "mysql"]),
            ),
        )
        server = ScriptServer(os.path.join(directory, "state"), config, reactor)
        server.ping_timeout = 1.0
        return server, calls

    def calls(self, path: str) -> list[str]:
        try:
            with open(path) as f:
                return f.read().split()
        except FileNotFoundError:
            return []

    async def test_start_restart_stop(self) -> None:
        """
        The script is called with start/restart/stop; with a server that
        answers (a managed one stands in for the node's), the state follows.
        """
        if skip_unless_mariadb():
            raise self.skipTest(skip_unless_mariadb())
        real = await managed_server(self)
        server, calls = self.make(port=real.port, password=root_password(real))
        await server.start()
        self.assertEqual(server.state, RUNNING)
        self.assertEqual(server.version, real.version)
        self.assertEqual(server.flavor, "mariadb")
        self.assertIsNotNone(server.started_at)
        self.assertEqual(stat.S_IMODE(os.stat(server.client_defaults_file).st_mode), 0o600)
        if server.client_binary:
            out, err, code = await getProcessOutputAndValue(
                server.client_binary,
                [
                    f"--defaults-extra-file={server.client_defaults_file}",
                    "-N",
                    "-e",
                    "SELECT @@port",
                ],
                env=server.child_environment(),
                reactor=reactor,
            )
            self.assertEqual((code, out.strip()), (0, str(real.port).encode()), err)
        await server.restart()
        self.assertEqual(server.state, RUNNING)
        await server.stop()
        self.assertEqual(server.state, STOPPED)
        self.assertIsNone(server.started_at)
        self.assertEqual(self.calls(calls), ["start", "restart", "stop"])

    async def test_start_without_server(self) -> None:
        """
        The script succeeds but nothing answers: start fails, STOPPED.
        """
        server, calls = self.make()
        error = await _raises(ServerStartError, server.start())
        self.assertIn("did not answer", str(error))
        self.assertEqual(server.state, STOPPED)
        self.assertEqual(server.last_error, str(error))
        self.assertEqual(self.calls(calls), ["start"])

    async def test_failing_script(self) -> None:
        server, calls = self.make(body='echo "it broke" >&2; exit 3')
        error = await _raises(ScriptError, server.start())
        self.assertIn("exit code 3", str(error))
        self.assertIn("it broke", str(error))
        self.assertEqual(server.state, STOPPED)
        error = await _raises(ScriptError, server.stop())
        self.assertEqual(server.state, STOPPED)
        self.assertEqual(self.calls(calls), ["start", "stop"])

    async def test_script_timeout(self) -> None:
        server, _ = self.make(body="exec sleep 30")
        server.script_timeout = 0.5
        error = await _raises(ScriptError, server.start())
        self.assertIn("did not finish within 0.5 s", str(error))
        self.assertEqual(server.state, STOPPED)

    async def test_script_leaving_background_child(self) -> None:
        """
        A script that leaves a child holding its output pipe open (as a
        daemon might) still counts as finished when it exits.
        """
        server, _ = self.make(body="sleep 3 &\nexit 0")
        start = time.monotonic()
        await server.stop()
        self.assertLess(time.monotonic() - start, 2.5)
        self.assertEqual(server.state, STOPPED)

    async def test_set_options(self) -> None:
        """
        Script mode edits my_cnf_file (keeping the rest) and restarts
        through the script; invalid options leave everything alone.
        """
        if skip_unless_mariadb():
            raise self.skipTest(skip_unless_mariadb())
        real = await managed_server(self)
        cnf = os.path.abspath(self.mktemp())
        original = "!includedir /etc/mysql/conf.d/\n[mysqld]\n# comment\nuser = mysql\n"
        _write(cnf, original)
        server, calls = self.make(port=real.port, password=root_password(real), my_cnf=cnf)
        await _raises(mycnf.InvalidOption, server.set_options({"port": "99999"}))
        self.assertEqual(self.calls(calls), [])
        written = await server.set_options({"server-id": 5, "log_bin": "node-bin"})
        self.assertEqual(written, {"server_id": "5", "log_bin": "node-bin"})
        self.assertEqual(_read(cnf), original + "server_id=5\nlog_bin=node-bin\n")
        self.assertEqual(self.calls(calls), ["restart"])
        self.assertEqual(server.state, RUNNING)
