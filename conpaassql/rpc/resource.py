"""
JSON-RPC over HTTP: one URL, C{/}, for GET, POST and multipart uploads.

  - C{GET /?method=M&id=I&params=<url-encoded JSON>}
  - C{POST /} with a JSON body: one request object, or a batch (an array)
  - C{POST /} with C{multipart/form-data}: a C{method} field, optional C{id}
    and C{params} (JSON) fields, other plain fields as parameters, and file
    fields (the body is streamed to disk first and never read into memory)

Every request is authenticated with C{Authorization: Bearer <token>} before
anything else is looked at, and gets exactly one reply.
"""

from __future__ import annotations

import hmac
import io
import json
import tempfile
from collections.abc import Sequence
from typing import Any, BinaryIO
from urllib.parse import parse_qs

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.web import http, resource, server
from twisted.web.server import NOT_DONE_YET

from conpaassql.rpc.dispatch import Dispatcher, encode
from conpaassql.rpc.errors import (
    HTTPMethodNotAllowed,
    InternalError,
    InvalidRequest,
    NotFound,
    ParseError,
    RPCError,
    TooLarge,
    Unauthorized,
)
from conpaassql.rpc.multipart import parseMultipart

log = Logger()

DEFAULT_MAX_BODY = 4 * 1024 * 1024
DEFAULT_MAX_UPLOAD = 64 * 1024 * 1024 * 1024


def headerText(request: http.Request, name: str) -> str:
    """
    A request header's value, or C{""}: decoded as Latin-1, which never
    fails (C{getHeader} with a str name decodes UTF-8 and raises on a
    client's invalid bytes).
    """
    value = request.getHeader(name.encode("ascii"))
    return value.decode("latin-1") if value else ""


class TokenAuth:
    """
    Bearer-token authentication, compared in constant time.  C{hint} tells a
    refused caller where the token is to be found (never the token).
    """

    def __init__(self, tokens: Sequence[str], hint: str = "") -> None:
        self._tokens = [t.encode("utf-8") for t in tokens if t]
        if not self._tokens:
            raise ValueError("at least one API token is required")
        self.hint = hint

    def check(self, request: http.Request) -> None:
        header = request.getHeader(b"authorization")
        peer = getattr(request.getClientAddress(), "host", "?")
        how = (
            "send the header 'Authorization: Bearer <token>' with the service's API token"
            + (f" ({self.hint})" if self.hint else "")
        )
        if not header:
            log.warn("refused a request from {peer}: no Authorization header", peer=peer)
            raise Unauthorized(f"authentication required: {how}")
        scheme, _, presented = header.partition(b" ")
        if scheme.lower() != b"bearer" or not presented:
            log.warn("refused a request from {peer}: not a Bearer token", peer=peer)
            raise Unauthorized(f"unsupported Authorization scheme: {how}")
        candidate = presented.strip()
        ok = False
        for token in self._tokens:
            ok |= hmac.compare_digest(candidate, token)
        if not ok:
            log.warn("refused a request from {peer}: wrong token", peer=peer)
            raise Unauthorized(f"wrong API token: {how}")


def _isMultipart(request: http.Request) -> bool:
    ctype = headerText(request, "content-type")
    return ctype.lower().startswith("multipart/form-data")


class RPCRequest(server.Request):
    """
    A request whose body is bounded: JSON bodies by C{site.maxBody}, uploads
    by C{site.maxUpload}.  Twisted's own form parsing is off: it reads a
    multipart body whole into memory (several times over) to fill
    C{request.args}; L{RPCResource} parses the body itself, from disk.
    """

    tooLarge = False
    _body: Any = None
    _received = 0
    _limit = DEFAULT_MAX_BODY

    def gotLength(self, length: int | None) -> None:
        site = self.channel.site
        multipart = _isMultipart(self)
        self._limit = getattr(site, "maxUpload" if multipart else "maxBody", DEFAULT_MAX_BODY)
        if length is not None and length > self._limit:
            self.tooLarge = True
            self.content = tempfile.SpooledTemporaryFile(max_size=1)
            return
        if not multipart and length is not None and length <= 100_000:
            super().gotLength(length)
        else:
            self.content = tempfile.TemporaryFile(dir=getattr(site, "uploadDir", None))

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        # http.Request.requestReceived parses form bodies (whatever the Site's
        # parsePOSTFormSubmission, which older Twisted versions lack) when the
        # body is not empty: show it an empty one, and restore the real one
        # before the resource sees the request (in process()).
        self._body = self.content
        self.content = io.BytesIO()
        super().requestReceived(command, path, version)

    def process(self) -> None:
        if self._body is not None:
            self.content, self._body = self._body, None
            self.content.seek(0)
        super().process()

    def handleContentChunk(self, data: bytes) -> None:
        if self.tooLarge:
            return
        self._received += len(data)
        if self._received > self._limit:
            self.tooLarge = True
            self.content.close()
            self.content = tempfile.SpooledTemporaryFile(max_size=1)
            return
        super().handleContentChunk(data)


def _accessLogFormatter(timestamp: str, request: server.Request) -> str:
    """Access log lines without the query string, which may carry secrets."""
    path = request.uri.split(b"?", 1)[0].decode("ascii", "replace")
    peer = getattr(request.getClientAddress(), "host", "-")
    return (
        f'{peer} - - {timestamp} "{request.method.decode("ascii", "replace")} {path} '
        f'{request.clientproto.decode("ascii", "replace")}" {request.code} '
        f"{request.sentLength or '-'}"
    )


class RPCSite(server.Site):
    """
    A site whose access log lines (L{_accessLogFormatter}: each with its
    own timestamp) are written in batches, one log event a second at most:
    one event a request cost a fifth of a request's time under load
    (formatting and writing the event, in twistd's log observer).
    """

    #: Seconds an access log line may wait to be written.
    accessLogInterval = 1.0
    _accessLines: list[str] | None = None
    _accessFlush: Any = None

    def log(self, request: Any) -> None:
        formatter: Any = self._logFormatter
        line = formatter(self._logDateTime, request)
        if self._accessLines is None:
            self._accessLines = []
        self._accessLines.append(line)
        if self._accessFlush is None:
            clock: Any = self.reactor
            self._accessFlush = clock.callLater(self.accessLogInterval, self.flushAccessLog)

    def flushAccessLog(self) -> None:
        """Write the access log lines waiting (called by a timer, and on stop)."""
        if self._accessFlush is not None and self._accessFlush.active():
            self._accessFlush.cancel()
        self._accessFlush = None
        lines, self._accessLines = self._accessLines, None
        if lines:
            _accessLog.info("{lines}", lines="\n".join(lines))

    def stopFactory(self) -> None:
        self.flushAccessLog()
        super().stopFactory()


_accessLog = Logger(namespace="conpaassql.rpc.access")


def makeSite(
    root: resource.IResource,
    *,
    maxBody: int = DEFAULT_MAX_BODY,
    maxUpload: int = DEFAULT_MAX_UPLOAD,
    uploadDir: str | None = None,
) -> server.Site:
    site = RPCSite(root, logFormatter=_accessLogFormatter)
    site.requestFactory = RPCRequest
    # Off on the site too, where Twisted has the setting (Request.__init__
    # copies it); RPCRequest.requestReceived covers older versions.
    site._parsePOSTFormSubmission = False
    site.displayTracebacks = False
    site.maxBody = maxBody  # type: ignore[attr-defined]
    site.maxUpload = maxUpload  # type: ignore[attr-defined]
    site.uploadDir = uploadDir  # type: ignore[attr-defined]
    return site


class ConnectionTracker(WrappingFactory):
    """
    Wraps a server factory (a L{makeSite} site) to know its open
    connections, so that a service can close them when it stops: stopping
    to listen leaves accepted connections (idle keep-alive ones included)
    open, with the HTTP channel's timeout pending.

    Listen on the tracker instead of the site::

        tracker = ConnectionTracker(site)
        port = await endpoint.listen(tracker)
        ...
        await port.stopListening()
        await tracker.closeConnections(reactor)
    """

    def __init__(self, wrappedFactory: Any) -> None:
        super().__init__(wrappedFactory)
        self._lost: dict[ProtocolWrapper, Deferred[None]] = {}

    def registerProtocol(self, p: ProtocolWrapper) -> None:
        super().registerProtocol(p)
        self._lost[p] = Deferred()

    def unregisterProtocol(self, p: ProtocolWrapper) -> None:
        super().unregisterProtocol(p)
        lost = self._lost.pop(p, None)
        if lost is not None:
            lost.callback(None)

    def closeConnections(self, reactor: Any, grace: float = 5.0) -> Deferred[None]:
        """
        Close every open connection: pending output is flushed first, and a
        connection still open after C{grace} seconds is aborted.

        @return: a Deferred firing with L{None} once every connection is
            gone.  It does not fail.
        """
        waiting = list(self._lost.values())
        for p in list(self._lost):
            if p.transport is not None:
                p.transport.loseConnection()

        def abort() -> None:
            for p in list(self._lost):
                if p.transport is not None:
                    p.transport.abortConnection()  # type: ignore[attr-defined]

        timer = reactor.callLater(grace, abort) if waiting else None
        d: Deferred[Any] = DeferredList(waiting)

        def done(_: Any) -> None:
            if timer is not None and timer.active():
                timer.cancel()

        d.addCallback(done)
        return d


def _arg(request: http.Request, name: bytes) -> str | None:
    values = request.args.get(name) if request.args else None
    if not values:
        return None
    return values[0].decode("utf-8", "replace")


def _requestFromFields(fields: dict[str, str]) -> dict[str, Any]:
    """A request object from GET query or form fields."""
    fields = dict(fields)
    obj: dict[str, Any] = {}
    if "method" in fields:
        obj["method"] = fields.pop("method")
    if "jsonrpc" in fields:
        obj["jsonrpc"] = fields.pop("jsonrpc")
    if "id" in fields:
        obj["id"] = fields.pop("id")
    params: Any = None
    if "params" in fields:
        text = fields.pop("params")
        try:
            params = json.loads(text)
        except RecursionError:
            raise ParseError("'params' nests too deeply", {"param": "params"}) from None
        except ValueError as e:
            raise ParseError(f"'params' is not valid JSON: {e}", {"param": "params"}) from None
    if fields:
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise InvalidRequest("named fields cannot be mixed with positional 'params'")
        for key, value in fields.items():
            params.setdefault(key, value)
    if params is not None:
        obj["params"] = params
    return obj


class RPCResource(resource.Resource):
    """
    The JSON-RPC endpoint.  Serve it at the root of a L{makeSite} site (or as
    the C{b""} child of a root with other children such as C{ui}).
    """

    isLeaf = True

    def __init__(self, dispatcher: Dispatcher, auth: TokenAuth) -> None:
        super().__init__()
        self.dispatcher = dispatcher
        self.auth = auth

    def render(self, request: server.Request) -> int | bytes:
        try:
            return self._render(request)
        except Exception:
            error = self.dispatcher._internal(Failure())
            return self._fail(request, error, status=500)

    def _render(self, request: server.Request) -> int | bytes:
        if request.postpath not in ([], [b""]):
            return self._fail(
                request, NotFound("no such resource; JSON-RPC is served at '/'"), status=404
            )
        if request.method not in (b"GET", b"POST", b"HEAD"):
            request.setHeader(b"allow", b"GET, POST")
            return self._fail(
                request,
                HTTPMethodNotAllowed(
                    "use GET with ?method=...&params=... or POST with a JSON-RPC body"
                ),
            )
        try:
            self.auth.check(request)
        except Unauthorized as e:
            request.setHeader(b"www-authenticate", b'Bearer realm="conpaassql"')
            return self._fail(request, e)
        if getattr(request, "tooLarge", False):
            limit = getattr(request, "_limit", DEFAULT_MAX_BODY)
            return self._fail(
                request, TooLarge(f"request body larger than the limit of {limit} bytes")
            )
        d = Deferred.fromCoroutine(self._answer(request))
        d.addErrback(self._unexpected, request)
        d.addCallback(self._write, request)
        return NOT_DONE_YET

    async def _answer(self, request: server.Request) -> tuple[int, bytes | None]:
        uploads = None
        fields: dict[str, str] | None = None
        if request.method in (b"GET", b"HEAD"):
            fields = {
                k.decode("utf-8", "replace"): v[0].decode("utf-8", "replace")
                for k, v in (request.args or {}).items()
                if v
            }
            if not fields:
                return 200, encode(self._usage())
        elif _isMultipart(request):
            content: BinaryIO = request.content
            ctype = headerText(request, "content-type")
            formFields, uploads = await deferToThread(parseMultipart, content, ctype)
            if not self.dispatcher.isUpload(str(formFields.get("method"))) and uploads:
                uploads = None
            fields = formFields
        else:
            request.content.seek(0)
            body = request.content.read()
            fields = self._formFields(request, body)
            if fields is None:
                payload: Any = self._decodeBody(body)
        if fields is not None:
            try:
                payload = _requestFromFields(fields)
            except RPCError as e:
                # The id and envelope are known even when 'params' is not JSON.
                return 200, self.dispatcher.errorReply(e, fields)
        reply = await self.dispatcher.answer(payload, uploads)
        if reply is None:
            return 204, None
        return 200, reply

    def _formFields(self, request: server.Request, body: bytes) -> dict[str, str] | None:
        """The fields of a form-urlencoded body, or None for a JSON body."""
        ctype = headerText(request, "content-type").lower()
        if not ctype.startswith("application/x-www-form-urlencoded") or body.lstrip()[:1] in (
            b"{",
            b"[",
        ):
            return None
        try:
            form = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise ParseError("request body is not valid UTF-8") from None
        return {k: v[0] for k, v in form.items() if v}

    def _decodeBody(self, body: bytes) -> Any:
        stripped = body.lstrip()
        if not stripped:
            raise InvalidRequest(
                "empty request body; send a JSON-RPC object such as "
                '{"method": "list_methods", "params": {}, "id": 1}'
            )
        try:
            return json.loads(body.decode("utf-8"))
        except UnicodeDecodeError:
            raise ParseError("request body is not valid UTF-8") from None
        except RecursionError:
            raise ParseError("request body nests too deeply") from None
        except ValueError as e:
            raise ParseError(f"request body is not valid JSON: {e}") from None

    def _usage(self) -> dict[str, Any]:
        return {
            "result": None,
            "error": {
                "code": InvalidRequest.code,
                "message": "JSON-RPC endpoint: GET /?method=M&id=1&params=<JSON> or POST a "
                "JSON-RPC request; call list_methods for the methods",
            },
            "id": None,
        }

    def _unexpected(self, failure: Failure, request: server.Request) -> tuple[int, bytes]:
        if failure.check(RPCError):
            error: RPCError = failure.value
        else:
            error = self.dispatcher._internal(failure)
        status = error.httpStatus if error.httpStatus != 200 else 200
        return status, encode({"result": None, "error": error.toDict(), "id": None})

    def _write(self, answer: tuple[int, bytes | None], request: server.Request) -> None:
        status, body = answer
        if request._disconnected or request.finished:
            return
        request.setResponseCode(status)
        if body is not None:
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"cache-control", b"no-store")
            request.setHeader(b"content-length", str(len(body)).encode("ascii"))
            request.write(body)
        request.finish()

    def _fail(self, request: server.Request, error: RPCError, status: int | None = None) -> bytes:
        return errorReply(request, error, status)


def errorReply(request: server.Request, error: RPCError, status: int | None = None) -> bytes:
    """Set up C{request} for C{error}'s HTTP status and return its JSON body."""
    request.setResponseCode(status or error.httpStatus)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    if isinstance(error, Unauthorized):
        request.setHeader(b"www-authenticate", b'Bearer realm="conpaassql"')
    return encode({"result": None, "error": error.toDict(), "id": None})


def refusal(
    request: server.Request, auth: TokenAuth, methods: Sequence[bytes] = (b"GET", b"HEAD")
) -> bytes | None:
    """
    For resources beside the JSON-RPC one (the agent's C{/snapshot}, the
    manager's C{/metrics}): the JSON error body refusing C{request} (an HTTP
    method other than C{methods}: 405; no or a wrong token: 401), or
    L{None} if it may go on.
    """
    if request.method not in methods:
        request.setHeader(b"allow", b", ".join(methods))
        allowed = ", ".join(m.decode("ascii") for m in methods)
        return errorReply(request, HTTPMethodNotAllowed(f"use {allowed}"))
    try:
        auth.check(request)
    except Unauthorized as e:
        return errorReply(request, e)
    return None


class RPCRoot(resource.Resource):
    """
    A service's URL space: named children (such as the agent's
    C{/snapshot}) and, for everything else, the JSON-RPC resource (which
    answers unknown paths with its own JSON 404).
    """

    def __init__(self, rpc: Any, children: dict[bytes, Any]) -> None:
        super().__init__()
        self.rpc = rpc
        for name, child in children.items():
            self.putChild(name, child)

    def getChild(self, path: bytes, request: Any) -> Any:
        # Give the path segment back: the RPC resource checks it is "/".
        request.postpath.insert(0, path)
        request.prepath.pop()
        return self.rpc


__all__ = [
    "ConnectionTracker",
    "InternalError",
    "RPCRequest",
    "RPCResource",
    "RPCRoot",
    "RPCSite",
    "TokenAuth",
    "errorReply",
    "headerText",
    "refusal",
    "makeSite",
]
