"""
Fakes for unit tests of the wire layer: a small service to dispatch to, and
in-memory HTTP (C{treq.testing}) in front of a real L{makeSite} site.
"""

from __future__ import annotations

import json
from typing import Any

import treq
from treq.client import HTTPClient
from treq.testing import RequestTraversalAgent, _SynchronousProducer
from twisted.internet.defer import Deferred
from twisted.web.resource import IResource

from conpaassql.rpc import errors
from conpaassql.rpc.dispatch import Dispatcher, Introspection, Params, method
from conpaassql.rpc.resource import RPCResource, TokenAuth, makeSite

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

#: Every application error class, by the name the fake service raises it under.
RAISABLE: dict[str, type[errors.RPCError]] = {
    cls.__name__: cls
    for cls in (
        errors.WrongState, errors.NotFound, errors.MySQLError, errors.Conflict,
        errors.NotAvailable, errors.OperationFailed, errors.CloudError, errors.Timeout,
    )
}


class FakeService:
    """Methods covering what the dispatcher has to handle."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.pending: list[Deferred[Any]] = []

    @method(params=("a", "b"))
    def add(self, params: Params) -> int:
        """Add two integers."""
        self.calls.append(("add", (params.int("a"), params.int("b", 0))))
        return params.int("a") + params.int("b", 0)

    @method(params=("text",), aliases=("repeat",))
    async def echo(self, params: Params) -> dict[str, Any]:
        """Echo a string."""
        self.calls.append(("echo", params.raw("text", None)))
        return {"return": params.str("text", "", allowEmpty=True)}

    @method(params=("name", "data"))
    def fail(self, params: Params) -> None:
        """Raise the named application error."""
        raise RAISABLE[params.str("name")]("it failed", params.raw("data", None))

    @method()
    def crash(self, params: Params) -> None:
        """Raise an unexpected exception."""
        raise ZeroDivisionError("secret detail")

    @method()
    def unserialisable(self, params: Params) -> object:
        return object()

    @method()
    def later(self, params: Params) -> Deferred[Any]:
        """A result that comes later (fired by the test)."""
        d: Deferred[Any] = Deferred()
        self.pending.append(d)
        return d

    @method(params=("note",), upload=True)
    def store(self, params: Params) -> dict[str, Any]:
        """An upload: report each file's name and size, and its bytes' digest."""
        import hashlib

        files = {}
        for name, upload in sorted(params.uploads.items()):
            digest = hashlib.sha256()
            for chunk in upload.chunks(64 * 1024):
                digest.update(chunk)
            files[name] = {"filename": upload.filename, "size": upload.size,
                           "sha256": digest.hexdigest()}
        return {"note": params.str("note", None), "files": files}


def makeDispatcher(service: FakeService | None = None) -> Dispatcher:
    dispatcher = Dispatcher(service or FakeService())
    dispatcher.collect(Introspection(dispatcher))
    return dispatcher


def makeResource(service: FakeService | None = None) -> RPCResource:
    return RPCResource(makeDispatcher(service), TokenAuth([TOKEN], hint="token file /x/api-token"))


class SiteAgent(RequestTraversalAgent):
    """
    treq's in-memory agent, serving a L{makeSite} site (its request class,
    body limits and spooling) instead of a plain C{Site}.
    """

    def __init__(self, root: IResource, **siteOptions: Any) -> None:
        super().__init__(root)
        site = makeSite(root, **siteOptions)
        site.reactor = self._memoryReactor
        self._serverFactory = site


class SiteStubTreq:
    """
    Like C{treq.testing.StubTreq} (the C{treq} functions, in memory, with
    C{flush}), in front of C{makeSite(root, **siteOptions)}.
    """

    def __init__(self, root: IResource, **siteOptions: Any) -> None:
        self.agent = SiteAgent(root, **siteOptions)
        client = HTTPClient(agent=self.agent, data_to_body_producer=_SynchronousProducer)
        for name in treq.__all__:
            setattr(self, name, getattr(client, name, None) or getattr(treq, name))
        self.flush = self.agent.flush


def stubHTTPClient(root: IResource, **siteOptions: Any) -> tuple[HTTPClient, SiteAgent]:
    """An C{HTTPClient} (for L{RPCClient}) over the in-memory agent."""
    agent = SiteAgent(root, **siteOptions)
    return HTTPClient(agent=agent, data_to_body_producer=_SynchronousProducer), agent


def decode(body: bytes) -> Any:
    return json.loads(body.decode("utf-8"))
