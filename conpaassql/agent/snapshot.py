"""
A consistent snapshot of a master, streamed agent to agent.

Master side: L{SnapshotResource} serves C{GET /snapshot} (same bearer token
as the API).  The body is SQL: the master's user accounts and roles (not
the system ones, so a slave's own root survives), then the output of
C{mariadb-dump --single-transaction --gtid --master-data=2 ...} for every
database but the server's own schemas, then the accounts' grants, then a
trailer line C{-- conpaassql snapshot complete: N bytes; gtid='...';
binlog='file':pos} with the coordinates the dump wrote as comments (read by
the master from the first and last bytes of its output).  The dump runs in
one consistent-snapshot transaction: the master is neither stopped nor
locked while it is copied.  The dump's standard output, read from a pipe
in large blocks, goes to the HTTP connection through a push producer, so
when the network (or the slave) is slow the dump process is paused rather
than buffered; if the client goes away the dump is killed; if the dump
fails, the stream ends with its reason and without the trailer (and
without the body's last chunk).

Slave side: L{streamSnapshot} GETs the snapshot and pipes the body into the
local client (C{mariadb}) through C{spawnProcess}, pausing the HTTP
transport whenever the client's stdin pipe is full.  Nothing is held whole
in memory or written to disk; the data is not searched either: only the
stream's last bytes are kept, for the trailer.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from treq.client import HTTPClient
from twisted.internet import abstract, fdesc, main
from twisted.internet import error as ierror
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, resource, server
from twisted.web._newclient import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from conpaassql.agent.db import DATABASE, PROTECTED_USERS, SYSTEM_SCHEMAS
from conpaassql.agent.dump import ChildProtocol, clientError
from conpaassql.agent.replsql import Dialect
from conpaassql.rpc.dispatch import encode
from conpaassql.rpc.errors import (
    Conflict,
    OperationFailed,
    RPCError,
    Timeout,
    WrongState,
)
from conpaassql.rpc.resource import TokenAuth, refusal

log = Logger()

TRAILER = b"-- conpaassql snapshot complete: "
FAILED = b"\n-- conpaassql snapshot failed: "
_FAILED_LINE = re.compile(rb"^-- conpaassql snapshot failed: ([^\n]*)$", re.MULTILINE)
_TRAILER_LINE = re.compile(
    rb"\n-- conpaassql snapshot complete: ([0-9]+) bytes; gtid='([0-9A-Za-z:,\-]*)'; "
    rb"binlog='([^'\n]{0,255})':([0-9]{0,20})\n\Z"
)
_GTID_LINES = (
    re.compile(rb"^-- SET GLOBAL gtid_slave_pos='([0-9,\-]*)';$", re.MULTILINE),
    re.compile(rb"^(?:/\* )?SET @@GLOBAL\.GTID_PURGED=(?:/\*!80000 '\+'\*/ )?'([^']*)'", re.MULTILINE),
)
_BINLOG_LINE = re.compile(
    rb"^-- CHANGE (?:MASTER|REPLICATION SOURCE) TO (?:MASTER|SOURCE)_LOG_FILE='([^']{1,255})', "
    rb"(?:MASTER|SOURCE)_LOG_POS=([0-9]{1,20});$",
    re.MULTILINE,
)
#: Bytes of the dump's beginning and end kept to read its coordinates from
#: (MariaDB writes the binlog position at the start and the GTID position at
#: the end; MySQL both at the start), and of the stream's end on the slave.
_HEAD = 64 * 1024
_KEEP = 4096


def _close(request: Any) -> None:
    """End the connection (once written) without the body's last chunk."""
    request.channel.transport.loseConnection()


def _abort(request: Any) -> None:
    """End the response without its final chunk: the client sees it broke."""
    request.channel.transport.abortConnection()


def _errorBody(error: RPCError) -> bytes:
    return encode({"result": None, "error": error.toDict(), "id": None})


@dataclass
class SnapshotSource:
    """
    What the master-side endpoint needs from the agent.

    @ivar database: returns the node's L{conpaassql.agent.db.Database}
        (raising L{WrongState} when the server is not running).
    @ivar server: the node's L{conpaassql.agent.mysqld.ServerControl}.
    """

    database: Callable[[], Any]
    server: Any
    reactor: Any
    maxConcurrent: int = 2
    active: int = 0
    served: int = 0
    #: The running dumps, for status and tests.
    dumps: list[Any] = field(default_factory=list)

    def dialect(self) -> Dialect:
        return Dialect.fromVersion(self.server.version, self.server.flavor)


async def accountStatements(db: Any, mariadb: bool) -> tuple[list[bytes], list[bytes]]:
    """
    SQL that recreates the master's user accounts (and MariaDB roles) on a
    slave: every account but the system ones (root, mariadb.sys, ...).

    @return: the statements creating them (each dropped first if it
        exists, created with its password hash), to run before the data,
        and their grants, to run after it (a grant on a table needs the
        table).
    """
    out: list[bytes] = []
    grants: list[bytes] = []
    if mariadb:
        # MariaDB's roles: created first, since users' grants name them.
        for (role,) in await db.query(
            "SELECT User FROM mysql.user WHERE is_role = 'Y' ORDER BY User"
        ):
            if role in PROTECTED_USERS:
                continue
            (quoted,) = (await db.query("SELECT QUOTE(%s)", (role,)))[0]
            out.append(f"DROP ROLE IF EXISTS {quoted};\nCREATE ROLE {quoted};\n".encode())
            grants += [f"{g};\n".encode() for (g,) in
                       await db.query("SHOW GRANTS FOR %s", (role,))]
    where = " AND is_role <> 'Y'" if mariadb else ""
    rows = await db.query(
        f"SELECT User, Host FROM mysql.user WHERE User <> ''{where} ORDER BY User, Host"
    )
    for user, host in rows:
        if user in PROTECTED_USERS:
            continue
        created = await db.query("SHOW CREATE USER %s@%s", (user, host))
        account = (await db.query("SELECT QUOTE(%s), QUOTE(%s)", (user, host)))[0]
        out.append(f"DROP USER IF EXISTS {account[0]}@{account[1]};\n".encode())
        out.append(f"{created[0][0]};\n".encode())
        grants += [f"{g};\n".encode() for (g,) in
                   await db.query("SHOW GRANTS FOR %s@%s", (user, host))]
    return out, grants


@implementer(IPushProducer)
class _DumpToRequest(ChildProtocol):
    """
    The dump program, its standard output written to an HTTP request, the
    request's backpressure pausing the program.
    """

    def __init__(self, request: server.Request, source: SnapshotSource) -> None:
        super().__init__()
        self.request = request
        self.source = source
        self.bytes = 0
        self.clientGone = False
        self.paused = False
        self.reader: _PipeReader | None = None
        self.head = bytearray()
        self.tail = b""
        self.pending = bytearray()
        self._flushCall: Any = None

    def spawn(self, argv: list[str], env: dict[str, str]) -> None:
        """Run the dump, its standard output on a pipe of our own (see L{_PipeReader})."""
        readEnd, writeEnd = os.pipe()
        _growPipe(readEnd)
        self.reader = _PipeReader(self.source.reactor, readEnd, self.dumpData)
        try:
            self.source.reactor.spawnProcess(self, argv[0], argv, env=env,
                                             childFDs={0: "w", 1: writeEnd, 2: "r"})
        except BaseException:
            self.reader.close()
            raise
        finally:
            os.close(writeEnd)
        self.transport.closeStdin()
        if not self.paused:
            self.reader.startReading()

    # IPushProducer, for the request.

    def pauseProducing(self) -> None:
        self.paused = True
        if self.reader is not None:
            self.reader.stopReading()

    def resumeProducing(self) -> None:
        self.paused = False
        if self.reader is not None and not self.reader.disconnected:
            self.reader.startReading()

    def stopProducing(self) -> None:
        self.clientGone = True
        if self.transport is not None and self.transport.pid is not None:
            try:
                self.transport.signalProcess("KILL")
            except ierror.ProcessExitedAlready:
                pass
        if self.reader is not None:
            self.reader.close()

    def dumpData(self, data: bytes) -> None:
        if self.clientGone:
            return
        self.bytes += len(data)
        if len(self.head) < _HEAD:
            self.head += data[: _HEAD - len(self.head)]
        self.tail = data[-_KEEP:] if len(data) >= _KEEP else (self.tail + data)[-_KEEP:]
        # The dump writes in small pieces: send them in blocks (one HTTP
        # chunk, one wake-up of the slave each), at least every FLUSH_DELAY.
        self.pending += data
        if len(self.pending) >= BLOCK:
            self.flush()
        elif self._flushCall is None:
            self._flushCall = self.source.reactor.callLater(FLUSH_DELAY, self.flush)

    def flush(self) -> None:
        """Send what is pending."""
        if self._flushCall is not None:
            if self._flushCall.active():
                self._flushCall.cancel()
            self._flushCall = None
        if self.pending and not self.clientGone:
            self.request.write(bytes(self.pending))
        self.pending.clear()


#: Bytes read from the dump's pipe at a time (Twisted's process pipes read 8 KB).
READ_SIZE = 1 << 20
#: The dump's output is sent in blocks of this size, or after FLUSH_DELAY.
BLOCK = 256 * 1024
FLUSH_DELAY = 0.01
_F_SETPIPE_SZ = 1031


def _growPipe(fd: int, size: int = READ_SIZE) -> None:
    """Let a pipe hold C{size} bytes (Linux), so fewer, larger reads and writes."""
    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, size)
    except OSError:
        pass


def _bulk(transport: Any, readSize: int = READ_SIZE) -> None:
    """
    Set a transport up for a bulk transfer: sends of L{READ_SIZE} and
    reads of C{readSize} (Twisted's defaults, 128 KB sends and 64 KB reads,
    cost many more wake-ups of the agent), its producer paused past twice
    that.  Wrappers
    (a L{ProtocolWrapper}, the HTTP client's body transport proxy) are
    looked through.
    """
    for _ in range(4):
        if isinstance(transport, abstract.FileDescriptor):
            transport.SEND_LIMIT = READ_SIZE
            transport.bufferSize = 2 * readSize
            return
        transport = getattr(transport, "transport", None) or getattr(transport, "_producer", None)


class _PipeReader(abstract.FileDescriptor):
    """
    The read end of a child's output pipe, read in blocks of L{READ_SIZE}.
    C{done} fires at end of file (or when closed).
    """

    def __init__(self, reactor: Any, fd: int, dataReceived: Callable[[bytes], None]) -> None:
        super().__init__(reactor)
        self._fd = fd
        fdesc.setNonBlocking(fd)
        self._dataReceived = dataReceived
        self.done: Deferred[None] = Deferred()

    def fileno(self) -> int:
        return self._fd

    def doRead(self) -> Any:
        try:
            data = os.read(self._fd, READ_SIZE)
        except BlockingIOError:
            return None
        except InterruptedError:
            return None
        except OSError:
            return main.CONNECTION_LOST
        if not data:
            return main.CONNECTION_DONE
        self._dataReceived(data)
        return None

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        try:
            os.close(self._fd)
        except OSError:
            pass
        if not self.done.called:
            self.done.callback(None)

    def close(self) -> None:
        """Stop reading now (the other end may never close)."""
        if not self.disconnected:
            self.stopReading()
            self.connectionLost(Failure(ierror.ConnectionDone()))


class SnapshotResource(resource.Resource):
    """
    C{GET /snapshot[?databases=a,b]}: the snapshot stream (see the module
    docstring).  Errors before the stream starts are JSON error replies
    with the API's codes (401, 409 for a server not running or not
    logging binary logs, ...).
    """

    isLeaf = True

    def __init__(self, source: SnapshotSource, auth: TokenAuth) -> None:
        super().__init__()
        self.source = source
        self.auth = auth

    def render(self, request: server.Request) -> int | bytes:
        refused = refusal(request, self.auth, (b"GET",))
        if refused is not None:
            return refused
        d = Deferred.fromCoroutine(self._serve(request))
        d.addErrback(self._failed, request)
        return NOT_DONE_YET

    def _fail(self, request: server.Request, error: RPCError) -> bytes:
        request.setResponseCode(error.httpStatus if error.httpStatus != 200 else 409)
        request.setHeader(b"content-type", b"application/json")
        return _errorBody(error)

    def _failed(self, failure: Failure, request: server.Request) -> None:
        if request.finished or request._disconnected:
            return
        if request.startedWriting:
            log.failure("snapshot stream failed", failure)
            _abort(request)
            return
        if failure.check(RPCError):
            error: RPCError = failure.value
        else:
            log.failure("snapshot failed", failure)
            error = OperationFailed("the snapshot failed; see the master agent's log")
        request.write(self._fail(request, error))
        request.finish()

    async def _serve(self, request: server.Request) -> None:
        source = self.source
        databases = None
        raw = request.args.get(b"databases") if request.args else None
        if raw:
            databases = [d for d in raw[0].decode("utf-8", "replace").split(",") if d]
            for name in databases:
                if not re.fullmatch(DATABASE, name) or name.lower() in SYSTEM_SCHEMAS:
                    raise WrongState(f"not a database that can be copied: {name[:64]!r}")
        db = source.database()
        logBin = (await db.query("SELECT @@GLOBAL.log_bin"))[0][0]
        if not int(logBin):
            raise WrongState(
                "this server writes no binary log, so a snapshot has no replication "
                "position; call set_up_replica_master first"
            )
        if source.active >= source.maxConcurrent:
            raise Conflict(f"{source.active} snapshots are already being taken; try later")
        dump = source.server.dump_binary
        if not dump:
            raise OperationFailed("no mariadb-dump/mysqldump program on this node")
        source.active += 1
        try:
            await self._stream(request, db, dump, databases)
        finally:
            source.active -= 1

    async def _stream(
        self, request: server.Request, db: Any, dump: str, databases: list[str] | None
    ) -> None:
        source = self.source
        dialect = source.dialect()
        argv = [dump, f"--defaults-file={source.server.client_defaults_file}",
                *dialect.dumpOptions()]
        if databases:
            argv += ["--databases", *databases]
        else:
            argv += ["--all-databases",
                     *(f"--ignore-database={s}" for s in sorted(SYSTEM_SCHEMAS))]
        accounts, grants = await accountStatements(db, dialect.mariadb)
        _bulk(request.channel.transport)
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"application/sql")
        request.setHeader(b"cache-control", b"no-store")
        header = b"-- conpaassql snapshot: accounts, then the dump\n" + b"".join(accounts)
        request.write(header)
        proto = _DumpToRequest(request, source)
        proto.bytes = len(header)
        request.registerProducer(proto, True)
        request.notifyFinish().addErrback(lambda _: proto.stopProducing())
        started = time.monotonic()
        log.info("snapshot for {peer} started",
                 peer=getattr(request.getClientAddress(), "host", "?"))
        proto.spawn(argv, source.server.child_environment())
        source.dumps.append(proto)
        try:
            code = await proto.ended
            assert proto.reader is not None
            await proto.reader.done
        finally:
            source.dumps.remove(proto)
            proto.flush()
        if request._disconnected or proto.clientGone:
            log.info("snapshot client went away after {n} bytes; dump stopped", n=proto.bytes)
            return
        request.unregisterProducer()
        if code != 0:
            text = proto.stderr.decode("utf-8", "replace").strip()[-500:]
            log.error("snapshot dump failed ({code}): {text}", code=code, text=text)
            # Say why, then end the connection without the body's last
            # chunk: the slave sees an incomplete stream, and the reason.
            reason = " ".join(text.splitlines()[-1:])[:300] or f"exit status {code}"
            request.write(FAILED + reason.encode("utf-8", "replace") + b"\n")
            _close(request)
            return
        coordinates = dumpCoordinates(bytes(proto.head), proto.tail)
        tail = b"-- conpaassql snapshot: grants\n" + b"".join(grants)
        request.write(tail)
        request.write(trailer(proto.bytes + len(tail), coordinates))
        request.finish()
        source.served += 1
        log.info("snapshot of {n} bytes served in {s:.1f} s", n=proto.bytes,
                 s=time.monotonic() - started)


# -- the slave side


@dataclass
class SeedResult:
    bytes: int = 0
    #: The master's reason when its dump failed part way.
    failure: str | None = None
    gtid: str | None = None
    logFile: str | None = None
    logPos: int | None = None


def dumpCoordinates(head: bytes, tail: bytes) -> SeedResult:
    """
    Read the replication coordinates a dump writes as comments: the binary
    log file and position and the GTID position.
    """
    result = SeedResult()
    for text in (head, tail):
        for pattern in _GTID_LINES:
            for match in pattern.finditer(text):
                result.gtid = match.group(1).decode("ascii", "replace").replace("\n", "")
        for match in _BINLOG_LINE.finditer(text):
            result.logFile = match.group(1).decode("utf-8", "replace")
            result.logPos = int(match.group(2))
    return result


def trailer(size: int, coordinates: SeedResult) -> bytes:
    """The stream's last line: its size before this line, and the coordinates."""
    gtid = coordinates.gtid if coordinates.gtid is not None else "?"
    logFile = coordinates.logFile or ""
    logPos = "" if coordinates.logPos is None else str(coordinates.logPos)
    return (TRAILER + f"{size} bytes; gtid='{gtid}'; binlog='{logFile}':{logPos}\n".encode())


class _Scanner:
    """
    Keeps the end of the stream, where the master's trailer (completeness
    and coordinates) or its failure line is; nothing else is looked at.
    """

    def __init__(self, result: SeedResult) -> None:
        self.result = result
        self._tail = b""

    def feed(self, data: bytes) -> None:
        self._tail = data[-_KEEP:] if len(data) >= _KEEP else (self._tail + data)[-_KEEP:]

    def finish(self) -> bool:
        """
        Read the end: the master's failure reason, or the trailer's
        coordinates.

        @return: whether the stream ended with the trailer, sizes matching.
        """
        for failed in _FAILED_LINE.finditer(self._tail):
            self.result.failure = failed.group(1).decode("utf-8", "replace")
        match = _TRAILER_LINE.search(self._tail)
        if not match:
            return False
        size, gtid, logFile, logPos = match.groups()
        if gtid != b"?":
            self.result.gtid = gtid.decode("ascii")
        self.result.logFile = logFile.decode("utf-8", "replace") or None
        self.result.logPos = int(logPos) if logPos else None
        trailerLength = len(match.group(0)) - 1  # without the newline before it
        return int(size) == self.result.bytes - trailerLength


@implementer(IPushProducer)
class _BodyToClient(Protocol):
    """
    An HTTP response body fed to a client process's stdin; the process's
    pipe pauses and resumes the HTTP transport.
    """

    transport: Any

    def __init__(self, client: _LoaderProtocol, scanner: _Scanner, result: SeedResult,
                 gate: Callable[[int], Awaitable[None] | None] | None) -> None:
        self.client = client
        self.scanner = scanner
        self.result = result
        self.done: Deferred[None] = Deferred()
        self.http: Any = None
        self.gate = gate
        self._pausedByPipe = False
        self.pipeLost = False

    def makeConnection(self, transport: Any) -> None:
        self.http = transport
        # Socket reads allocate their whole size each time: 256 KB, not 1 MB.
        _bulk(transport, 128 * 1024)
        self.connectionMade()

    # IPushProducer, for the client's stdin pipe.

    def pauseProducing(self) -> None:
        self._pausedByPipe = True
        self.http.pauseProducing()

    def resumeProducing(self) -> None:
        self._pausedByPipe = False
        self.http.resumeProducing()

    def stopProducing(self) -> None:
        # The client's stdin is gone: it exited (its status tells why).
        self.pipeLost = True
        self.http.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        self.result.bytes += len(data)
        self.scanner.feed(data)
        if self.client.transport is not None and not self.client.ended.called:
            self.client.transport.write(data)
        if self.gate is not None:
            waiting = self.gate(self.result.bytes)
            if waiting is not None:
                self.http.pauseProducing()
                Deferred.fromCoroutine(_await(waiting)).addBoth(self._gateOpen)

    def _gateOpen(self, _: Any) -> None:
        if not self._pausedByPipe and not self.done.called:
            self.http.resumeProducing()

    def connectionLost(self, reason: Failure = ResponseDone) -> None:  # type: ignore[assignment]
        if reason.check(ResponseDone):
            self.done.callback(None)
        else:
            self.done.errback(reason)


async def _await(awaitable: Awaitable[None]) -> None:
    await awaitable


class _LoaderProtocol(ChildProtocol):
    def kill(self) -> None:
        if self.transport is not None and not self.ended.called:
            try:
                self.transport.signalProcess(signal.SIGKILL)
            except ierror.ProcessExitedAlready:
                pass


async def _errorMessage(response: Any) -> str:
    text = (await response.content())[:16384].decode("utf-8", "replace")
    try:
        error = json.loads(text)["error"]
        return f"{error['message']} (code {error['code']})"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.code}: {text[:300]}"


async def streamSnapshot(
    reactor: Any,
    client: HTTPClient,
    url: str,
    token: str,
    argv: list[str],
    env: dict[str, str],
    result: SeedResult,
    *,
    databases: list[str] | None = None,
    connectTimeout: float = 30.0,
    idleTimeout: float = 300.0,
    gate: Callable[[int], Awaitable[None] | None] | None = None,
) -> SeedResult:
    """
    Load the master agent's snapshot (C{url} + C{snapshot}) through the
    local client C{argv}.  C{result.bytes} grows as bytes arrive.

    @param gate: called with the byte count after each chunk; if it returns
        an awaitable, the transfer pauses until it is done (for tests).
    @return: a Deferred firing with C{result}, coordinates filled in.
    @raise OperationFailed: the master refused, the transfer broke, the
        stream was incomplete or the client failed (with the dump's line).
    @raise Timeout: no answer within C{connectTimeout}, or no data for
        C{idleTimeout} seconds while not paused.
    """
    target = (url if url.endswith("/") else url + "/") + "snapshot"
    if databases:
        target += "?" + urlencode({"databases": ",".join(databases)})
    try:
        response = await client.get(
            target,
            headers=Headers({b"Authorization": [f"Bearer {token}".encode()]}),
            unbuffered=True,
            timeout=connectTimeout,
        )
    except Exception as e:  # noqa: BLE001 - every transport error is reported the same way
        raise OperationFailed(f"cannot reach the master agent at {url}: {_describe(e)}") from None
    if response.code != http.OK:
        message = await _errorMessage(response)
        raise OperationFailed(f"the master agent refused the snapshot: {message}")

    loader = _LoaderProtocol()
    scanner = _Scanner(result)
    body = _BodyToClient(loader, scanner, result, gate)
    reactor.spawnProcess(loader, argv[0], argv, env=env)
    stdin = loader.transport.pipes[0]
    _growPipe(stdin.fileno())
    # Pause the transfer past a few blocks (not Twisted's 64 KB); the
    # default send size is kept: a larger one makes every partial write
    # copy the rest of the buffer.
    stdin.bufferSize = 4 * BLOCK
    loader.transport.registerProducer(body, True)
    idle = _IdleWatch(reactor, idleTimeout, body)
    response.deliverBody(body)
    try:
        await _firstOf(body.done, loader.ended)
    except Exception as e:  # noqa: BLE001
        if body.pipeLost:
            _raiseClient(loader, await loader.ended or -1, result)
        loader.kill()
        await loader.ended
        if idle.fired:
            raise Timeout(f"no data from the master agent for {idleTimeout:g} s") from None
        scanner.finish()
        if result.failure is not None:
            raise OperationFailed(
                f"the master's snapshot failed after {result.bytes} bytes: {result.failure}"
            ) from None
        raise OperationFailed(
            f"the snapshot transfer broke after {result.bytes} bytes: {_describe(e)}"
        ) from None
    finally:
        idle.stop()
    if loader.ended.called and not body.done.called:
        # The client ended before the stream did: it failed.
        body.http.stopProducing()
        code = await loader.ended
        _raiseClient(loader, code or -1, result)
    loader.transport.unregisterProducer()
    loader.transport.closeStdin()
    code = await loader.ended
    if code != 0:
        _raiseClient(loader, code, result)
    if not scanner.finish():
        raise OperationFailed(
            f"the snapshot stream ended after {result.bytes} bytes without the master's "
            "completion trailer; the master's dump failed (see the master agent's log)"
        )
    if result.gtid is None:
        raise OperationFailed("the snapshot carries no GTID position")
    return result


def _raiseClient(loader: _LoaderProtocol, code: int, result: SeedResult) -> None:
    message, errno, line = clientError(bytes(loader.stderr), code)
    data: dict[str, Any] = {"bytes": result.bytes}
    if errno is not None:
        data.update(errno=errno, line=line)
    raise OperationFailed(f"loading the snapshot failed: {message}", data)


def _describe(e: BaseException) -> str:
    reasons = getattr(e, "reasons", None)
    if reasons:
        return "; ".join(str(getattr(r, "value", r)) for r in reasons)
    return str(e) or type(e).__name__


async def _firstOf(*ds: Deferred[Any]) -> None:
    """Wait until one of C{ds} fires; raise if that one failed."""
    first: Deferred[None] = Deferred()

    def fired(value: Any) -> Any:
        if not first.called:
            if isinstance(value, Failure):
                first.errback(value)
            else:
                first.callback(None)
        return value

    for d in ds:
        d.addBoth(fired)
    try:
        await first
    finally:
        for d in ds:
            d.addErrback(lambda f: None)


class _IdleWatch:
    """Stops the transfer if no byte arrives for C{timeout} seconds."""

    def __init__(self, reactor: Any, timeout: float, body: _BodyToClient) -> None:
        self.reactor = reactor
        self.timeout = timeout
        self.body = body
        self.fired = False
        self.last = body.result.bytes
        self._call = reactor.callLater(timeout, self._check)

    def _check(self) -> None:
        if self.body.result.bytes == self.last and not self.body._pausedByPipe:
            self.fired = True
            self._call = None
            self.body.http.stopProducing()
            return
        self.last = self.body.result.bytes
        self._call = self.reactor.callLater(self.timeout, self._check)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None


