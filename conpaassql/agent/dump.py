"""
Loading an SQL dump through the server's own command-line client.

The dump (a byte range of the upload already on disk) is fed to the
C{mariadb}/C{mysql} client's stdin by a pull producer, so it is never held in
memory, and the client runs through C{spawnProcess} with the connection
details in a 0600 option file (no password on its command line).  The client
stops at the first failing statement and names its line; the loader reports
that, and how far it got.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import error as ierror
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPullProducer, IReactorProcess
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from conpaassql.rpc.errors import OperationFailed

log = Logger()

CHUNK = 256 * 1024
_STDERR_KEEP = 16 * 1024


@dataclass
class LoadProgress:
    """What a running (or finished) load has done so far."""

    total: int
    loaded: int = 0
    state: str = "LOADING"
    error: str | None = None
    line: int | None = None

    def toDict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "state": self.state,
            "bytes_total": self.total,
            "bytes_loaded": self.loaded,
            "percent": round(100.0 * self.loaded / self.total, 1) if self.total else 100.0,
        }
        if self.error is not None:
            d["error"] = self.error
        if self.line is not None:
            d["line"] = self.line
        return d


@implementer(IPullProducer)
class _ChunkProducer:
    def __init__(self, chunks: Iterator[bytes], consumer: Any, progress: LoadProgress,
                 done: Callable[[], None]) -> None:
        self._chunks = chunks
        self._consumer = consumer
        self._progress = progress
        self._done = done
        self._stopped = False

    def resumeProducing(self) -> None:
        if self._stopped:
            return
        chunk = next(self._chunks, None)
        if chunk is None:
            self._stopped = True
            self._done()
            return
        self._progress.loaded += len(chunk)
        self._consumer.write(chunk)

    def stopProducing(self) -> None:
        self._stopped = True


class ChildProtocol(ProcessProtocol):
    """
    A client program run to completion: its standard error's end is kept
    (C{stderr}), its standard output ignored, and C{ended} fires with its
    exit status (-1 when killed by a signal).
    """

    transport: Any

    def __init__(self) -> None:
        self.stderr = bytearray()
        self.ended: Deferred[int] = Deferred()

    def outReceived(self, data: bytes) -> None:
        pass

    def errReceived(self, data: bytes) -> None:
        self.stderr += data
        if len(self.stderr) > _STDERR_KEEP:
            del self.stderr[: len(self.stderr) - _STDERR_KEEP]

    def processEnded(self, reason: Failure) -> None:
        code = 0
        if reason.check(ierror.ProcessTerminated):
            code = reason.value.exitCode if reason.value.exitCode is not None else -1
        self.ended.callback(code)


class _ClientProtocol(ChildProtocol):
    def __init__(self, chunks: Iterator[bytes], progress: LoadProgress) -> None:
        super().__init__()
        self._chunks = chunks
        self._progress = progress

    def connectionMade(self) -> None:
        producer = _ChunkProducer(self._chunks, self.transport, self._progress, self._finish)
        self.transport.registerProducer(producer, False)

    def _finish(self) -> None:
        self.transport.unregisterProducer()
        self.transport.closeStdin()


_ERROR_LINE = re.compile(r"ERROR (\d+) \(([0-9A-Z]+)\) at line (\d+)(?: in file: '[^']*')?: (.*)")


def clientError(stderr: bytes, code: int) -> tuple[str, int | None, int | None]:
    """
    Read the client's error output.

    @return: C{(message, errno, line)}: the server's message and error
        number and the input line of the failing statement when the client
        printed them, else the end of its output (C{errno} and C{line}
        L{None}).
    """
    text = stderr.decode("utf-8", "replace").strip()
    match = None
    for line in text.splitlines():
        match = _ERROR_LINE.search(line) or match
    if match:
        errno, _sqlstate, lineNo, message = match.groups()
        return message, int(errno), int(lineNo)
    return text[-500:] or f"client exited with status {code}", None, None


async def loadDump(
    reactor: IReactorProcess,
    argv: Sequence[str],
    env: dict[str, str],
    chunks: Iterator[bytes],
    progress: LoadProgress,
) -> LoadProgress:
    """
    Run the client (C{argv}, with its option file already in it) and feed it
    C{chunks}.

    @return: a Deferred firing with C{progress} marked DONE.
    @raise OperationFailed: the client failed; C{data} carries the server's
        error number, the dump's line and the bytes fed so far.
    """
    protocol = _ClientProtocol(chunks, progress)
    reactor.spawnProcess(protocol, argv[0], list(argv), env=env)
    code = await protocol.ended
    if code == 0:
        progress.state = "DONE"
        return progress
    message, errno, lineNo = clientError(bytes(protocol.stderr), code)
    progress.state = "FAILED"
    progress.error = message
    data: dict[str, Any] = {"bytes_fed": progress.loaded, "bytes_total": progress.total}
    if lineNo is not None:
        progress.line = lineNo
        data.update(errno=errno, line=lineNo)
        raise OperationFailed(
            f"the dump failed at line {lineNo}: {message} (statements before that line "
            "were applied)",
            data,
        )
    raise OperationFailed(f"loading the dump failed: {message}", data)
