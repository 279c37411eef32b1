"""
The JSON-RPC envelope and method dispatch, free of HTTP.

A service publishes methods by decorating coroutine methods with L{method};
a L{Dispatcher} collects them and turns one decoded request object (or a
batch of them) into reply bytes.  Two envelopes are spoken:

  - JSON-RPC 2.0, when the request carries C{"jsonrpc": "2.0"}: replies are
    C{{"jsonrpc": "2.0", "result": ..., "id": ...}} or C{..."error": {...}},
    notifications (no C{id}) get no reply, and batches work;
  - the original ConPaaS envelope otherwise: C{{"result": ..., "error": null,
    "id": ...}}, with the error object in C{error} on failure.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger
from twisted.python.failure import Failure

from conpaassql.rpc.errors import (
    InternalError,
    InvalidParams,
    InvalidRequest,
    MethodNotFound,
    RPCError,
)

log = Logger()

_REQUIRED: Any = object()
_T = TypeVar("_T")

#: The most requests a batch may hold.
MAX_BATCH = 100

Handler = Callable[["Params"], Awaitable[Any] | Any]


@dataclass
class Upload:
    """
    A file that arrived in a multipart upload: a byte range of the request
    body that is already on disk, so it is never copied or held in memory.
    """

    field: str
    filename: str | None
    contentType: str | None
    fd: int
    start: int
    size: int

    def read(self, offset: int, length: int) -> bytes:
        """Read up to C{length} bytes at C{offset} within this file."""
        length = max(0, min(length, self.size - offset))
        if length == 0:
            return b""
        return os.pread(self.fd, length, self.start + offset)

    def reader(self) -> UploadReader:
        """
        A read-only file over this upload (e.g. for
        C{twisted.web.client.FileBodyProducer}, to stream it on).
        """
        return UploadReader(self)

    def chunks(self, chunkSize: int = 256 * 1024) -> Iterator[bytes]:
        offset = 0
        while offset < self.size:
            chunk = self.read(offset, chunkSize)
            if not chunk:
                return
            offset += len(chunk)
            yield chunk


class UploadReader:
    """
    A read-only file over an L{Upload}'s byte range (read with C{os.pread}
    through L{Upload.read}), so a file is streamed on from the spool file
    it arrived in and never held in memory.  Each reader has its own
    position: the same upload can be sent to several places at once.
    """

    def __init__(self, upload: Upload) -> None:
        self._upload = upload
        self._offset = 0

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = self._upload.size - self._offset
        data = self._upload.read(self._offset, size)
        self._offset += len(data)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._offset, os.SEEK_END: self._upload.size}
        self._offset = max(0, base[whence] + offset)
        return self._offset

    def tell(self) -> int:
        return self._offset

    def close(self) -> None:
        pass


def _typeName(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _isUnicode(value: str) -> bool:
    """Whether C{value} is encodable text (JSON's C{"\\ud800"} decodes to a lone surrogate)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Params:
    """
    The parameters of one call, with typed accessors that raise
    L{InvalidParams} naming the parameter.

    Parameters sent as strings (GET query strings, form fields, and the
    original's C{"serviceNodeId": "12"}) are accepted where a number or a
    boolean is expected, when they spell one exactly.
    """

    def __init__(
        self,
        values: Mapping[str, Any] | None = None,
        uploads: Mapping[str, Upload] | None = None,
    ) -> None:
        self._values: dict[str, Any] = dict(values or {})
        self.uploads: dict[str, Upload] = dict(uploads or {})

    def __contains__(self, name: str) -> bool:
        return name in self._values and self._values[name] is not None

    def names(self) -> set[str]:
        return set(self._values)

    def _get(self, name: str, default: Any) -> Any:
        value = self._values.get(name)
        if value is None:
            if default is _REQUIRED:
                raise InvalidParams(f"missing parameter '{name}'", name)
            return default
        return value

    def raw(self, name: str, default: Any = _REQUIRED) -> Any:
        return self._get(name, default)

    def str(
        self,
        name: str,
        default: Any = _REQUIRED,
        *,
        pattern: str | None = None,
        maxLength: int = 4096,
        allowEmpty: bool = False,
        allowNumber: bool = False,
        what: str | None = None,
    ) -> Any:
        value = self._get(name, default)
        if value is default and default is not _REQUIRED:
            return value
        if allowNumber and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise InvalidParams(
                f"parameter '{name}' must be a string, not {_typeName(value)}", name
            )
        if not value and not allowEmpty:
            raise InvalidParams(f"parameter '{name}' must not be empty", name)
        if len(value) > maxLength:
            raise InvalidParams(
                f"parameter '{name}' is too long ({len(value)} characters; at most {maxLength})",
                name,
            )
        if "\x00" in value:
            raise InvalidParams(f"parameter '{name}' must not contain a NUL character", name)
        if not _isUnicode(value):
            raise InvalidParams(f"parameter '{name}' is not valid Unicode (a lone surrogate)",
                                name)
        if pattern is not None and not re.fullmatch(pattern, value):
            raise InvalidParams(
                f"parameter '{name}' is not {what or 'valid'}: {value[:64]!r}", name
            )
        return value

    def int(
        self,
        name: str,
        default: Any = _REQUIRED,
        *,
        min: int | None = None,
        max: int | None = None,
    ) -> Any:
        value = self._get(name, default)
        if value is default and default is not _REQUIRED:
            return value
        if isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,18}", value.strip()):
            value = int(value)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidParams(
                f"parameter '{name}' must be an integer, not {_typeName(value)}", name
            )
        if min is not None and value < min:
            raise InvalidParams(f"parameter '{name}' must be at least {min}", name)
        if max is not None and value > max:
            raise InvalidParams(f"parameter '{name}' must be at most {max}", name)
        return value

    def bool(self, name: str, default: Any = _REQUIRED) -> Any:
        value = self._get(name, default)
        if isinstance(value, bool):
            return value
        if value is default and default is not _REQUIRED:
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise InvalidParams(f"parameter '{name}' must be true or false", name)

    def strList(
        self, name: str, default: Any = _REQUIRED, *, pattern: str | None = None,
        what: str | None = None, maxItems: int = 256,
    ) -> Any:
        value = self._get(name, default)
        if value is default and default is not _REQUIRED:
            return value
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise InvalidParams(
                f"parameter '{name}' must be an array of strings, not {_typeName(value)}", name
            )
        if len(value) > maxItems:
            raise InvalidParams(f"parameter '{name}' has more than {maxItems} items", name)
        for item in value:
            if not isinstance(item, str) or not item or "\x00" in item or not _isUnicode(item):
                raise InvalidParams(f"parameter '{name}' must hold non-empty strings", name)
            if pattern is not None and not re.fullmatch(pattern, item):
                raise InvalidParams(
                    f"parameter '{name}' holds a value that is not {what or 'valid'}: "
                    f"{item[:64]!r}",
                    name,
                )
        return value

    def upload(self, name: str) -> Upload:
        if name not in self.uploads:
            raise InvalidParams(
                f"missing file '{name}': send it as a multipart/form-data file field "
                f"named '{name}'",
                name,
            )
        return self.uploads[name]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    handler: Handler
    params: tuple[str, ...]
    aliases: tuple[str, ...] = ()
    upload: bool = False
    #: Accept parameters not named in C{params} (passed through untouched).
    extraParams: bool = False
    doc: str = field(default="", compare=False)


def method(
    name: str | None = None,
    *,
    params: Sequence[str] = (),
    aliases: Sequence[str] = (),
    upload: bool = False,
    extraParams: bool = False,
) -> Callable[[_T], _T]:
    """
    Publish a (coroutine) method.  C{params} are the parameter names, in the
    order a positional (array) C{params} maps onto them; any other name is
    refused with -32602 unless C{extraParams}.
    """

    def decorate(f: Any) -> Any:
        f.__rpc__ = dict(
            name=name or f.__name__,
            params=tuple(params),
            aliases=tuple(aliases),
            upload=upload,
            extraParams=extraParams,
        )
        return f

    return decorate


def _jsonDefault(value: Any) -> Any:
    import datetime
    import decimal

    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def encode(obj: Any) -> bytes:
    return json.dumps(obj, default=_jsonDefault, separators=(",", ":")).encode("utf-8")


def _validId(value: Any) -> bool:
    return value is None or (
        isinstance(value, (str, int, float)) and not isinstance(value, bool)
    )


class Dispatcher:
    """
    The published methods of one service, and the envelope around them.
    """

    def __init__(self, *providers: object) -> None:
        self.methods: dict[str, MethodSpec] = {}
        for provider in providers:
            self.collect(provider)

    def collect(self, provider: object) -> None:
        for attr in dir(type(provider)):
            f = getattr(type(provider), attr, None)
            spec = getattr(f, "__rpc__", None)
            if spec is None:
                continue
            self.register(getattr(provider, attr), **spec)

    def register(
        self,
        handler: Handler,
        name: str,
        params: Sequence[str] = (),
        aliases: Sequence[str] = (),
        upload: bool = False,
        extraParams: bool = False,
    ) -> None:
        spec = MethodSpec(
            name=name,
            handler=handler,
            params=tuple(params),
            aliases=tuple(aliases),
            upload=upload,
            extraParams=extraParams,
            doc=(getattr(handler, "__doc__", None) or "").strip(),
        )
        for n in (name, *aliases):
            if n in self.methods:
                raise ValueError(f"method {n!r} published twice")
            self.methods[n] = spec

    def isUpload(self, name: str) -> bool:
        spec = self.methods.get(name)
        return spec is not None and spec.upload

    # The envelope.

    def handle(self, payload: Any, uploads: Mapping[str, Upload] | None = None) -> Deferred[bytes | None]:
        """
        Answer one decoded request or batch.

        @return: a Deferred firing with the reply body, or L{None} when no
            reply is due (notifications only).  It never fails.
        """
        return Deferred.fromCoroutine(self.answer(payload, uploads))

    async def answer(self, payload: Any, uploads: Mapping[str, Upload] | None = None) -> bytes | None:
        """
        L{handle} as a coroutine (the HTTP resource awaits it directly: one
        Deferred less per request on the hot path).
        """
        if not isinstance(payload, list):
            return await self._handleOne(payload, uploads)
        return await self._batch(payload)

    async def _batch(self, payload: list[Any]) -> bytes | None:
        if not payload:
            return await self._errorOnly(InvalidRequest("an empty batch is not a request"))
        if len(payload) > MAX_BATCH:
            return await self._errorOnly(
                InvalidRequest(f"a batch holds at most {MAX_BATCH} requests"))
        parts = await gatherResults([self.handleOne(item, None) for item in payload])
        if not any(p is not None for p in parts):
            return None
        return b"[" + b",".join(p for p in parts if p is not None) + b"]"

    async def _errorOnly(self, error: RPCError) -> bytes:
        return encode({"jsonrpc": "2.0", "error": error.toDict(), "id": None})

    def handleOne(self, obj: Any, uploads: Mapping[str, Upload] | None) -> Deferred[bytes | None]:
        return Deferred.fromCoroutine(self._handleOne(obj, uploads))

    async def _handleOne(self, obj: Any, uploads: Mapping[str, Upload] | None) -> bytes | None:
        v2 = isinstance(obj, dict) and obj.get("jsonrpc") == "2.0"
        requestId = obj.get("id") if isinstance(obj, dict) else None
        if not _validId(requestId):
            requestId = None
        notification = v2 and isinstance(obj, dict) and "id" not in obj
        try:
            result = await self._call(obj, uploads)
        except RPCError as e:
            error = e
        except Exception:
            error = self._internal(Failure())
        else:
            if notification:
                return None
            reply = (
                {"jsonrpc": "2.0", "result": result, "id": requestId}
                if v2
                else {"result": result, "error": None, "id": requestId}
            )
            try:
                return encode(reply)
            except (TypeError, ValueError):
                error = self._internal(Failure())
        if notification:
            return None
        return self.errorReply(error, obj)

    def errorReply(self, error: RPCError, obj: Any) -> bytes:
        """
        The reply carrying C{error} for the request (or the request-like
        fields) C{obj}: its envelope and id, as far as they can be told.
        """
        v2 = isinstance(obj, dict) and obj.get("jsonrpc") == "2.0"
        requestId = obj.get("id") if isinstance(obj, dict) else None
        if not _validId(requestId):
            requestId = None
        reply = (
            {"jsonrpc": "2.0", "error": error.toDict(), "id": requestId}
            if v2
            else {"result": None, "error": error.toDict(), "id": requestId}
        )
        return encode(reply)

    def _internal(self, failure: Failure) -> InternalError:
        incident = uuid.uuid4().hex[:12]
        log.failure("internal error, incident {incident}", failure, incident=incident)
        return InternalError(
            f"internal error; the service log has the details under incident {incident}",
            {"incident": incident},
        )

    async def _call(self, obj: Any, uploads: Mapping[str, Upload] | None) -> Any:
        if not isinstance(obj, dict):
            raise InvalidRequest(
                f"a request must be a JSON object with 'method', 'params' and 'id', "
                f"not {_typeName(obj)}"
            )
        if "jsonrpc" in obj and obj["jsonrpc"] != "2.0":
            raise InvalidRequest("'jsonrpc' must be \"2.0\" when present")
        if not _validId(obj.get("id")):
            raise InvalidRequest("'id' must be a string, a number or null")
        name = obj.get("method")
        if not isinstance(name, str) or not name:
            raise InvalidRequest("'method' must be a non-empty string naming the method")
        spec = self.methods.get(name)
        if spec is None:
            raise MethodNotFound(
                f"no method named {name[:64]!r}; call 'list_methods' for the list",
                {"method": name[:64]},
            )
        params = self.bindParams(spec, obj.get("params"), uploads)
        # Called and awaited directly (not through maybeDeferred): a
        # coroutine handler then costs no Deferred of its own.
        result = spec.handler(params)
        if isinstance(result, Deferred) or inspect.isawaitable(result):
            result = await result
        return result

    def bindParams(
        self, spec: MethodSpec, raw: Any, uploads: Mapping[str, Upload] | None
    ) -> Params:
        if raw is None:
            values: dict[str, Any] = {}
        elif isinstance(raw, list):
            if len(raw) > len(spec.params):
                raise InvalidParams(
                    f"'{spec.name}' takes at most {len(spec.params)} positional parameters "
                    f"({', '.join(spec.params) or 'none'}), got {len(raw)}"
                )
            values = dict(zip(spec.params, raw))
        elif isinstance(raw, dict):
            values = raw
            if not spec.extraParams:
                unknown = sorted(k for k in raw if k not in spec.params)
                if unknown:
                    raise InvalidParams(
                        f"'{spec.name}' has no parameter {unknown[0][:64]!r}; it takes: "
                        f"{', '.join(spec.params) or 'no parameters'}",
                        unknown[0][:64],
                    )
        else:
            raise InvalidParams(
                f"'params' must be an object or an array, not {_typeName(raw)}", "params"
            )
        return Params(values, uploads if spec.upload else None)

    def describe(self) -> list[dict[str, Any]]:
        seen: dict[str, MethodSpec] = {}
        for spec in self.methods.values():
            seen[spec.name] = spec
        return [
            {
                "name": spec.name,
                "params": list(spec.params),
                "aliases": list(spec.aliases),
                "upload": spec.upload,
                "doc": spec.doc.split("\n\n")[0],
            }
            for spec in sorted(seen.values(), key=lambda s: s.name)
        ]


class Introspection:
    """C{list_methods}: what a service publishes."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher

    @method()
    def list_methods(self, params: Params) -> list[dict[str, Any]]:
        """The methods this service publishes, with their parameters."""
        return self._dispatcher.describe()
