"""
Control of one node's database server process.

Two implementations of one interface, L{ServerControl}:

  - L{ManagedServer} runs a private MariaDB (or MySQL) instance of the
    agent's own in C{<state_dir>/mysql/}: it initialises the data directory,
    generates the root password, supervises C{mariadbd} as a child process
    and restarts it, with backoff, if it dies.
  - L{ScriptServer} drives a server installed on the node through its
    service script (C{path_mysql_ssr start|stop|restart}), as the original
    conpaassql did, but with argv lists instead of shell strings, timeouts
    and a ping to confirm the state.

Both are L{twisted.application.service.Service}s: C{startService} starts the
server (a failure is logged and left in C{last_error}; the agent stays up
to report it) and C{stopService} stops it and returns a Deferred that fires
when it has stopped.

This layer knows nothing of HTTP or JSON-RPC.  Everything is asynchronous:
child processes go through C{reactor.spawnProcess} with an explicit minimal
environment, database connections are made in the reactor's thread pool,
waits use the reactor's clock.  Passwords are never put on a command line
and never logged: client programs get them from
L{ServerControl.client_defaults_file}, a 0600 option file.

The lifecycle is a small state machine whose state names are the wire
vocabulary of the original (L{INIT}, L{STARTING}, L{RUNNING}, L{STOPPING},
L{STOPPED}).  The allowed transitions are in L{_TRANSITIONS} and every
change goes through C{_set_state}.  Operations (start, stop, restart,
set_options, automatic restart) are serialised by one L{DeferredLock}, so
the machine is only ever driven by one operation at a time; this is simpler
to read than an Automat machine here because every operation is a sequence
of awaits on child processes and threads, not a reaction to single inputs.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import stat
import tempfile
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar, runtime_checkable

import pymysql
from twisted.application.service import Service
from twisted.internet import error as ierror
from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import Logger
from twisted.python.failure import Failure

from conpaassql.agent import initdb, mycnf
from conpaassql.agent.config import AgentConfig
from conpaassql.agent.initdb import parse_version
from conpaassql.common.files import write_file_atomic, write_secret_file
from conpaassql.common.procfs import pid_alive as _pid_alive

__all__ = [
    "INIT",
    "RUNNING",
    "STARTING",
    "STATES",
    "STOPPED",
    "STOPPING",
    "ManagedServer",
    "ScriptError",
    "ScriptServer",
    "ServerControl",
    "ServerError",
    "ServerStartError",
    "make_server",
    "parse_version",
]

#: The server states; these exact names go on the wire.
INIT = "INIT"
STARTING = "STARTING"
RUNNING = "RUNNING"
STOPPING = "STOPPING"
STOPPED = "STOPPED"
STATES = (INIT, STARTING, RUNNING, STOPPING, STOPPED)

#: The allowed state changes.  STARTING -> STARTING happens when a failed
#: automatic restart is retried; RUNNING -> STARTING when the server died
#: and is being restarted; STARTING -> STOPPED when a start fails or a
#: pending automatic restart is cancelled by stop().
_TRANSITIONS: dict[str, frozenset[str]] = {
    INIT: frozenset({STARTING, STOPPING, STOPPED}),
    STARTING: frozenset({STARTING, RUNNING, STOPPED}),
    RUNNING: frozenset({STARTING, STOPPING}),
    STOPPING: frozenset({STOPPED, RUNNING}),
    STOPPED: frozenset({STARTING, STOPPING, STOPPED}),
}

#: The longest unix socket path the kernel accepts (sun_path is 108 bytes,
#: including the terminating NUL).
MAX_SOCKET_PATH = 107

_T = TypeVar("_T")

# The reactor must provide IReactorProcess, IReactorTime and IReactorThreads.
_Reactor = Any

_ACCESS_DENIED = (1045, 1698)


class ServerError(Exception):
    """
    An operation on the database server failed; the message says why.
    """


class ServerStartError(ServerError):
    """
    The server did not start; the message includes the last lines of its
    error log when there are any.
    """


class ScriptError(ServerError):
    """
    The service script failed or timed out.
    """


@runtime_checkable
class ServerControl(Protocol):
    """
    What the agent knows and can do about its node's database server.

    Attributes (read them, don't set them):

      - C{state}: one of L{STATES}.
      - C{port}: the server's TCP port (0 before a managed server's first start).
      - C{pid}: the server's process id, or L{None}.
      - C{started_at}: when the server last became RUNNING (reactor time,
        seconds since the epoch), or L{None}.
      - C{flavor}: C{"mariadb"} or C{"mysql"}, L{None} until known.
      - C{version}: the server version string, L{None} until known.
      - C{last_error}: the most recent error, or L{None}.  An operation the
        caller asked for (start, restart, set_options) clears it when it
        succeeds; an automatic restart after a crash keeps the crash visible.
      - C{restarts}: how many automatic restarts were attempted.
      - C{client_defaults_file}: a 0600 option file with a C{[client]}
        section (user, password, socket or host and port) for
        C{mariadb --defaults-extra-file=...}; written at start.
      - C{client_binary}, C{dump_binary}: absolute paths of the C{mariadb}
        and C{mariadb-dump} programs, or L{None} if not found.
    """

    @property
    def state(self) -> str: ...

    @property
    def pid(self) -> int | None: ...

    port: int
    started_at: float | None
    flavor: str | None
    version: str | None
    last_error: str | None
    restarts: int
    client_defaults_file: str
    client_binary: str | None
    dump_binary: str | None

    def connect_args(self) -> dict[str, Any]:
        """
        Return keyword arguments for C{pymysql.connect} (or
        C{adbapi.ConnectionPool("pymysql", **args)}) that connect as root.
        """

    def child_environment(self) -> dict[str, str]:
        """
        Return the minimal environment to run the client programs with.
        """

    async def start(self) -> None:
        """
        Start the server; return when it accepts connections.  Does nothing
        if it is RUNNING.

        @raise ServerError: if it did not start (C{state} is then STOPPED).
        """

    async def stop(self) -> None:
        """
        Stop the server; return when it has stopped.

        @raise ServerError: if it could not be stopped.
        """

    async def restart(self) -> None:
        """
        Stop and start the server.

        @raise ServerError: as L{start} and L{stop}.
        """

    async def set_options(
        self, options: Mapping[str, object], *, restart: bool = True
    ) -> dict[str, str]:
        """
        Validate whitelisted C{[mysqld]} options (see L{mycnf.WHITELIST}),
        write them to C{my.cnf} and restart the server if it is running
        (unless C{restart} is false: the caller then applies them to the
        running server itself, e.g. with C{SET GLOBAL}).
        If the server does not come back with the new options, the previous
        file is restored and the server restarted with it.

        @return: the options as written (canonical name to value).
        @raise mycnf.InvalidOption: if an option is refused; nothing changed.
        @raise ServerError: if writing or restarting failed.
        """


def _check_new_datadir(path: str) -> None:
    """
    Refuse a data directory that is not one: an existing file, or a
    non-empty directory that holds no initialised data directory.

    @raise mycnf.InvalidOption: naming C{datadir}.
    """
    if os.path.lexists(path) and not os.path.isdir(path):
        raise mycnf.InvalidOption("datadir", f"{path} exists and is not a directory")
    if os.path.isdir(path) and os.listdir(path) and not os.path.isdir(
            os.path.join(path, "mysql")):
        raise mycnf.InvalidOption(
            "datadir", f"{path} is not empty and holds no data directory (no mysql/ in it)")


class _ChildProcess(ProcessProtocol):
    """
    A child process whose output is streamed to a log file (if given) and
    to a line callback, keeping only its last lines in memory.

    It counts as ended when the process has exited and its output pipes
    are closed.  A child that leaves a background process holding the pipes
    (a service script starting a daemon that inherits stdout) would keep
    them open forever, so C{grace} seconds after the exit our ends of the
    pipes are closed.
    """

    #: Seconds to wait for the output pipes to close after the exit.
    grace = 1.0

    def __init__(
        self,
        reactor: _Reactor,
        name: str,
        log_path: str | None = None,
        on_line: Callable[[str], None] | None = None,
        on_exit: Callable[[_ChildProcess], None] | None = None,
        tail_lines: int = 30,
    ) -> None:
        self._reactor = reactor
        # IDelayedCall (typed Any: mypy without the zope plugin misreads
        # interface methods).
        self._grace_call: Any = None
        self.name = name
        self.tail: deque[str] = deque(maxlen=tail_lines)
        self.exit_code: int | None = None
        self.exit_signal: int | None = None
        self.ended = False
        #: Set before signalling the process, so its exit is not a crash.
        self.expected_exit = False
        self._on_line = on_line
        self._on_exit = on_exit
        self._partial = b""
        self._waiters: list[Deferred[None]] = []
        self._file = open(log_path, "ab") if log_path is not None else None  # noqa: SIM115

    @property
    def _process(self) -> Any:
        """
        The IProcessTransport, or None.
        """
        return self.transport

    @property
    def pid(self) -> int | None:
        process = self._process
        return None if process is None else process.pid

    def connectionMade(self) -> None:
        self._process.closeStdin()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if self._file is not None:
            self._file.write(data)
            self._file.flush()
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()[-4096:]
        for raw in lines:
            self._line(raw)

    def _line(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip("\r")
        self.tail.append(line)
        if self._on_line is not None:
            self._on_line(line)

    def processExited(self, reason: Failure) -> None:
        self.exit_code = getattr(reason.value, "exitCode", None)
        self.exit_signal = getattr(reason.value, "signal", None)
        if not self.ended:
            self._grace_call = self._reactor.callLater(self.grace, self._close_pipes)

    def _close_pipes(self) -> None:
        self._grace_call = None
        if not self.ended and self._process is not None:
            self._process.loseConnection()

    def processEnded(self, reason: Failure) -> None:
        if self._grace_call is not None and self._grace_call.active():
            self._grace_call.cancel()
        self._grace_call = None
        if self._partial:
            self._line(self._partial)
            self._partial = b""
        self.exit_code = getattr(reason.value, "exitCode", None)
        self.exit_signal = getattr(reason.value, "signal", None)
        self.ended = True
        self.close_log()
        if self._on_exit is not None:
            self._on_exit(self)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            if not d.called:
                d.callback(None)

    def close_log(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def when_ended(self) -> Deferred[None]:
        """
        Return a new Deferred that fires with L{None} when the process has
        ended.  It may be cancelled (e.g. by a timeout) without harm.
        """
        if self.ended:
            d: Deferred[None] = Deferred()
            d.callback(None)
            return d
        d = Deferred(lambda d: self._waiters.remove(d) if d in self._waiters else None)
        self._waiters.append(d)
        return d

    def signal(self, name: str) -> None:
        """
        Send a signal (C{"TERM"}, C{"KILL"}) unless the process is gone.
        """
        if self.ended or self._process is None:
            return
        try:
            self._process.signalProcess(name)
        except ierror.ProcessExitedAlready:
            pass

    def describe_exit(self) -> str:
        if self.exit_signal is not None:
            return f"killed by signal {self.exit_signal}"
        return f"exit code {self.exit_code}"

    def describe_tail(self, lines: int = 15) -> str:
        tail = [line for line in self.tail if line.strip()][-lines:]
        if not tail:
            return "(no output)"
        return "\n".join(tail)


async def _with_timeout(d: Deferred[_T], seconds: float, reactor: _Reactor) -> _T:
    """
    Wait for C{d} at most C{seconds}.

    @raise twisted.internet.defer.TimeoutError: if it took longer (C{d} is
        cancelled).
    """
    d.addTimeout(seconds, reactor)
    return await d


def _minimal_environment(binaries: list[str | None], home: str) -> dict[str, str]:
    dirs: list[str] = []
    for binary in binaries:
        if binary:
            dirs.append(os.path.dirname(binary))
    dirs += ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
    unique = list(dict.fromkeys(dirs))
    return {
        "PATH": os.pathsep.join(unique),
        "HOME": home,
        "LANG": "C",
        "LC_ALL": "C",
        "TMPDIR": tempfile.gettempdir(),
    }


def _read_bytes(path: str) -> bytes:
    """
    Read a small file (my.cnf, a pid file).
    """
    with open(path, "rb") as f:
        return f.read()


def _cmdline(pid: int) -> str:
    """
    The command line of a process, arguments separated by spaces; C{""} if
    it cannot be read.
    """
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def _client_option_file(options: Mapping[str, str | int]) -> str:
    lines = ["# Written by conpaassql; contains a password. Keep it 0600.", "[client]"]
    for key, value in options.items():
        lines.append(f"{key}={mycnf.quote_value(str(value))}")
    return "\n".join(lines) + "\n"


def _write_if_changed(path: str, text: str) -> None:
    try:
        with open(path, encoding="utf-8") as f:
            if f.read() == text and (os.stat(path).st_mode & 0o777) == 0o600:
                return
    except OSError:
        pass
    write_secret_file(path, text)


def _probe(connect: dict[str, Any], passwords: list[str]) -> tuple[str, str | None, str | None]:
    """
    Try to connect with each password in turn (runs in a thread).

    @return: C{("up", password, version)}, C{("denied", None, message)} or
        C{("down", None, message)}.
    """
    denied = ""
    for password in passwords:
        try:
            conn = pymysql.connect(**connect, password=password)
        except pymysql.err.OperationalError as e:
            if e.args and e.args[0] in _ACCESS_DENIED:
                denied = str(e.args[1]) if len(e.args) > 1 else str(e)
                continue
            return ("down", None, str(e))
        except (pymysql.err.MySQLError, OSError) as e:
            return ("down", None, str(e))
        try:
            with conn.cursor() as cursor:
                cursor.execute("SELECT VERSION()")
                row = cursor.fetchone()
        finally:
            conn.close()
        return ("up", password, str(row[0]) if row else "")
    return ("denied", None, denied)


_LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


def _secure_root(connect: dict[str, Any], password: str) -> None:
    """
    Give the root accounts a password and drop the accounts a fresh data
    directory has that we don't want: anonymous users and root accounts for
    other hosts (root@<hostname>).  Runs in a thread; the password is a
    bound parameter.
    """
    conn = pymysql.connect(**connect, password="", autocommit=True)
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT User, Host FROM mysql.user")
            accounts = [(str(user), str(host)) for user, host in cursor.fetchall()]
            for user, host in accounts:
                if user == "" or (user == "root" and host not in _LOCAL_HOSTS):
                    cursor.execute("DROP USER %s@%s", (user, host))
            for user, host in accounts:
                if user == "root" and host in _LOCAL_HOSTS:
                    cursor.execute("ALTER USER %s@%s IDENTIFIED BY %s", (user, host, password))
            cursor.execute("FLUSH PRIVILEGES")
    finally:
        conn.close()


class _ServerBase(Service):
    """
    What both implementations share: state, the operation lock, the
    Service hooks and running things in threads and child processes.
    """

    log = Logger()

    def __init__(self, config: AgentConfig, reactor: _Reactor) -> None:
        self._config = config
        #: The [agent] settings, with binaries left unset looked up.
        self._settings = config.server.with_binaries_found()
        self._reactor = reactor
        self._state = INIT
        self._lock = DeferredLock()
        self.port: int = config.server.mysqld_port
        self.started_at: float | None = None
        self.flavor: str | None = None
        self.version: str | None = None
        self.last_error: str | None = None
        self.restarts = 0
        self.client_binary: str | None = self._settings.client
        self.dump_binary: str | None = self._settings.dump
        self._home = tempfile.gettempdir()

    # -- state

    @property
    def state(self) -> str:
        """
        One of L{STATES}.
        """
        return self._state

    def _set_state(self, new: str) -> None:
        old = self._state
        if new == old:
            return
        if new not in _TRANSITIONS[old]:
            raise AssertionError(f"illegal server state change {old} -> {new}")
        self._state = new
        if new == RUNNING:
            self.started_at = self._reactor.seconds()
        elif new in (STOPPED, STOPPING):
            self.started_at = None
        self.log.info("database server state {old} -> {new}", old=old, new=new)

    def child_environment(self) -> dict[str, str]:
        return _minimal_environment(
            [self._settings.mysqld, self.client_binary, self.dump_binary], self._home
        )

    # -- helpers

    def _in_thread(self, f: Callable[..., _T], *args: Any) -> Deferred[_T]:
        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), f, *args)

    def _sleep(self, seconds: float) -> Deferred[None]:
        return deferLater(self._reactor, seconds, lambda: None)

    async def _run(
        self,
        argv: list[str],
        timeout: float,
        log_path: str | None = None,
        on_line: Callable[[str], None] | None = None,
        cwd: str | None = None,
    ) -> _ChildProcess:
        """
        Run a program to completion (argv as a list, never a shell), with
        the minimal environment and a timeout after which it is killed.

        @return: the finished L{_ChildProcess} (check C{exit_code}).
        @raise ServerError: if it could not be run or timed out.
        """
        name = os.path.basename(argv[0])
        proto = _ChildProcess(self._reactor, name, log_path, on_line)
        try:
            self._reactor.spawnProcess(
                proto, argv[0], argv, env=self.child_environment(), path=cwd or "/"
            )
        except OSError as e:
            proto.close_log()
            raise ServerError(f"cannot run {argv[0]}: {e}") from e
        try:
            await _with_timeout(proto.when_ended(), timeout, self._reactor)
        except DeferredTimeoutError:
            proto.signal("KILL")
            await proto.when_ended()
            raise ServerError(
                f"{name} did not finish within {timeout:g} s and was killed; "
                f"last output:\n{proto.describe_tail()}"
            ) from None
        return proto

    async def _detect_version(self) -> None:
        binary = self._settings.mysqld
        if binary is None or self.version is not None:
            return
        try:
            d = getProcessOutputAndValue(
                binary, ["--version"], env=self.child_environment(), reactor=self._reactor
            )
            out, _, code = await _with_timeout(d, 30, self._reactor)
        except Exception:  # noqa: BLE001 - unknown version is not fatal; logged
            self.log.failure("cannot run {binary} --version", binary=binary)
            return
        if code == 0:
            self.flavor, self.version = parse_version(out.decode("utf-8", "replace"))

    def _note_version(self, version: str | None) -> None:
        if version:
            self.flavor, self.version = parse_version(version)

    # -- Service

    def startService(self) -> None:
        """
        Start the server in the background; a failure is logged and kept in
        C{last_error}.
        """
        super().startService()
        d = Deferred.fromCoroutine(self.start())
        d.addErrback(self._start_failed)

    def _start_failed(self, failure: Failure) -> None:
        if failure.check(ServerError):
            self.log.error("the database server did not start: {error}", error=failure.value)
        else:
            self.log.failure("the database server did not start", failure)

    def stopService(self) -> Deferred[None]:
        """
        Stop the server.

        @return: a Deferred that fires when the server has stopped (after
            any start in progress), or fails with L{ServerError}.
        """
        super().stopService()
        return Deferred.fromCoroutine(self.stop())

    # -- for subclasses

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError


class ManagedServer(_ServerBase):
    """
    A private server instance in C{<state_dir>/mysql/}, run as a supervised
    child process.

    Files: C{data/} (the data directory), C{my.cnf} (generated at first
    start, then only edited), C{root.cnf} (the root password in C{[client]}
    format, 0600; also the L{client_defaults_file}), C{error.log} (the
    server's and the initialisation's output), C{mysqld.pid}, C{tmp/} (the
    server's private C{tmpdir}: a starting C{mariadbd} deletes every
    C{#sql*} file in its tmpdir, which breaks any other instance initialising
    in a shared C{/tmp} at the same time).  The unix
    socket is C{mysqld.sock} there, or, when that path is too long for a
    unix socket, in a private directory C{/tmp/cq-*} recorded in C{my.cnf}.

    At the first start the data directory is initialised (C{--no-defaults},
    root without password, no test database), the server started, the root
    password set and unwanted accounts dropped.  A C{datadir} changed with
    L{set_options} to an empty or missing directory is initialised the same
    way at the next start (data is not moved).

    The port and bind address of the configuration are used when C{my.cnf}
    is generated (port 0: a free port is chosen); after that C{my.cnf}
    rules and L{set_options} changes them.

    If the server dies while RUNNING, the state goes to STARTING and it is
    restarted after C{restart_delay} seconds, doubling after each quick
    failure up to C{max_restart_delay}; C{restarts} counts the attempts.

    @ivar base_dir: C{<state_dir>/mysql}.
    @ivar mycnf_path: the server's option file.
    @ivar error_log_path: the server's output.
    @ivar datadir: the data directory (as in C{my.cnf}).
    @ivar socket_path: the unix socket (as in C{my.cnf}), L{None} before
        the first start.
    """

    #: Seconds to wait for the server to accept connections.
    start_timeout = 60.0
    #: Seconds to wait for the server to exit after SIGTERM before SIGKILL.
    stop_timeout = 60.0
    #: Seconds the data directory initialisation may take.
    install_timeout = 120.0
    #: First delay before an automatic restart, and the longest.
    restart_delay = 0.5
    max_restart_delay = 60.0
    #: A run at least this long resets the restart backoff.
    stable_after = 60.0
    #: At a start, an error log bigger than this is moved to error.log.1.
    max_error_log_bytes = 10 << 20

    def __init__(self, state_dir: str, config: AgentConfig, reactor: _Reactor) -> None:
        super().__init__(config, reactor)
        self.base_dir = os.path.join(os.path.abspath(state_dir), "mysql")
        self.mycnf_path = os.path.join(self.base_dir, "my.cnf")
        self.root_cnf_path = os.path.join(self.base_dir, "root.cnf")
        self.client_defaults_file = self.root_cnf_path
        self.error_log_path = os.path.join(self.base_dir, "error.log")
        self.pid_file_path = os.path.join(self.base_dir, "mysqld.pid")
        self.datadir = os.path.join(self.base_dir, "data")
        self.tmp_dir = os.path.join(self.base_dir, "tmp")
        self.socket_path: str | None = None
        self._home = self.base_dir
        self._password: str | None = None
        self._proc: _ChildProcess | None = None
        self._want_running = False
        self._restart_call: Any = None  # IDelayedCall
        self._backoff = 0

    @property
    def pid(self) -> int | None:
        """
        The server's process id while the child process runs.
        """
        if self._proc is None or self._proc.ended:
            return None
        return self._proc.pid

    def connect_args(self) -> dict[str, Any]:
        """
        Connect as root over the unix socket (works whatever the bind
        address).  Available once the server has been started.
        """
        if self.socket_path is None or self._password is None:
            raise ServerError("the server has not been started yet")
        return {
            "unix_socket": self.socket_path,
            "user": "root",
            "password": self._password,
            "charset": "utf8mb4",
            "connect_timeout": 10,
        }

    # -- operations

    async def start(self) -> None:
        self._want_running = True
        self._cancel_scheduled_restart()
        async with self._lock:
            await self._start_locked()
            self.last_error = None

    async def stop(self) -> None:
        self._want_running = False
        self._cancel_scheduled_restart()
        async with self._lock:
            await self._stop_locked()

    async def restart(self) -> None:
        self._want_running = True
        self._cancel_scheduled_restart()
        async with self._lock:
            await self._stop_locked()
            await self._start_locked()
            self.last_error = None

    async def set_options(
        self, options: Mapping[str, object], *, restart: bool = True
    ) -> dict[str, str]:
        validated = mycnf.validate_options(options)
        if "datadir" in validated:
            _check_new_datadir(validated["datadir"])
        async with self._lock:
            try:
                await self._prepare()
                previous = _read_bytes(self.mycnf_path)
            except OSError as e:
                raise ServerError(f"cannot prepare {self.mycnf_path}: {e}") from e
            try:
                written = mycnf.set_options(self.mycnf_path, validated)
            except OSError as e:
                raise ServerError(f"cannot write {self.mycnf_path}: {e}") from e
            self.log.info("my.cnf options set: {options}", options=written)
            if not restart or (not self._want_running and self._proc is None):
                self._read_mycnf()
                return written
            self._want_running = True
            self._cancel_scheduled_restart()
            await self._stop_locked()
            try:
                await self._start_locked()
            except ServerError as e:
                self.log.error("the server did not start with the new options; restoring my.cnf")
                write_file_atomic(self.mycnf_path, previous)
                try:
                    await self._start_locked()
                except ServerError as e2:
                    raise ServerError(
                        f"the server did not start with the new options ({e}); the previous "
                        f"my.cnf was restored but the server did not start with it either ({e2})"
                    ) from e2
                self.last_error = (
                    f"the server did not start with the new options, previous my.cnf restored: {e}"
                )
                raise ServerError(self.last_error) from e
            self.last_error = None
            return written

    # -- starting

    async def _start_locked(self) -> None:
        if self._state == RUNNING and self._proc is not None and not self._proc.ended:
            return
        self._set_state(STARTING)
        try:
            await self._start_process()
            if self._proc is None or self._proc.ended:
                raise ServerStartError("mariadbd exited during start")
        except ServerError as e:
            self.last_error = str(e)
            await self._kill_process()
            self._set_state(STOPPED)
            raise
        except Exception as e:
            self.log.failure("unexpected error starting the database server")
            self.last_error = f"unexpected error: {e!r}"
            await self._kill_process()
            self._set_state(STOPPED)
            raise ServerStartError(self.last_error) from e
        self._set_state(RUNNING)

    async def _prepare(self) -> None:
        """
        Make sure the instance directory, the root password and C{my.cnf}
        exist.
        """
        os.makedirs(self.base_dir, mode=0o700, exist_ok=True)
        os.makedirs(self.tmp_dir, mode=0o700, exist_ok=True)
        await self._detect_version()
        if self._password is None:
            self._password = self._load_or_create_password()
        if not os.path.exists(self.mycnf_path):
            self._generate_mycnf()
        self._read_mycnf()

    async def _start_process(self) -> None:
        binary = self._settings.mysqld
        if binary is None:
            raise ServerStartError("no mariadbd or mysqld binary found")
        await self._prepare()
        self._ensure_socket_dir()
        fresh = False
        if not os.path.isdir(os.path.join(self.datadir, "mysql")):
            await self._initialise()
            fresh = True
        self._write_client_defaults()
        await self._end_orphan()
        self._rotate_error_log()

        argv = [binary, f"--defaults-file={self.mycnf_path}", *initdb.user_option()]
        proto = _ChildProcess(
            self._reactor, "mariadbd", self.error_log_path, on_exit=self._process_ended
        )
        self.log.info("starting {argv}", argv=" ".join(argv))
        try:
            self._reactor.spawnProcess(
                proto, binary, argv, env=self.child_environment(), path=self.base_dir
            )
        except OSError as e:
            proto.close_log()
            raise ServerStartError(f"cannot run {binary}: {e}") from e
        self._proc = proto
        await self._wait_ready(proto, fresh)

    def _rotate_error_log(self) -> None:
        """
        Keep one previous error log when the current one grew too big.
        """
        try:
            if os.path.getsize(self.error_log_path) > self.max_error_log_bytes:
                os.replace(self.error_log_path, self.error_log_path + ".1")
        except FileNotFoundError:
            pass

    async def _end_orphan(self) -> None:
        """
        Stop a server left running on our instance by an agent that died
        without stopping it (its pid file names a live process whose command
        line has our C{--defaults-file}); it would hold the data directory,
        the socket and the port.
        """
        try:
            pid = int(_read_bytes(self.pid_file_path).strip())
        except (OSError, ValueError):
            return
        if not _pid_alive(pid) or f"--defaults-file={self.mycnf_path}" not in _cmdline(pid):
            return
        self.log.warn(  # noqa: G010 - twisted.logger.Logger has warn()
            "stopping a leftover server of this instance (pid {pid})", pid=pid
        )
        for signame, timeout in (("SIGTERM", self.stop_timeout), ("SIGKILL", 30.0)):
            try:
                os.kill(pid, getattr(signal, signame))
            except ProcessLookupError:
                return
            deadline = self._reactor.seconds() + timeout
            while self._reactor.seconds() < deadline:
                if not _pid_alive(pid):
                    return
                await self._sleep(0.1)
        raise ServerStartError(f"a leftover server of this instance (pid {pid}) does not exit")

    async def _wait_ready(self, proto: _ChildProcess, fresh: bool) -> None:
        assert self._password is not None
        connect = self._probe_args()
        passwords = ["", self._password] if fresh else [self._password, ""]
        deadline = self._reactor.seconds() + self.start_timeout
        delay = 0.05
        last = "no answer yet"
        while True:
            if proto.ended:
                raise ServerStartError(
                    f"mariadbd exited during start ({proto.describe_exit()}); "
                    f"last lines of {self.error_log_path}:\n{proto.describe_tail()}"
                )
            status, password, detail = await self._in_thread(_probe, connect, passwords)
            if status == "up" and not proto.ended:
                break
            if status == "denied":
                raise ServerStartError(
                    f"the server refused the root password in {self.root_cnf_path}: {detail}"
                )
            last = detail or last
            if self._reactor.seconds() >= deadline:
                raise ServerStartError(
                    f"the server did not accept connections within {self.start_timeout:g} s "
                    f"({last}); last lines of {self.error_log_path}:\n{proto.describe_tail()}"
                )
            await self._sleep(delay)
            delay = min(delay * 1.5, 0.5)
        self._note_version(detail)
        if password != self._password:
            self.log.info("setting the root password of the new instance")
            try:
                await self._in_thread(_secure_root, connect, self._password)
            except pymysql.err.MySQLError as e:
                raise ServerStartError(f"cannot set the root password: {e}") from e

    def _probe_args(self) -> dict[str, Any]:
        return {
            "unix_socket": self.socket_path,
            "user": "root",
            "charset": "utf8mb4",
            "connect_timeout": 2,
        }

    async def _initialise(self) -> None:
        """
        Create the data directory: initialise into C{<datadir>.init} and
        rename it, so a failed initialisation leaves no half-made datadir.
        """
        datadir = self.datadir
        if os.path.isdir(datadir) and os.listdir(datadir):
            raise ServerStartError(
                f"{datadir} is not empty but holds no initialised data directory "
                f"(no mysql/ in it); refusing to touch it"
            )
        work = datadir + ".init"
        if os.path.exists(work):
            shutil.rmtree(work)
        os.makedirs(os.path.dirname(datadir), exist_ok=True)
        template = self._settings.datadir_template
        if template is not None and await self._copy_template(template, work):
            self._replace(work)
            return
        install_db = self._settings.install_db
        mysqld = self._settings.mysqld
        assert mysqld is not None
        argv = initdb.initialise_argv(install_db, mysqld, self.flavor, work, self.tmp_dir)
        self.log.info("initialising the data directory {datadir}", datadir=datadir)
        proto = await self._run(argv, self.install_timeout, self.error_log_path, cwd=self.base_dir)
        if proto.exit_code != 0:
            raise ServerStartError(
                f"initialising {datadir} failed ({proto.describe_exit()}); "
                f"last lines of {self.error_log_path}:\n{proto.describe_tail()}"
            )
        self._replace(work)

    def _replace(self, work: str) -> None:
        """
        Make the initialised C{work} directory the data directory.
        """
        try:
            if os.path.isdir(self.datadir):
                os.rmdir(self.datadir)
            os.rename(work, self.datadir)
        except OSError as e:
            shutil.rmtree(work, ignore_errors=True)
            raise ServerStartError(
                f"cannot move the new data directory to {self.datadir}: {e}"
            ) from e

    async def _copy_template(self, template: str, work: str) -> bool:
        """
        Copy the template's data directory to C{work} (see
        L{conpaassql.agent.initdb}); the template is only read.

        @return: whether it was copied; if not (no usable template, or the
            copy failed: logged), C{work} does not exist.
        """
        problem = await self._in_thread(initdb.check_template, template, self.version)
        if problem is not None:
            self.log.warn(  # noqa: G010 - twisted.logger.Logger has warn()
                "not using the datadir template: {problem}", problem=problem
            )
            return False
        cp = shutil.which("cp", path=self.child_environment()["PATH"])
        source = os.path.join(template, initdb.DATA)
        self.log.info("copying the datadir template {source}", source=source)
        try:
            if cp is None:
                raise ServerError("no cp program")
            proto = await self._run([cp, "-R", "--preserve=mode,timestamps", "--reflink=auto",
                                     "--", source, work], self.install_timeout,
                                    self.error_log_path, cwd=self.base_dir)
            if proto.exit_code != 0:
                raise ServerError(f"cp failed ({proto.describe_exit()}): {proto.describe_tail()}")
            for name in initdb.IDENTITY_FILES:
                if os.path.lexists(os.path.join(work, name)):
                    os.unlink(os.path.join(work, name))
        except (ServerError, OSError) as e:
            self.log.error("copying the datadir template failed, initialising instead: "
                           "{error}", error=e)
            shutil.rmtree(work, ignore_errors=True)
            return False
        return True

    # -- files

    def _load_or_create_password(self) -> str:
        try:
            password = mycnf.read_mycnf(self.root_cnf_path).get("client", "password")
        except FileNotFoundError:
            password = None
        if password:
            return password
        if os.path.isdir(os.path.join(self.datadir, "mysql")):
            raise ServerStartError(
                f"{self.root_cnf_path} is missing or has no password, but {self.datadir} "
                f"is already initialised; restore root.cnf"
            )
        password = secrets.token_urlsafe(24)
        write_secret_file(
            self.root_cnf_path, _client_option_file({"user": "root", "password": password})
        )
        return password

    def _generate_mycnf(self) -> None:
        port = self._settings.mysqld_port or self._free_port()
        socket_path = os.path.join(self.base_dir, "mysqld.sock")
        if len(os.fsencode(socket_path)) > MAX_SOCKET_PATH:
            socket_path = self._new_socket_dir()
        cnf = mycnf.MyCnf.parse(
            "# Generated by conpaassql for its private server instance.\n"
            "# Whitelisted [mysqld] options are changed through the agent.\n"
        )
        settings = [
            ("datadir", os.path.join(self.base_dir, "data")),
            ("socket", socket_path),
            ("port", str(port)),
            ("bind-address", self._settings.bind_address),
            ("pid-file", self.pid_file_path),
            ("tmpdir", self.tmp_dir),
            ("innodb_buffer_pool_size", "32M"),
            ("innodb_log_file_size", "16M"),
        ]
        if self.flavor == "mysql":
            settings.append(("loose-mysqlx", "OFF"))
        for key, value in settings:
            cnf.set("mysqld", key, value)
        mycnf.write_mycnf(self.mycnf_path, cnf, mode=0o600)

    def _read_mycnf(self) -> None:
        cnf = mycnf.read_mycnf(self.mycnf_path)
        options = cnf.items("mysqld")
        self.datadir = options.get("datadir") or os.path.join(self.base_dir, "data")
        self.socket_path = options.get("socket") or None
        port = options.get("port", "")
        self.port = int(port) if port.isdigit() else 3306

    def _free_port(self) -> int:
        address = self._settings.bind_address
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        try:
            socket.inet_pton(family, address)
        except OSError:
            address, family = "", socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((address, 0))
            return int(s.getsockname()[1])

    def _new_socket_dir(self) -> str:
        directory = tempfile.mkdtemp(prefix="cq-")
        path = os.path.join(directory, "mysqld.sock")
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            os.rmdir(directory)
            raise ServerStartError(f"no short enough directory for the unix socket ({path})")
        return path

    def _private_socket_dir(self) -> str | None:
        """
        The short private directory holding the socket, if one is used.
        """
        if self.socket_path is None:
            return None
        directory = os.path.dirname(self.socket_path)
        if directory == self.base_dir or not os.path.basename(directory).startswith("cq-"):
            return None
        return directory

    def _ensure_socket_dir(self) -> None:
        """
        Recreate the private socket directory, removed at stop (or by a
        /tmp cleaner), under the same name so that C{my.cnf} stays the same.
        If the name is taken by something that is not a 0700 directory of
        ours, make a new one and record it in C{my.cnf}.
        """
        directory = self._private_socket_dir()
        if directory is None:
            return
        try:
            os.mkdir(directory, 0o700)
            return
        except FileExistsError:
            st = os.lstat(directory)
            if (
                stat.S_ISDIR(st.st_mode)
                and st.st_uid == os.geteuid()
                and stat.S_IMODE(st.st_mode) & 0o077 == 0
            ):
                return
        except FileNotFoundError:
            pass
        self.log.warn(  # noqa: G010 - twisted.logger.Logger has warn()
            "socket directory {directory} unusable; making a new one", directory=directory
        )
        self.socket_path = self._new_socket_dir()
        cnf = mycnf.read_mycnf(self.mycnf_path)
        cnf.set("mysqld", "socket", self.socket_path)
        mycnf.write_mycnf(self.mycnf_path, cnf)

    def _remove_socket_dir(self) -> None:
        directory = self._private_socket_dir()
        if directory is None:
            return
        assert self.socket_path is not None
        for leftover in (self.socket_path, self.socket_path + ".lock"):
            try:
                os.unlink(leftover)
            except FileNotFoundError:
                pass
        try:
            os.rmdir(directory)
        except OSError:
            pass

    def _write_client_defaults(self) -> None:
        assert self._password is not None and self.socket_path is not None
        _write_if_changed(
            self.root_cnf_path,
            _client_option_file(
                {
                    "user": "root",
                    "password": self._password,
                    "socket": self.socket_path,
                    "port": self.port,
                }
            ),
        )

    # -- stopping and supervision

    async def _stop_locked(self) -> None:
        proto = self._proc
        if proto is None or proto.ended:
            self._proc = None
            if self._state not in (INIT, STOPPED):
                self._set_state(STOPPED)
            self._remove_socket_dir()
            return
        self._set_state(STOPPING)
        proto.expected_exit = True
        proto.signal("TERM")
        try:
            await _with_timeout(proto.when_ended(), self.stop_timeout, self._reactor)
        except DeferredTimeoutError:
            self.log.warn(  # noqa: G010 - twisted.logger.Logger has warn()
                "mariadbd did not exit {timeout} s after SIGTERM; killing it",
                timeout=self.stop_timeout,
            )
            proto.signal("KILL")
            try:
                await _with_timeout(proto.when_ended(), 30, self._reactor)
            except DeferredTimeoutError:
                self.last_error = f"mariadbd (pid {proto.pid}) did not exit after SIGKILL"
                self._set_state(RUNNING)
                raise ServerError(self.last_error) from None
        self._proc = None
        self._set_state(STOPPED)
        self._remove_socket_dir()

    async def _kill_process(self) -> None:
        proto = self._proc
        self._proc = None
        if proto is None or proto.ended:
            return
        proto.expected_exit = True
        proto.signal("KILL")
        try:
            await _with_timeout(proto.when_ended(), 30, self._reactor)
        except DeferredTimeoutError:
            self.log.error("mariadbd (pid {pid}) did not exit after SIGKILL", pid=proto.pid)

    def _process_ended(self, proto: _ChildProcess) -> None:
        if proto is not self._proc:
            return
        if proto.expected_exit:
            self.log.info("mariadbd exited ({how})", how=proto.describe_exit())
            return
        if self._state != RUNNING:
            # During STARTING the start sequence sees proto.ended itself.
            return
        uptime = self._reactor.seconds() - (self.started_at or self._reactor.seconds())
        self.last_error = (
            f"mariadbd exited unexpectedly ({proto.describe_exit()}); last lines of "
            f"{self.error_log_path}:\n{proto.describe_tail()}"
        )
        self.log.error(
            "mariadbd exited unexpectedly ({how}) after {uptime:.1f} s; restarting it",
            how=proto.describe_exit(),
            uptime=uptime,
        )
        self._proc = None
        if uptime >= self.stable_after:
            self._backoff = 0
        self._set_state(STARTING)
        self._schedule_restart()

    def _schedule_restart(self) -> None:
        if not self._want_running or self._restart_call is not None:
            return
        delay = min(self.restart_delay * (2**self._backoff), self.max_restart_delay)
        self._backoff += 1
        self._restart_call = self._reactor.callLater(delay, self._auto_restart)

    def _cancel_scheduled_restart(self) -> None:
        if self._restart_call is not None:
            if self._restart_call.active():
                self._restart_call.cancel()
            self._restart_call = None

    def _auto_restart(self) -> None:
        self._restart_call = None
        d = Deferred.fromCoroutine(self._auto_restart_async())
        d.addErrback(lambda f: self.log.failure("automatic restart crashed", f))

    async def _auto_restart_async(self) -> None:
        async with self._lock:
            if not self._want_running or self._state == RUNNING:
                return
            self.restarts += 1
            error = self.last_error
            try:
                await self._start_locked()
            except ServerError as e:
                self.log.error("automatic restart failed: {error}", error=e)
                self._schedule_restart()
                return
            self.last_error = error
            self.log.info("mariadbd restarted automatically (restart #{n})", n=self.restarts)


class ScriptServer(_ServerBase):
    """
    A server installed on the node, driven by its service script
    (C{[MySQL_configuration] path_mysql_ssr}, called as C{path start},
    C{path stop} or C{path restart}) and reached with the
    C{[MySQL_root_connection]} credentials.

    The state follows the script's exit status and a ping: after C{start}
    and C{restart} the server must answer within C{ping_timeout}; after a
    successful C{stop} it is STOPPED; after a failed script a ping decides
    between RUNNING and STOPPED.

    The port is C{[agent] mysqld_port} if set, else C{port} in
    C{my_cnf_file}, else 3306.  With an empty C{location} the server is
    reached over its unix socket when one is found (C{socket} in
    C{my_cnf_file}, or the usual places), else over 127.0.0.1.

    @ivar script: the service script.
    @ivar mycnf_path: C{my_cnf_file}, or L{None}.
    """

    #: Seconds the service script may take.
    script_timeout = 120.0
    #: Seconds the server has to answer after the script started it.
    ping_timeout = 30.0

    _SOCKET_GUESSES = ("/run/mysqld/mysqld.sock", "/var/run/mysqld/mysqld.sock", "/tmp/mysql.sock")
    _PID_GUESSES = ("/run/mysqld/mysqld.pid", "/var/run/mysqld/mysqld.pid")

    def __init__(self, state_dir: str, config: AgentConfig, reactor: _Reactor) -> None:
        super().__init__(config, reactor)
        if config.mysql.path_mysql_ssr is None:
            raise ValueError("script mode needs [MySQL_configuration] path_mysql_ssr")
        self.script = config.mysql.path_mysql_ssr
        self.mycnf_path = config.mysql.my_cnf_file
        self.state_dir = os.path.abspath(state_dir)
        self.client_defaults_file = os.path.join(self.state_dir, "root-client.cnf")
        self._home = self.state_dir
        self.port = self._configured_port()

    # -- what the server looks like

    def _mycnf_options(self, section: str = "mysqld") -> dict[str, str]:
        if self.mycnf_path is None:
            return {}
        try:
            return mycnf.read_mycnf(self.mycnf_path).items(section)
        except OSError:
            return {}

    def _configured_port(self) -> int:
        if self._settings.mysqld_port:
            return self._settings.mysqld_port
        port = self._mycnf_options().get("port", "")
        return int(port) if port.isdigit() and 0 < int(port) < 65536 else 3306

    def _socket(self) -> str | None:
        if self._config.root.location:
            return None
        candidates = [
            self._mycnf_options().get("socket"),
            self._mycnf_options("client").get("socket"),
            *self._SOCKET_GUESSES,
        ]
        for candidate in candidates:
            if candidate and os.path.exists(candidate):
                return candidate
        return None

    @property
    def pid(self) -> int | None:
        """
        The server's process id, from its pid file, if it can be read and
        the process exists.
        """
        candidates = [self._mycnf_options().get("pid_file"), *self._PID_GUESSES]
        for candidate in candidates:
            if not candidate:
                continue
            try:
                with open(candidate) as f:
                    pid = int(f.read().strip())
                os.kill(pid, 0)
            except (OSError, ValueError):
                continue
            return pid
        return None

    def connect_args(self) -> dict[str, Any]:
        root = self._config.root
        args: dict[str, Any] = {
            "user": root.username,
            "password": root.password,
            "charset": "utf8mb4",
            "connect_timeout": 10,
        }
        sock = self._socket()
        if sock is not None:
            args["unix_socket"] = sock
        else:
            args["host"] = root.location or "127.0.0.1"
            args["port"] = self.port
        return args

    def _write_client_defaults(self) -> None:
        args = self.connect_args()
        options: dict[str, str | int] = {"user": args["user"], "password": args["password"]}
        if "unix_socket" in args:
            options["socket"] = args["unix_socket"]
        else:
            options["host"] = args["host"]
            options["port"] = args["port"]
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        _write_if_changed(self.client_defaults_file, _client_option_file(options))

    async def _ping(self) -> tuple[bool, str]:
        args = self.connect_args()
        password = args.pop("password")
        args["connect_timeout"] = 5
        status, _, detail = await self._in_thread(_probe, args, [password])
        if status == "up":
            self._note_version(detail)
            return True, ""
        return False, detail or status

    async def _wait_for_ping(self) -> None:
        deadline = self._reactor.seconds() + self.ping_timeout
        delay = 0.1
        while True:
            ok, detail = await self._ping()
            if ok:
                return
            if self._reactor.seconds() >= deadline:
                raise ServerStartError(
                    f"the server did not answer within {self.ping_timeout:g} s: {detail}"
                )
            await self._sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _script(self, action: str) -> None:
        """
        Run C{script action}.

        @raise ScriptError: if it fails or times out.
        """

        def on_line(line: str) -> None:
            self.log.info("{script} {action}: {line}", script=self.script, action=action, line=line)

        self.log.info("running {script} {action}", script=self.script, action=action)
        try:
            proto = await self._run([self.script, action], self.script_timeout, on_line=on_line)
        except ServerError as e:
            raise ScriptError(f"{self.script} {action}: {e}") from e
        if proto.exit_code != 0:
            raise ScriptError(
                f"{self.script} {action} failed ({proto.describe_exit()}); "
                f"last output:\n{proto.describe_tail()}"
            )

    async def _settle_after_failure(self) -> None:
        ok, _ = await self._ping()
        if ok:
            if self._state != RUNNING:
                self._set_state(STARTING)
                self._set_state(RUNNING)
        else:
            self._set_state(STOPPED)

    # -- operations

    async def start(self) -> None:
        async with self._lock:
            await self._start_locked("start")

    async def restart(self) -> None:
        async with self._lock:
            await self._start_locked("restart")

    async def _start_locked(self, action: str) -> None:
        self._write_client_defaults()
        self._set_state(STARTING)
        try:
            await self._script(action)
            await self._wait_for_ping()
        except ServerError as e:
            self.last_error = str(e)
            self._set_state(STOPPED)
            await self._settle_after_failure()
            raise
        self._set_state(RUNNING)
        self.last_error = None

    async def stop(self) -> None:
        async with self._lock:
            self._set_state(STOPPING)
            try:
                await self._script("stop")
            except ServerError as e:
                self.last_error = str(e)
                self._set_state(STOPPED)
                await self._settle_after_failure()
                raise
            self._set_state(STOPPED)

    async def set_options(
        self, options: Mapping[str, object], *, restart: bool = True
    ) -> dict[str, str]:
        validated = mycnf.validate_options(options)
        if self.mycnf_path is None:
            raise ServerError("no [MySQL_configuration] my_cnf_file is configured")
        async with self._lock:
            try:
                previous: bytes | None = _read_bytes(self.mycnf_path)
            except FileNotFoundError:
                previous = None
            except OSError as e:
                raise ServerError(f"cannot read {self.mycnf_path}: {e}") from e
            try:
                written = mycnf.set_options(self.mycnf_path, validated)
            except OSError as e:
                raise ServerError(f"cannot write {self.mycnf_path}: {e}") from e
            self.log.info("my.cnf options set: {options}", options=written)
            if not restart:
                return written
            try:
                await self._start_locked("restart")
            except ServerError as e:
                self.log.error("the server did not restart with the new options; restoring my.cnf")
                if previous is None:
                    os.unlink(self.mycnf_path)
                else:
                    write_file_atomic(self.mycnf_path, previous)
                try:
                    await self._start_locked("restart")
                except ServerError as e2:
                    raise ServerError(
                        f"the server did not restart with the new options ({e}); the previous "
                        f"my.cnf was restored but it did not restart with it either ({e2})"
                    ) from e2
                self.last_error = (
                    f"the server did not restart with the new options, previous my.cnf "
                    f"restored: {e}"
                )
                raise ServerError(self.last_error) from e
            self.port = self._configured_port()
            return written


def make_server(
    state_dir: str, config: AgentConfig, reactor: _Reactor
) -> ManagedServer | ScriptServer:
    """
    Build the server control the configuration asks for (C{[agent] mode}).
    """
    if config.server.mode == "script":
        return ScriptServer(state_dir, config, reactor)
    return ManagedServer(state_dir, config, reactor)
