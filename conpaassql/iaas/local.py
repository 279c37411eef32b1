"""
The LOCAL cloud: every "VM" is an agent process on this host.

This is the manager's embedded default cloud.  A node is a real
C{twistd conpaassql-agent} in its own state directory, running its own
private C{mariadbd} (the agent's managed mode), listening on the bind
address.  Like a VM it is I{detached}: C{twistd} daemonizes it (double fork,
new session), so it is not the manager's child and outlives a manager
restart or a C{kill -9} of the manager.  The driver keeps no state in
memory that matters: everything it knows it reads back from the node
directories, so a restarted manager (a new driver object over the same base
directory) sees the same VMs.

Layout of C{<base dir>/<vm name>/} (mode 0700; the VM's name is its id)::

    vm.json        what was asked: node id, name, creation time (no secret)
    agent-token    the agent's API token (0600), given with --token-file
    tls-cert.pem, tls-key.pem, ca.pem  with TLS (the context's
                   AGENT_TLS_CERT_BASE64, ...; 0600): the agent listens on ssl:
    twistd.pid     the agent's pid, written by twistd once it has daemonized
    agent.log      the agent's log (twistd --logfile)
    launched       written when twistd reported a successful start
    launch-failed  written when twistd could not start the agent: why
    terminating    written when termination starts
    restarts.json  how often the agent was started again, and when last
    agent/         the agent's --state-dir: agent-url, mysql/ (the server)

States (L{LocalDriver.list}): PENDING until twistd has written the agent's
pid file; BOOTING while the agent runs but has not yet written its URL;
RUNNING once it has (C{agentPort} from that URL); FAILED when twistd could
not start it, when its process is gone, or when it has no process
C{LOCAL_BOOT_TIMEOUT} seconds after creation (the detail ends with the last
lines of C{agent.log}, without the token); GONE while it is being
terminated.

An agent that served (wrote its URL) and then died (killed, crashed) is
started again by the next L{LocalDriver.list}, on the same port and state
directory, as systemd (C{Restart=always}) or the boot script's restart loop
does on a real VM: the VM is BOOTING meanwhile, its data is kept, and the
new agent stops the C{mariadbd} the old one left behind.  An agent that dies
before it served, or again within C{restartWindow} (30 s) of its restart, is
FAILED.  A termination interrupted (by L{LocalDriver.close} or a manager
crash) leaves the VM GONE with detail C{"terminating"}: terminate it again
to finish.  The agent is recognised by its pid I{and} by its command line,
which names the node's pid file, so a recycled pid is not taken for it.

A node's database is not initialised by C{mariadb-install-db} (most of a
second) but copied from a pristine I{datadir template} in
C{<base dir>/templates/<flavor>-<version>/}, made once, at the first create,
by C{python -m conpaassql.agent.initdb} (a child process; built under a
temporary name and renamed, and named by the server's version, so an
upgrade makes a new one), and given to each agent with
C{--datadir-template}.  Each agent still sets its own root password after
its first start.  When no template can be made (logged), agents initialise
their data directory themselves.

Settings (the C{[iaas]} section, keys in any case, all optional):

  - C{LOCAL_BASE_DIR}: where the node directories are; default
    C{<manager state dir>/local-cloud}; relative to the state dir.
  - C{LOCAL_BIND_ADDRESS}: the IP address the agents listen on (and the
    VMs' C{ip}); default C{127.0.0.1}.
  - C{LOCAL_BOOT_TIMEOUT}: seconds a node may take to have a live agent
    process before it is reported FAILED; default 60.
  - C{LOCAL_STOP_TIMEOUT}: seconds L{LocalDriver.terminate} waits after
    SIGTERM for the agent to stop its server and exit before it uses
    SIGKILL; default 30.
  - C{LOCAL_AGENT_RESTART}: whether an agent that died is started again
    (see above); default true.  With false, a dead agent is a crashed VM:
    FAILED at once (what tests of a lost node use).

Any other C{LOCAL_*} key is an error; keys without the C{LOCAL_} prefix
(C{DRIVER}, other drivers' keys) are not this driver's business.
"""

from __future__ import annotations

import builtins
import ipaddress
import json
import os
import re
import shutil
import signal
import stat
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

import conpaassql
from conpaassql.common.files import write_file_atomic, write_secret_file
from conpaassql.common.procfs import pid_alive, process_argv
from conpaassql.common.tls import contextFiles
from conpaassql.iaas.base import (
    CloudFailure,
    DriverConfigError,
    NodeSpec,
    VMInfo,
    nodeIdOfName,
    vmNamePrefix,
)

__all__ = ["LocalDriver", "LocalSettings", "makeDriver"]

NAME = "LOCAL"

# Files of a node directory.
VM_FILE = "vm.json"
TOKEN_FILE = "agent-token"
#: The agent's TLS files, from the context (L{conpaassql.common.tls.contextFiles}).
TLS_FILES = {"cert": "tls-cert.pem", "key": "tls-key.pem", "ca": "ca.pem"}
PID_FILE = "twistd.pid"
LOG_FILE = "agent.log"
LAUNCHED_FILE = "launched"
LAUNCH_FAILED_FILE = "launch-failed"
TERMINATING_FILE = "terminating"
RESTARTS_FILE = "restarts.json"
AGENT_DIR = "agent"
AGENT_URL_FILE = "agent-url"
#: The directory of the base dir holding the datadir templates.
TEMPLATES_DIR = "templates"

#: How twistd is run with the manager's own interpreter (a constant program,
#: never built from input).
_TWISTD = "from twisted.scripts.twistd import run; run()"

_URL_PORT = re.compile(r"https?://.*:([0-9]{1,5})/?")


@dataclass(frozen=True)
class LocalSettings:
    """
    The LOCAL driver's settings (see the module docstring).
    """

    baseDir: str
    bindAddress: str = "127.0.0.1"
    bootTimeout: float = 60.0
    stopTimeout: float = 30.0
    agentRestart: bool = True

    @classmethod
    def fromMapping(cls, settings: Mapping[str, str], stateDir: str) -> LocalSettings:
        """
        Read the settings, collecting every problem.

        @raise DriverConfigError: listing every problem.
        """
        problems: list[str] = []
        given = {str(k).upper(): str(v).strip() for k, v in settings.items()}
        known = {"LOCAL_BASE_DIR", "LOCAL_BIND_ADDRESS", "LOCAL_BOOT_TIMEOUT", "LOCAL_STOP_TIMEOUT",
                 "LOCAL_AGENT_RESTART"}
        for key in sorted(given):
            if key.startswith("LOCAL_") and key not in known:
                problems.append(
                    f"unknown setting {key} for the LOCAL driver "
                    f"(known: {', '.join(sorted(known))})"
                )

        if not stateDir:
            problems.append("the LOCAL driver needs the manager's state directory")
        base = given.get("LOCAL_BASE_DIR") or "local-cloud"
        baseDir = os.path.abspath(os.path.join(stateDir or ".", os.path.expanduser(base)))

        bindAddress = given.get("LOCAL_BIND_ADDRESS") or "127.0.0.1"
        try:
            bindAddress = str(ipaddress.ip_address(bindAddress))
        except ValueError:
            problems.append(f"LOCAL_BIND_ADDRESS must be an IP address, not {bindAddress!r}")

        def seconds(key: str, default: float) -> float:
            raw = given.get(key)
            if not raw:
                return default
            try:
                value = float(raw)
            except ValueError:
                value = -1.0
            if not 0 < value <= 86400:
                problems.append(f"{key} must be a number of seconds in (0, 86400], not {raw!r}")
                return default
            return value

        bootTimeout = seconds("LOCAL_BOOT_TIMEOUT", cls.bootTimeout)
        stopTimeout = seconds("LOCAL_STOP_TIMEOUT", cls.stopTimeout)
        restart = (given.get("LOCAL_AGENT_RESTART") or "true").lower()
        if restart not in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            problems.append(f"LOCAL_AGENT_RESTART must be true or false, not {restart!r}")
        if problems:
            raise DriverConfigError(problems)
        return cls(baseDir, bindAddress, bootTimeout, stopTimeout,
                   restart in ("true", "yes", "on", "1"))


def makeDriver(
    settings: Mapping[str, str], *, stateDir: str, reactor: Any, serviceTag: str
) -> LocalDriver:
    """
    Build the LOCAL driver from the C{[iaas]} settings.  No I/O: the base
    directory is made at the first L{LocalDriver.create}.

    @raise DriverConfigError: listing every problem of the settings and the
        service tag.
    """
    problems: list[str] = []
    try:
        vmNamePrefix(serviceTag)
    except ValueError as e:
        problems.append(str(e))
    try:
        parsed = LocalSettings.fromMapping(settings, stateDir)
    except DriverConfigError as e:
        problems = e.problems + problems
    if problems:
        raise DriverConfigError(problems)
    return LocalDriver(parsed, reactor=reactor, serviceTag=serviceTag)


# -- small blocking helpers (small files and /proc only)


def _readSmall(path: str, limit: int = 65536) -> str | None:
    """
    The start of a small file as text, or L{None} if it cannot be read.
    """
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8", "replace")
    except OSError:
        return None


def _tail(path: str, lines: int = 12, limit: int = 8192) -> list[str]:
    """
    The last non-empty lines of a log file, reading at most C{limit} bytes.
    """
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            data = f.read(limit)
    except OSError:
        return []
    text = data.decode("utf-8", "replace").splitlines()
    if size > limit and text:
        text = text[1:]  # the first line is probably cut
    return [line for line in text if line.strip()][-lines:]


def _readPid(path: str) -> int | None:
    text = _readSmall(path, 64)
    if text is None or not text.strip().isdigit():
        return None
    pid = int(text.strip())
    return pid if pid > 0 else None


def _port(text: str | None) -> int | None:
    """
    The port of the URL the agent wrote (C{http://HOST:PORT/}), if whole.
    """
    if text is None:
        return None
    m = _URL_PORT.fullmatch(text.strip())
    if m is None:
        return None
    port = int(m.group(1))
    return port if 0 < port < 65536 else None


def _endpointAddress(address: str) -> str:
    """
    An IP address as an endpoint string value (colons escaped).
    """
    return address.replace(":", "\\:")


class _Node:
    """
    The paths of one node directory.
    """

    def __init__(self, baseDir: str, name: str) -> None:
        self.name = name
        self.dir = os.path.join(baseDir, name)
        self.agentDir = os.path.join(self.dir, AGENT_DIR)
        self.pidFile = os.path.join(self.dir, PID_FILE)
        self.logFile = os.path.join(self.dir, LOG_FILE)
        self.tokenFile = os.path.join(self.dir, TOKEN_FILE)

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    @property
    def pidfileArg(self) -> str:
        """The twistd argument that names this node's agent (and no other)."""
        return f"--pidfile={self.pidFile}"

    def isAgent(self, pid: int) -> bool:
        """Whether C{pid} is this node's agent (not a recycled pid)."""
        return pid_alive(pid) and self.pidfileArg in process_argv(pid)

    def agentPid(self) -> int | None:
        """The live agent's pid, verified by its command line."""
        pid = _readPid(self.pidFile)
        return pid if pid is not None and self.isAgent(pid) else None

    def processes(self) -> list[int]:
        """
        Every live process of this node: the twistd launcher and agent, the
        agent's C{mariadbd} (also one the agent left behind when it was
        killed) and C{mariadb-install-db}; found by arguments naming a file
        in the node directory.  One pass over C{/proc}.
        """
        prefix = self.dir + os.sep
        markers = tuple(f"{opt}={prefix}" for opt in ("--pidfile", "--defaults-file", "--datadir"))
        me = os.getpid()
        found: list[int] = []
        try:
            entries = os.listdir("/proc")
        except OSError:
            return found
        for entry in entries:
            if not entry.isdigit() or int(entry) == me:
                continue
            pid = int(entry)
            if any(a.startswith(markers) for a in process_argv(pid)) and pid_alive(pid):
                found.append(pid)
        return found

    def socketDir(self) -> str | None:
        """
        The private short directory of the server's unix socket
        (C{/tmp/cq-*}), which the agent uses when the node's path is too
        long for a socket; the agent removes it when it stops its server, but
        not when it is killed.
        """
        cnf = _readSmall(os.path.join(self.agentDir, "mysql", "my.cnf"))
        if cnf is None:
            return None
        m = re.search(r"^\s*socket\s*=\s*(\S+)\s*$", cnf, re.MULTILINE)
        if m is None:
            return None
        directory = os.path.dirname(m.group(1))
        if os.path.dirname(directory) != tempfile.gettempdir():
            return None
        if not re.fullmatch(r"cq-[A-Za-z0-9_]+", os.path.basename(directory)):
            return None
        return directory


class _Child(ProcessProtocol):
    """
    A child process of the driver, given no input, that can be killed.
    """

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.closeStdin()

    def kill(self) -> None:
        transport: Any = self.transport
        try:
            transport.signalProcess("KILL")
        except ProcessExitedAlready:
            pass


class _Launcher(_Child):
    """
    The C{twistd} that daemonizes one agent.  It exits once the agent has
    started its services (0) or failed to (non-zero, with the reason on
    stderr); the agent itself is then no child of ours.
    """

    def __init__(self, driver: LocalDriver, node: _Node) -> None:
        self._driver = driver
        self.node = node
        self._output = bytearray()
        self.done = False
        self._waiters: list[Deferred[None]] = []

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self._output += data
        del self._output[:-4096]

    def processEnded(self, reason: Failure) -> None:
        self.done = True
        code = getattr(reason.value, "exitCode", None)
        sig = getattr(reason.value, "signal", None)
        try:
            self._driver._launcherEnded(self, code, sig, bytes(self._output))
        finally:
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                d.callback(None)

    def whenEnded(self) -> Deferred[None]:
        """
        A new Deferred that fires when twistd has exited; cancellable.
        """
        if self.done:
            return succeed(None)
        d: Deferred[None] = Deferred(lambda d: self._waiters.remove(d))
        self._waiters.append(d)
        return d


class _TemplateMaker(_Child):
    """
    C{python -m conpaassql.agent.initdb --root DIR}: makes (or finds) the
    datadir template and prints its directory.
    """

    def __init__(self) -> None:
        self.output = {1: bytearray(), 2: bytearray()}
        self.code: int | None = None
        self.ended: Deferred[None] = Deferred()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        buffer = self.output.setdefault(childFD, bytearray())
        buffer += data
        del buffer[:-8192]

    def processEnded(self, reason: Failure) -> None:
        self.code = getattr(reason.value, "exitCode", None)
        self.ended.callback(None)


class LocalDriver:
    """
    The LOCAL driver (see the module docstring).  Build it with
    L{makeDriver}.

    VM ids are the VMs' names (C{conpaassql-<tag>-node-<n>}).
    """

    name = NAME
    log = Logger()

    #: Seconds between checks while waiting for processes to exit.
    pollInterval = 0.05
    #: Seconds to wait for processes to die after SIGKILL.
    killTimeout = 10.0
    #: Seconds L{close} waits for launchers still running.
    launcherTimeout = 30.0
    #: An agent that ends again within this many seconds of its restart is
    #: not restarted again: its VM is FAILED.
    restartWindow = 30.0
    #: Seconds making the datadir template may take.
    templateTimeout = 180.0
    #: Seconds a create waits for the template being made.
    templateWait = 30.0

    def __init__(self, settings: LocalSettings, *, reactor: Any, serviceTag: str) -> None:
        self.settings = settings
        self.serviceTag = serviceTag
        self._prefix = vmNamePrefix(serviceTag)
        self._reactor = reactor
        self._launchers: dict[str, _Launcher] = {}
        #: The VMs being terminated, and who else waits for that.
        self._terminating: dict[str, list[Deferred[None]]] = {}
        #: Pending waits and their IDelayedCall.
        self._sleeps: dict[Deferred[None], Any] = {}
        self._closed = False
        #: The datadir template: made once (L{_datadirTemplate}).
        self._template: str | None = None
        self._templateMaker: _TemplateMaker | None = None
        self._templateWaiters: builtins.list[Deferred[str | None]] | None = None

    # -- the interface

    async def create(self, spec: NodeSpec) -> VMInfo:
        """
        Start the agent of a new node, detached; return at once.

        @return: its L{VMInfo}, state PENDING.
        @raise CloudFailure: (not transient) if the name is not this
            service's or already exists, or the context lacks
            C{AGENT_TOKEN} or has a bad C{AGENT_PORT}; (transient) if the
            node directory or the process cannot be made.
        """
        self._checkOpen()
        node = self._node(spec.name)
        if nodeIdOfName(self.serviceTag, spec.name) != spec.nodeId:
            raise CloudFailure(
                f"create {spec.name}: the name does not carry node id {spec.nodeId}",
                transient=False,
            )
        token = spec.context.get("AGENT_TOKEN", "")
        if not token or any(c.isspace() for c in token):
            raise CloudFailure(
                f"create {spec.name}: the context needs AGENT_TOKEN, without white space",
                transient=False,
            )
        rawPort = spec.context.get("AGENT_PORT", "") or "0"
        if not rawPort.isdigit() or int(rawPort) > 65535:
            raise CloudFailure(
                f"create {spec.name}: AGENT_PORT must be a port number, not {rawPort!r}",
                transient=False,
            )
        port = int(rawPort)
        try:
            tlsFiles = contextFiles(spec.context)
        except ValueError as e:
            raise CloudFailure(f"create {spec.name}: {e}", transient=False) from None
        if os.path.lexists(node.dir):
            raise CloudFailure(
                f"create {spec.name}: a VM of that name already exists", transient=False
            )
        waiting = self._datadirTemplate()
        waiting.addTimeout(self.templateWait, self._reactor)
        try:
            template = await waiting
        except DeferredTimeoutError:
            template = None  # still being made: this agent initialises its own
        self._checkOpen()

        try:
            self._makeBaseDir()
            os.mkdir(node.dir, 0o700)
        except FileExistsError:
            raise CloudFailure(
                f"create {spec.name}: a VM of that name already exists", transient=False
            ) from None
        except OSError as e:
            raise CloudFailure(f"create {spec.name}: cannot make {node.dir}: {e}") from None
        try:
            os.chmod(node.dir, 0o700)
            write_secret_file(node.tokenFile, token + "\n")
            for what, data in (tlsFiles or {}).items():
                write_secret_file(node.path(TLS_FILES[what]), data)
            record = {
                "name": spec.name,
                "nodeId": spec.nodeId,
                "created": self._reactor.seconds(),
                "agentPort": port or None,
            }
            write_file_atomic(node.path(VM_FILE), json.dumps(record) + "\n", mode=0o600)
            self._launch(node, port, template)
        except OSError as e:
            shutil.rmtree(node.dir, ignore_errors=True)
            raise CloudFailure(f"create {spec.name}: cannot start its agent: {e}") from None
        self.log.info("created local VM {name} in {dir}", name=spec.name, dir=node.dir)
        return VMInfo(
            vmId=spec.name,
            name=spec.name,
            state="PENDING",
            ip=self.settings.bindAddress,
            agentPort=port or None,
            detail="agent starting",
        )

    async def list(self) -> list[VMInfo]:
        """
        Every node of this service in the base directory (one scan).

        @raise CloudFailure: if the base directory cannot be read.
        """
        self._checkOpen()
        try:
            entries = os.listdir(self.settings.baseDir)
        except FileNotFoundError:
            return []
        except OSError as e:
            raise CloudFailure(f"list: cannot read {self.settings.baseDir}: {e}") from None
        ours: list[tuple[int, str]] = []
        for entry in entries:
            nodeId = nodeIdOfName(self.serviceTag, entry)
            if nodeId is not None:
                ours.append((nodeId, entry))
        infos = []
        for _, name in sorted(ours):
            info = self._inspect(_Node(self.settings.baseDir, name))
            if info is not None:
                infos.append(info)
        return infos

    async def terminate(self, vmId: str) -> None:
        """
        Stop the node's agent (SIGTERM: it stops its server cleanly; after
        C{LOCAL_STOP_TIMEOUT} SIGKILL of every process of the node) and
        remove its directory.  Idempotent; a concurrent call waits for the
        one in progress.

        @raise CloudFailure: (not transient) if C{vmId} is not the name of
            one of this service's VMs; (transient) if its processes do not
            die or its directory cannot be removed.
        """
        self._checkOpen()
        node = self._node(vmId)
        waiters = self._terminating.get(vmId)
        if waiters is not None:
            waiter: Deferred[None] = Deferred()
            waiters.append(waiter)
            await waiter
            return
        waiters = self._terminating[vmId] = []
        try:
            await self._terminate(node)
        except BaseException:
            failure = Failure()
            for waiter in waiters:
                waiter.errback(failure)
            raise
        else:
            for waiter in waiters:
                waiter.callback(None)
        finally:
            del self._terminating[vmId]

    async def close(self) -> None:
        """
        Stop waiting and polling; wait (bounded) for twistd launchers still
        running.  The agents are left running: they outlive the manager.
        """
        self._closed = True
        sleeps, self._sleeps = self._sleeps, {}
        for d, call in sleeps.items():
            call.cancel()
            d.errback(CloudFailure("the LOCAL driver was closed", transient=False))
        deadline = self._reactor.seconds() + self.launcherTimeout
        for launcher in list(self._launchers.values()):
            await self._awaitLauncher(launcher, max(0.0, deadline - self._reactor.seconds()))
        if self._templateWaiters is not None:
            # Making the template: wait for it, bounded, then kill it.
            made = self._datadirTemplate()
            made.addTimeout(max(0.0, deadline - self._reactor.seconds()), self._reactor)
            try:
                await made
            except DeferredTimeoutError:
                assert self._templateMaker is not None
                self._templateMaker.kill()
                await self._datadirTemplate()

    # -- the datadir template

    def _datadirTemplate(self) -> Deferred[str | None]:
        """
        The datadir template for the agents, made at the first call (by a
        child process); later calls wait for that one.  One that could not
        be made is not tried again by this driver.

        @return: a Deferred firing with its directory, or L{None} if it could
            not be made (logged; the agents then initialise their own).
        """
        if self._templateWaiters is None:
            if self._template is not None or self._templateMaker is not None:
                return succeed(self._template)
            self._templateWaiters = []
            Deferred.fromCoroutine(self._makeTemplate()).addErrback(
                lambda f: self.log.failure("making the datadir template", f)
            )
            if self._templateWaiters is None:  # it ended at once
                return succeed(self._template)
        waiters = self._templateWaiters

        def cancel(d: Deferred[str | None]) -> None:
            if d in waiters:
                waiters.remove(d)

        d: Deferred[str | None] = Deferred(cancel)
        waiters.append(d)
        return d

    def _makeBaseDir(self) -> None:
        """The base directory, private: node directories in it hold secrets."""
        os.makedirs(self.settings.baseDir, mode=0o700, exist_ok=True)
        os.chmod(self.settings.baseDir, 0o700)

    async def _makeTemplate(self) -> None:
        root = os.path.join(self.settings.baseDir, TEMPLATES_DIR)
        maker = self._templateMaker = _TemplateMaker()
        argv = [sys.executable, "-m", "conpaassql.agent.initdb", "--root", root]
        try:
            self._makeBaseDir()
            os.makedirs(root, mode=0o700, exist_ok=True)
            self._reactor.spawnProcess(maker, sys.executable, argv,
                                       env=self._agentEnvironment(root),
                                       path=self.settings.baseDir)
        except OSError as e:
            self.log.error("cannot make the datadir template: {error}", error=e)
            maker.ended.callback(None)
        else:
            timeout = self._reactor.callLater(self.templateTimeout, maker.kill)
            await maker.ended
            if timeout.active():
                timeout.cancel()
        path = bytes(maker.output[1]).decode("utf-8", "replace").strip()
        if maker.code == 0 and os.path.dirname(path) == root and os.path.isdir(path):
            self._template = path
            self.log.info("datadir template: {path}", path=path)
        else:
            why = bytes(maker.output[2]).decode("utf-8", "replace").strip()
            self.log.error("no datadir template (agents initialise their own): {why}",
                           why=why or f"exit code {maker.code}")
        waiters, self._templateWaiters = self._templateWaiters or [], None
        for d in waiters:
            d.callback(self._template)

    # -- creating

    def _agentArgv(
        self, node: _Node, port: int, template: str | None = None
    ) -> builtins.list[str]:
        listen = f"tcp:{port}:interface={_endpointAddress(self.settings.bindAddress)}"
        tlsArgs: builtins.list[str] = []
        if os.path.exists(node.path(TLS_FILES["cert"])):  # the context gave TLS files
            # File names only: the key stays in its 0600 file.
            listen = "ssl" + listen[3:]
            tlsArgs = [f"--tls-cert={node.path(TLS_FILES['cert'])}",
                       f"--tls-key={node.path(TLS_FILES['key'])}",
                       f"--ca-cert={node.path(TLS_FILES['ca'])}"]
        extra = [f"--datadir-template={template}"] if template is not None else []
        return [
            sys.executable,
            "-c",
            _TWISTD,
            node.pidfileArg,
            f"--logfile={node.logFile}",
            f"--rundir={node.dir}",
            "--umask=0077",
            "conpaassql-agent",
            f"--state-dir={node.agentDir}",
            f"--listen={listen}",
            f"--token-file={node.tokenFile}",
            *tlsArgs,
            *extra,
        ]

    def _agentEnvironment(self, home: _Node | str) -> dict[str, str]:
        """
        The agent's whole environment: no secret, nothing inherited but the
        location of this very code.
        """
        source = os.path.dirname(os.path.dirname(os.path.abspath(conpaassql.__file__)))
        path = [os.path.dirname(sys.executable), "/usr/local/sbin", "/usr/local/bin"]
        path += ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        return {
            "PATH": os.pathsep.join(dict.fromkeys(path)),
            "HOME": home.dir if isinstance(home, _Node) else home,
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "TMPDIR": tempfile.gettempdir(),
            "PYTHONPATH": source,
        }

    def _launcherEnded(
        self, launcher: _Launcher, code: int | None, sig: int | None, output: bytes
    ) -> None:
        node = launcher.node
        if self._launchers.get(node.name) is launcher:
            del self._launchers[node.name]
        if node.name in self._terminating or not os.path.isdir(node.dir):
            return
        try:
            if code == 0:
                write_file_atomic(node.path(LAUNCHED_FILE), "", mode=0o600)
                return
            how = f"signal {sig}" if sig is not None else f"exit code {code}"
            text = output.decode("utf-8", "replace").strip() or "(no output)"
            text = self._redact(node, text)
            write_file_atomic(
                node.path(LAUNCH_FAILED_FILE),
                f"twistd failed to start the agent ({how}): {text}\n",
                mode=0o600,
            )
        except OSError:
            self.log.failure("cannot record the start of {name}", name=node.name)
        if code != 0:
            self.log.error("the agent of {name} did not start", name=node.name)

    # -- listing

    def _inspect(self, node: _Node) -> VMInfo | None:
        """
        The state of one node from its files and processes.  Markers are read
        before the pid file: C{launched} is written only after twistd wrote
        the pid file, so a missing pid file then means the agent ended.
        """
        try:
            st = os.lstat(node.dir)
        except FileNotFoundError:
            return None
        if not stat.S_ISDIR(st.st_mode):
            return None
        ip = self.settings.bindAddress
        if os.path.exists(node.path(TERMINATING_FILE)):
            return VMInfo(node.name, node.name, "GONE", detail="terminating")
        launched = os.path.exists(node.path(LAUNCHED_FILE))
        launchFailed = _readSmall(node.path(LAUNCH_FAILED_FILE), 8192)
        pid = _readPid(node.pidFile)
        port = _port(_readSmall(os.path.join(node.agentDir, AGENT_URL_FILE), 1024))
        if pid is not None and node.isAgent(pid):
            if port is None:
                return VMInfo(node.name, node.name, "BOOTING", ip=ip, detail="agent starting")
            return VMInfo(
                node.name, node.name, "RUNNING", ip=ip, agentPort=port, detail=f"agent pid {pid}"
            )
        count, restartedAt = self._restarts(node)
        if pid is not None:
            reason = f"the agent process (pid {pid}) is gone"
        elif launchFailed is not None:
            reason = launchFailed.strip()
        elif launched:
            reason = "the agent process ended"
        else:
            age = self._reactor.seconds() - max(restartedAt, self._created(node, st.st_mtime))
            if age < self.settings.bootTimeout or node.name in self._launchers:
                return VMInfo(node.name, node.name, "PENDING", ip=ip, detail="agent starting")
            reason = f"no agent process {self.settings.bootTimeout:g} s after creation"
        if (self.settings.agentRestart and launchFailed is None and port is not None
                and node.name not in self._launchers):
            # It served, then died: started again, as its supervisor does on a
            # real VM, unless it died soon after the last restart.
            if self._reactor.seconds() - restartedAt >= self.restartWindow:
                if self._restart(node, port, count + 1, reason):
                    return VMInfo(node.name, node.name, "BOOTING", ip=ip,
                                  detail=f"agent restarted ({reason})")
            else:
                reason += (f", {self._reactor.seconds() - restartedAt:.0f} s after its "
                           f"restart {count}: not restarted again")
        return VMInfo(node.name, node.name, "FAILED", ip=ip, detail=self._failure(node, reason))

    def _restarts(self, node: _Node) -> tuple[int, float]:
        """How often the node's agent was restarted, and when last (0 if never)."""
        try:
            record = json.loads(_readSmall(node.path(RESTARTS_FILE), 4096) or "")
            return int(record["count"]), float(record["at"])
        except (ValueError, KeyError, TypeError):
            return 0, 0.0

    def _restart(self, node: _Node, port: int, count: int, reason: str) -> bool:
        """
        Start the agent of a node again, on its port, after it died (its
        new self stops the C{mariadbd} the old one left).  False if it cannot
        be started.
        """
        self.log.warn(  # noqa: G010 - twisted.logger.Logger has warn()
            "{name}: {reason}; starting its agent again (restart {count})",
            name=node.name, reason=reason, count=count,
        )
        try:
            for stale in (node.pidFile, node.path(LAUNCHED_FILE),
                          os.path.join(node.agentDir, AGENT_URL_FILE)):
                try:
                    os.unlink(stale)
                except FileNotFoundError:
                    pass
            write_file_atomic(
                node.path(RESTARTS_FILE),
                json.dumps({"count": count, "at": self._reactor.seconds()}) + "\n",
                mode=0o600,
            )
            self._launch(node, port)
        except OSError as e:
            self.log.error("{name}: cannot start its agent again: {error}", name=node.name,
                           error=e)
            return False
        return True

    def _launch(self, node: _Node, port: int, template: str | None = None) -> None:
        """Start twistd for the node's agent (it daemonizes it)."""
        launcher = _Launcher(self, node)
        self._reactor.spawnProcess(
            launcher,
            sys.executable,
            self._agentArgv(node, port, template),
            env=self._agentEnvironment(node),
            path=node.dir,
        )
        self._launchers[node.name] = launcher

    def _created(self, node: _Node, default: float) -> float:
        try:
            record = json.loads(_readSmall(node.path(VM_FILE), 8192) or "")
            return float(record["created"])
        except (ValueError, KeyError, TypeError):
            return default

    def _failure(self, node: _Node, reason: str) -> str:
        lines = _tail(node.logFile)
        if not lines:
            return reason
        return self._redact(node, f"{reason}; last lines of {node.logFile}:\n" + "\n".join(lines))

    def _redact(self, node: _Node, text: str) -> str:
        """
        C{text} without the node's token, should it ever be in a log.
        """
        token = (_readSmall(node.tokenFile, 4096) or "").strip()
        return text.replace(token, "<token>") if token else text

    # -- terminating

    async def _terminate(self, node: _Node) -> None:
        try:
            st = os.lstat(node.dir)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            raise CloudFailure(
                f"terminate {node.name}: {node.dir} is not a directory; not touching it",
                transient=False,
            )
        self.log.info("terminating local VM {name}", name=node.name)
        try:
            write_file_atomic(node.path(TERMINATING_FILE), "", mode=0o600)
        except OSError as e:
            raise CloudFailure(f"terminate {node.name}: cannot mark it: {e}") from None
        launcher = self._launchers.get(node.name)
        if launcher is not None:
            # Between its fork and its exec, its command line is still ours:
            # it could not be found by its arguments.  It is quick.
            await self._awaitLauncher(launcher, self.launcherTimeout)
        await self._stopProcesses(node)
        socketDir = node.socketDir()
        try:
            await deferToThreadPool(
                self._reactor, self._reactor.getThreadPool(), shutil.rmtree, node.dir
            )
        except FileNotFoundError:
            pass
        except OSError as e:
            raise CloudFailure(f"terminate {node.name}: cannot remove {node.dir}: {e}") from None
        if socketDir is not None:
            for leftover in ("mysqld.sock", "mysqld.sock.lock"):
                try:
                    os.unlink(os.path.join(socketDir, leftover))
                except OSError:
                    pass
            try:
                os.rmdir(socketDir)
            except OSError:
                pass
        self.log.info("terminated local VM {name}", name=node.name)

    async def _awaitLauncher(self, launcher: _Launcher, timeout: float) -> None:
        """
        Wait for a twistd launcher to exit; kill it after C{timeout} seconds
        (an agent it already daemonized is not affected).
        """
        ended = launcher.whenEnded()
        ended.addTimeout(timeout, self._reactor)
        try:
            await ended
        except DeferredTimeoutError:
            self.log.warn(  # noqa: G010 - twisted.logger.Logger has warn()
                "twistd for {name} still running after {timeout:g} s; killing it",
                name=launcher.node.name,
                timeout=timeout,
            )
            launcher.kill()
            await launcher.whenEnded()

    async def _stopProcesses(self, node: _Node) -> None:
        """
        SIGTERM the agent (or, if it is gone, whatever it left running), wait
        up to the stop timeout, then SIGKILL every process of the node.
        """
        agent = node.agentPid()
        targets = [agent] if agent is not None else node.processes()
        self._signal(targets, signal.SIGTERM)
        deadline = self._reactor.seconds() + self.settings.stopTimeout
        while node.processes():
            if self._reactor.seconds() >= deadline:
                break
            await self._sleep(self.pollInterval)
        else:
            return
        self.log.warn(  # noqa: G010 - twisted.logger.Logger has warn()
            "{name} did not stop {timeout:g} s after SIGTERM; killing its processes",
            name=node.name,
            timeout=self.settings.stopTimeout,
        )
        deadline = self._reactor.seconds() + self.killTimeout
        while left := node.processes():
            if self._reactor.seconds() >= deadline:
                raise CloudFailure(
                    f"terminate {node.name}: processes {sorted(left)} do not die after SIGKILL"
                )
            self._signal(left, signal.SIGKILL)
            await self._sleep(self.pollInterval)

    def _signal(self, pids: Iterable[int], sig: signal.Signals) -> None:
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
            except OSError as e:
                self.log.error("cannot signal pid {pid}: {error}", pid=pid, error=e)

    # -- helpers

    def _node(self, name: str) -> _Node:
        """
        The node of one of this service's VMs.

        @raise CloudFailure: (not transient) if C{name} is not the name of a
            VM of this service (another service's, or anything else, such as
            a path).
        """
        if not isinstance(name, str) or nodeIdOfName(self.serviceTag, name) is None:
            raise CloudFailure(
                f"{name!r} is not the name of a VM of this service "
                f"(names start with {self._prefix!r})",
                transient=False,
            )
        return _Node(self.settings.baseDir, name)

    def _checkOpen(self) -> None:
        if self._closed:
            raise CloudFailure("the LOCAL driver is closed", transient=False)

    def _sleep(self, seconds: float) -> Deferred[None]:
        """
        Wait on the reactor.  L{close} cancels the wait: it then fails with
        L{CloudFailure}.
        """
        d: Deferred[None] = Deferred()

        def wake() -> None:
            del self._sleeps[d]
            d.callback(None)

        self._sleeps[d] = self._reactor.callLater(seconds, wake)
        return d
