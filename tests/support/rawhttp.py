"""
Raw HTTP/1.1 exchanges for fuzzing a real server: bytes exactly as written
(invalid UTF-8, bodies cut short, lying Content-Length), over a blocking
socket in a thread (never on the reactor), with a bound on the wait.

L{exchange} asserts the HTTP framing the fuzz tests rely on: exactly one
reply per request, complete, and nothing after it.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.threads import deferToThread

#: Seconds a request may take to be answered (generous: a shared machine).
BOUND = 60.0


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))


class NoReply(AssertionError):
    """The server closed the connection (or timed out) without a reply."""


def hostPort(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def request(method: str, target: str | bytes, headers: dict[str, str | bytes] | None = None,
            body: bytes = b"", *, contentLength: int | None = None,
            host: str = "127.0.0.1") -> bytes:
    """The bytes of one request; C{Connection: close} so the reply ends the stream."""
    if isinstance(target, str):
        target = target.encode("utf-8")
    lines = [method.encode("ascii") + b" " + target + b" HTTP/1.1", b"Host: " + host.encode()]
    allHeaders: dict[str, str | bytes] = {"Connection": "close"}
    allHeaders.update(headers or {})
    if body or contentLength is not None or method in ("POST", "PUT"):
        allHeaders.setdefault("Content-Length",
                              str(len(body) if contentLength is None else contentLength))
    for name, value in allHeaders.items():
        raw = value if isinstance(value, bytes) else value.encode("utf-8")
        lines.append(name.encode("ascii") + b": " + raw)
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _parse(data: bytes, head: bool) -> tuple[Reply, bytes]:
    if b"\r\n\r\n" not in data:
        raise NoReply(f"no complete reply head; got {data[:200]!r}")
    headText, rest = data.split(b"\r\n\r\n", 1)
    lines = headText.decode("iso-8859-1").split("\r\n")
    version, status = lines[0].split(" ", 2)[:2]
    assert version.startswith("HTTP/1."), lines[0]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    code = int(status)
    if head or code in (204, 304):
        return Reply(code, headers, b""), rest
    if "content-length" in headers:
        length = int(headers["content-length"])
        if len(rest) < length:
            raise NoReply(f"reply body cut short: {len(rest)} of {length} bytes")
        return Reply(code, headers, rest[:length]), rest[length:]
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            sizeLine, rest = rest.split(b"\r\n", 1)
            size = int(sizeLine.split(b";")[0], 16)
            if size == 0:
                rest = rest.split(b"\r\n", 1)[1] if b"\r\n" in rest else b""
                return Reply(code, headers, body), rest
            body, rest = body + rest[:size], rest[size + 2:]
    return Reply(code, headers, rest), b""


def _exchange(host: str, port: int, data: bytes, closeAfter: bool, timeout: float,
              head: bool) -> Reply | None:
    with socket.create_connection((host, port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered (and closed) before reading it all
        if closeAfter:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            except TimeoutError:
                raise NoReply(f"no reply within {timeout} s") from None
            if not chunk:
                break
            chunks.append(chunk)
    received = b"".join(chunks)
    if closeAfter and not received:
        return None
    reply, trailing = _parse(received, head)
    assert trailing == b"", f"data after the reply: {trailing[:200]!r}"
    return reply


def exchange(url: str, data: bytes, *, closeAfter: bool = False, timeout: float = BOUND,
             head: bool = False) -> Any:
    """
    Send C{data} on a new connection and read until the server closes it.

    @param closeAfter: half-close the connection after sending (a client
        that goes away mid-request); then no reply is allowed too.
    @return: a Deferred firing with the L{Reply} (or L{None} after
        C{closeAfter} when the server just closed); it fails with
        L{NoReply} when the server gives no complete reply in C{timeout}.
    """
    host, port = hostPort(url)
    return deferToThread(_exchange, host, port, data, closeAfter, timeout, head)
