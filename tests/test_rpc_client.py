"""
Unit tests of the calling side, L{RPCClient}: in memory against the real
resource (C{treq.testing}), with a L{Clock} for timeouts.
"""

from __future__ import annotations

import json
from typing import Any

from treq.client import HTTPClient
from treq.testing import RequestTraversalAgent, StringStubbingResource, _SynchronousProducer
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from conpaassql.rpc import errors
from conpaassql.rpc.client import RPCClient
from tests.support.rpc import RAISABLE, TOKEN, FakeService, makeResource, stubHTTPClient


class ClientTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.service = FakeService()
        self.http, self.agent = stubHTTPClient(makeResource(self.service))
        self.client = RPCClient("http://agent.example", TOKEN, httpClient=self.http,
                                reactor=Clock())

    def call(self, method: str, params: Any = None) -> Deferred[Any]:
        d = Deferred.fromCoroutine(self.client.call(method, params))
        self.agent.flush()
        return d


class CallTests(ClientTestCase):
    def test_result(self) -> None:
        self.assertEqual(self.successResultOf(self.call("add", {"a": 1, "b": 2})), 3)
        self.assertEqual(self.successResultOf(self.call("add", [5])), 5)
        self.assertEqual(self.client.url, "http://agent.example/")

    def test_error_classes(self) -> None:
        """Each application error is raised as its class, with message and data."""
        for name, cls in RAISABLE.items():
            failure = self.failureResultOf(self.call("fail", {"name": name, "data": [1]}), cls)
            self.assertEqual((failure.value.code, failure.value.message, failure.value.data),
                             (cls.code, "it failed", [1]))
            self.assertIsInstance(failure.value, errors.RemoteError)

    def test_protocol_errors(self) -> None:
        self.failureResultOf(self.call("nope"), errors.MethodNotFound)
        failure = self.failureResultOf(self.call("add", {}), errors.InvalidParams)
        self.assertEqual(failure.value.data, {"param": "a"})

    def test_wrong_token(self) -> None:
        """A refused token is Unauthorized, whose message says how to authenticate."""
        client = RPCClient("http://agent.example/", "wrong", httpClient=self.http,
                           reactor=Clock())
        d = Deferred.fromCoroutine(client.call("add", [1]))
        self.agent.flush()
        failure = self.failureResultOf(d, errors.Unauthorized)
        self.assertIn("Bearer", failure.value.message)
        self.assertEqual(self.service.calls, [])


def _stubbed(code: int, body: bytes) -> RPCClient:
    resource = StringStubbingResource(lambda *args: (code, {}, body))
    http = HTTPClient(agent=RequestTraversalAgent(resource),
                      data_to_body_producer=_SynchronousProducer)
    return RPCClient("http://agent.example/", TOKEN, httpClient=http, reactor=Clock())


class OddReplyTests(SynchronousTestCase):
    """Whatever a server answers, the caller gets a result, an RPCError or a TransportError."""

    def outcome(self, code: int, body: bytes) -> Any:
        d = Deferred.fromCoroutine(_stubbed(code, body).call("m"))
        return d

    def test_not_json(self) -> None:
        failure = self.failureResultOf(self.outcome(502, b"<html>Bad gateway</html>"),
                                       errors.TransportError)
        self.assertIn("HTTP 502", str(failure.value))

    def test_not_object(self) -> None:
        self.failureResultOf(self.outcome(200, b"[1, 2]"), errors.TransportError)

    def test_neither(self) -> None:
        self.failureResultOf(self.outcome(200, b'{"id": 1}'), errors.TransportError)

    def test_204(self) -> None:
        self.assertIsNone(self.successResultOf(self.outcome(204, b"")))

    def test_original_string_error(self) -> None:
        """The original service's bare-string errors still raise an RPCError."""
        failure = self.failureResultOf(
            self.outcome(200, json.dumps({"result": None, "error": "no such node",
                                          "id": 1}).encode()), errors.RPCError)
        self.assertEqual(failure.value.message, "no such node")

    def test_original_result(self) -> None:
        self.assertEqual(self.successResultOf(self.outcome(
            200, b'{"result": {"return": "OK"}, "error": null, "id": 1}')), {"return": "OK"})


class Hang(Resource):
    """A server that never answers."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Any] = []

    def render(self, request: Any) -> Any:
        self.requests.append(request)
        return NOT_DONE_YET


class TimeoutTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.hang = Hang()
        http = HTTPClient(agent=RequestTraversalAgent(self.hang),
                          data_to_body_producer=_SynchronousProducer)
        self.client = RPCClient("http://agent.example/", TOKEN, httpClient=http,
                                reactor=self.clock, timeout=30)

    def test_call_timeout(self) -> None:
        """No reply within the timeout (on the client's clock): TransportError."""
        d = Deferred.fromCoroutine(self.client.call("add", [1]))
        self.clock.advance(29)
        self.assertNoResult(d)
        self.clock.advance(1)
        failure = self.failureResultOf(d, errors.TransportError)
        self.assertIn("in time", str(failure.value))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_per_call_timeout(self) -> None:
        d = Deferred.fromCoroutine(self.client.call("add", [1], timeout=5))
        self.clock.advance(5)
        self.failureResultOf(d, errors.TransportError)


class ConnectionFailureTests(SynchronousTestCase):
    def test_refused(self) -> None:
        """A refused connection is a TransportError naming the URL."""

        class Refusing:
            def request(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
                from twisted.internet.defer import fail

                return fail(ConnectionRefusedError("refused"))

        http = HTTPClient(agent=Refusing())
        client = RPCClient("http://10.0.0.9:60000/", TOKEN, httpClient=http, reactor=Clock())
        failure = self.failureResultOf(Deferred.fromCoroutine(client.call("m")),
                                       errors.TransportError)
        self.assertIn("http://10.0.0.9:60000/", str(failure.value))
        self.assertIn("cannot connect", str(failure.value))
