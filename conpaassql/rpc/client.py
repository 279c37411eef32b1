"""
The calling side of the wire protocol, for the manager (calling agents) and
the command-line client (calling the manager).

One L{RPCClient} per remote service: it owns a persistent
C{HTTPConnectionPool}, sends JSON-RPC 2.0 requests with the bearer token, and
gives every call a timeout.  Error replies are raised as the matching
L{conpaassql.rpc.errors.RPCError} subclass (through L{errors.fromWire}), and
everything that is not a JSON-RPC reply as L{TransportError}.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Mapping
from typing import IO, Any

import treq
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectError, ConnectingCancelledError, TimeoutError
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, ResponseFailed
from twisted.web.iweb import IBodyProducer

from conpaassql.rpc.errors import TransportError, fromWire

DEFAULT_TIMEOUT = 30.0
#: Bytes read from an uploaded file at a time.
UPLOAD_READ_SIZE = 256 * 1024


class _CountingFile:
    """A file wrapper that reports how many bytes have been read from it."""

    def __init__(self, f: IO[bytes], progress: Callable[[int, int], None]) -> None:
        self._f = f
        self._progress = progress
        f.seek(0, os.SEEK_END)
        self._total = f.tell()
        f.seek(0)
        self._done = 0

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._done += len(data)
        self._progress(self._done, self._total)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def close(self) -> None:
        self._f.close()


class RPCClient:
    """
    @param url: the service's URL, e.g. C{http://127.0.0.1:60000/}.
    @param token: the service's API token, or L{None} to send none.
    """

    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        reactor: Any = None,
        httpClient: HTTPClient | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        connectTimeout: float = 10.0,
        persistent: bool = True,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.url = url if url.endswith("/") else url + "/"
        self._token = token
        self._reactor = reactor
        self.timeout = timeout
        self._pool: HTTPConnectionPool | None = None
        if httpClient is None:
            self._pool = HTTPConnectionPool(reactor, persistent=persistent)
            self._pool.maxPersistentPerHost = 4
            self._pool.retryAutomatically = False
            httpClient = HTTPClient(
                Agent(reactor, pool=self._pool, connectTimeout=connectTimeout)
            )
        self._http = httpClient
        self._ids = itertools.count(1)

    def _headers(self) -> dict[bytes, list[bytes]]:
        headers = {b"accept": [b"application/json"]}
        if self._token:
            headers[b"authorization"] = [b"Bearer " + self._token.encode("utf-8")]
        return headers

    async def call(
        self, method: str, params: Mapping[str, Any] | list[Any] | None = None,
        *, timeout: float | None = None,
    ) -> Any:
        """
        Call C{method} and return its result.

        @raise RPCError: (a subclass matching the code) on an error reply.
        @raise TransportError: on no reply, a timeout, or a non-JSON-RPC reply.
        """
        body = json.dumps(
            {"jsonrpc": "2.0", "method": method, "params": params or {}, "id": next(self._ids)}
        ).encode("utf-8")
        headers = self._headers()
        headers[b"content-type"] = [b"application/json"]
        return await self._request(
            lambda: self._http.post(
                self.url, data=body, headers=headers, timeout=timeout or self.timeout,
                reactor=self._reactor,
            ),
            method,
        )

    async def upload(
        self,
        method: str,
        params: Mapping[str, str],
        files: Mapping[str, tuple[str, IO[bytes]]],
        *,
        progress: Callable[[int, int], None] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """
        Call an upload method with multipart/form-data: C{params} as plain
        fields, C{files} as C{{field: (filename, open binary file)}} streamed
        from disk (or an C{IBodyProducer} of known length, sent as it is).
        C{progress(sent, total)} is called as a file's bytes go out.  The timeout (default: none beyond the connection's) covers the whole
        upload and the reply.
        """
        data = {"method": method, "jsonrpc": "2.0", "id": str(next(self._ids))}
        if params:
            data["params"] = json.dumps(dict(params))
        parts: dict[str, Any] = {}
        for field, (filename, f) in files.items():
            producer: Any = f
            if not IBodyProducer.providedBy(f):
                # An explicit producer: treq adapts only some file types
                # itself (not, e.g., a file opened "r+b"), 64 KiB at a time.
                wrapped: Any = _CountingFile(f, progress) if progress else f
                producer = FileBodyProducer(wrapped, readSize=UPLOAD_READ_SIZE)
            parts[field] = (filename, "application/octet-stream", producer)
        return await self._request(
            lambda: self._http.post(
                self.url, data=data, files=parts, headers=self._headers(), timeout=timeout,
                reactor=self._reactor,
            ),
            method,
        )

    async def _request(self, send: Callable[[], Deferred[Any]], method: str) -> Any:
        try:
            response = await send()
            raw = await treq.content(response)
        except (CancelledError, TimeoutError):
            raise TransportError(f"{method}: no reply from {self.url} in time") from None
        except (ConnectError, ConnectingCancelledError) as e:
            raise TransportError(f"{method}: cannot connect to {self.url}: {e}") from None
        except ResponseFailed as e:
            # treq's timeout cancels the request; once it is sent, the
            # cancellation comes back wrapped in ResponseFailed.
            if any(r.check(CancelledError, TimeoutError) for r in e.reasons):
                raise TransportError(f"{method}: no reply from {self.url} in time") from None
            raise TransportError(f"{method}: connection to {self.url} failed: {e}") from None
        if response.code == 204:
            return None
        try:
            reply = json.loads(raw)
        except ValueError:
            raise TransportError(
                f"{method}: {self.url} answered HTTP {response.code} without JSON"
            ) from None
        if not isinstance(reply, dict):
            raise TransportError(f"{method}: {self.url} sent a reply that is not an object")
        if reply.get("error") is not None:
            raise fromWire(reply["error"])
        if "result" not in reply:
            raise TransportError(f"{method}: {self.url} sent neither result nor error")
        return reply["result"]

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.closeCachedConnections()
