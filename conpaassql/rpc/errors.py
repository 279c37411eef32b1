"""
Errors that travel on the wire.

Every error a caller can see is an L{RPCError} with a stable integer C{code},
a C{message} a person can act on and optional C{data}.  The JSON-RPC 2.0
codes keep their meaning; the codes from 1001 up are this project's
application errors and are documented in the README.

An error raised by a method handler that is I{not} an L{RPCError} becomes an
L{InternalError} carrying an incident id that is also written to the log.
"""

from __future__ import annotations

from typing import Any

from txjsonrpc_ng import jsonrpclib

# The JSON-RPC 2.0 codes (the same numbers txJSON-RPC takes from xmlrpclib).
PARSE_ERROR = jsonrpclib.NOT_WELLFORMED_ERROR  # -32700
INVALID_REQUEST = jsonrpclib.INVALID_JSONRPC  # -32600
METHOD_NOT_FOUND = jsonrpclib.METHOD_NOT_FOUND  # -32601
INVALID_PARAMS = jsonrpclib.INVALID_METHOD_PARAMS  # -32602
INTERNAL_ERROR = jsonrpclib.INTERNAL_ERROR  # -32603

# Transport-level errors, in the range JSON-RPC 2.0 leaves to servers.
UNAUTHORIZED = -32001
TOO_LARGE = -32002
HTTP_METHOD_NOT_ALLOWED = -32003

# Application errors.
WRONG_STATE = 1001
NOT_FOUND = 1002
MYSQL_ERROR = 1003
CONFLICT = 1004
NOT_AVAILABLE = 1005
OPERATION_FAILED = 1006
CLOUD_ERROR = 1007
TIMEOUT = 1008


class RPCError(Exception):
    """
    An error with a place on the wire.

    @ivar code: the stable integer code.
    @ivar message: what went wrong, in words a person can act on.
    @ivar data: extra JSON-serialisable detail, or L{None}.
    """

    code: int = INTERNAL_ERROR
    #: The HTTP status a single (non-batch) reply carrying this error gets.
    httpStatus: int = 200

    def __init__(self, message: str, data: Any = None, *, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data
        if code is not None:
            self.code = code

    def toDict(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code}, {self.message!r}, data={self.data!r})"


class ParseError(RPCError):
    code = PARSE_ERROR


class InvalidRequest(RPCError):
    code = INVALID_REQUEST


class MethodNotFound(RPCError):
    code = METHOD_NOT_FOUND


class InvalidParams(RPCError):
    """
    A parameter is missing, of the wrong type, or out of range.  C{data}
    names it: C{{"param": name}}.
    """

    code = INVALID_PARAMS

    def __init__(self, message: str, param: str | None = None, data: Any = None) -> None:
        if data is None and param is not None:
            data = {"param": param}
        super().__init__(message, data)
        self.param = param


class InternalError(RPCError):
    code = INTERNAL_ERROR


class Unauthorized(RPCError):
    code = UNAUTHORIZED
    httpStatus = 401


class TooLarge(RPCError):
    code = TOO_LARGE
    httpStatus = 413


class HTTPMethodNotAllowed(RPCError):
    code = HTTP_METHOD_NOT_ALLOWED
    httpStatus = 405


class WrongState(RPCError):
    """The service or node is not in a state where the call makes sense."""

    code = WRONG_STATE


class NotFound(RPCError):
    """The named node, user or object does not exist."""

    code = NOT_FOUND


class MySQLError(RPCError):
    """The database server refused the statement.  C{data} has its errno."""

    code = MYSQL_ERROR


class Conflict(RPCError):
    """Another operation holds what this call needs, or it already exists."""

    code = CONFLICT


class NotAvailable(RPCError):
    """The method exists but cannot be used in this deployment yet."""

    code = NOT_AVAILABLE


class OperationFailed(RPCError):
    """An external step (a client tool, a load, a copy) failed."""

    code = OPERATION_FAILED


class CloudError(RPCError):
    code = CLOUD_ERROR


class Timeout(RPCError):
    code = TIMEOUT


_BY_CODE: dict[int, type[RPCError]] = {
    cls.code: cls
    for cls in (
        ParseError,
        InvalidRequest,
        MethodNotFound,
        InvalidParams,
        InternalError,
        Unauthorized,
        TooLarge,
        HTTPMethodNotAllowed,
        WrongState,
        NotFound,
        MySQLError,
        Conflict,
        NotAvailable,
        OperationFailed,
        CloudError,
        Timeout,
    )
}


class RemoteError(RPCError):
    """
    An error reply received by the client.  Its class is chosen from the
    code, so C{except NotFound} works on the calling side too.
    """


_REMOTE: dict[type[RPCError], type[RPCError]] = {}


def _remoteClass(base: type[RPCError]) -> type[RPCError]:
    if base not in _REMOTE:
        _REMOTE[base] = type("Remote" + base.__name__, (RemoteError, base), {})
    return _REMOTE[base]


def fromWire(error: Any) -> RPCError:
    """
    Build the exception matching an error object received from a server.
    Accepts the original's bare-string errors too.
    """
    if isinstance(error, dict):
        code = error.get("code")
        message = str(error.get("message", "unknown error"))
        data = error.get("data")
    else:
        code, message, data = None, str(error), None
    if not isinstance(code, int) or isinstance(code, bool):
        code = INTERNAL_ERROR
    cls = _remoteClass(_BY_CODE.get(code, RPCError))
    if issubclass(cls, InvalidParams):
        exc: RPCError = cls(message, data=data)
    else:
        exc = cls(message, data)
    exc.code = code
    return exc


class TransportError(Exception):
    """
    The client could not get a JSON-RPC reply at all: connection refused or
    lost, a timeout, or a reply that is not JSON-RPC.
    """
