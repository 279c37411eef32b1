"""How the manager words a failed call (to a cloud or an agent) in its log and API."""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.error import TimeoutError as ConnectionTimeout

from conpaassql.rpc.errors import RPCError

__all__ = ["describe"]


def describe(e: BaseException) -> str:
    """A short reason: the remote error's code and message, "no answer in time", or the text."""
    if isinstance(e, RPCError):
        return f"error {e.code}: {e.message}"
    if isinstance(e, (DeferredTimeout, ConnectionTimeout, CancelledError)):
        return "no answer in time"
    return str(e) or type(e).__name__
