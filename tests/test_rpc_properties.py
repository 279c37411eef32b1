"""
Property tests of the wire envelope: whatever arrives, exactly one
well-formed reply (or, for JSON-RPC 2.0 notifications, none), with a
documented code, the request's id, and never an HTTP 500.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from hypothesis import given
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from conpaassql.rpc import errors
from conpaassql.rpc.dispatch import MAX_BATCH, Params
from tests.support.rpc import AUTH, FakeService, decode, makeDispatcher, makeResource

CODES = {cls.code for cls in errors._BY_CODE.values()}
METHODS = ["add", "echo", "repeat", "fail", "crash", "unserialisable", "list_methods",
           "store", "nope", ""]

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
ids = st.none() | st.integers() | st.text(max_size=10) | st.floats(allow_nan=False) \
    | st.booleans() | st.lists(st.integers(), max_size=2)
params = json_values | st.dictionaries(
    st.sampled_from(["a", "b", "text", "name", "data", "note", "x"]), json_values, max_size=3)


@st.composite
def request_objects(draw: Any) -> dict[str, Any]:
    """Request-shaped objects, well-formed or not."""
    obj: dict[str, Any] = {}
    if draw(st.booleans()):
        obj["jsonrpc"] = draw(st.sampled_from(["2.0", "2.0", "1.0", 2]))
    if draw(st.integers(0, 9)) > 0:
        obj["method"] = draw(st.sampled_from(METHODS) | json_values)
    if draw(st.booleans()):
        obj["params"] = draw(params)
    if draw(st.integers(0, 3)) > 0:
        obj["id"] = draw(ids)
    if draw(st.integers(0, 5)) == 0:
        obj[draw(st.text(max_size=5))] = draw(json_values)
    return obj


requests = request_objects() | json_values
payloads = requests | st.lists(requests, min_size=0, max_size=6)


def _validId(value: Any) -> bool:
    return value is None or (isinstance(value, (str, int, float))
                             and not isinstance(value, bool))


def _isNotification(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("jsonrpc") == "2.0" and "id" not in obj


def _http(method: str, url: str, **kwargs: Any) -> tuple[int, bytes]:
    """One request through StubTreq to a fresh resource: its status and body."""
    stub = StubTreq(makeResource())
    d = stub.request(method, url, headers=AUTH, **kwargs)
    stub.flush()
    results: list[Any] = []
    d.addCallback(lambda response: stub.content(response).addCallback(
        lambda content: results.append((response.code, content))))
    code, content = results[0]
    return code, content


class EnvelopeProperties(SynchronousTestCase):
    def assertWellFormed(self, request: Any, reply: Any) -> None:
        """C{reply} is the one well-formed reply due to C{request}."""
        self.assertIsInstance(reply, dict)
        v2 = isinstance(request, dict) and request.get("jsonrpc") == "2.0"
        requestId = request.get("id") if isinstance(request, dict) else None
        if v2:
            self.assertEqual(reply["jsonrpc"], "2.0")
            self.assertEqual(len(reply), 3)
            self.assertTrue("result" in reply or "error" in reply)
        else:
            self.assertEqual(set(reply), {"result", "error", "id"})
        self.assertEqual(reply["id"], requestId if _validId(requestId) else None)
        error = reply.get("error")
        if error is not None:
            self.assertIsNone(reply.get("result"))
            self.assertIn(error["code"], CODES)
            self.assertIsInstance(error["message"], str)
            self.assertTrue(error["message"])
            self.assertLessEqual(set(error), {"code", "message", "data"})
        elif not isinstance(request, dict) or request.get("method") not in METHODS:
            self.fail(f"success for a request that cannot succeed: {request!r}")

    @given(payloads)
    def test_dispatch_any_json(self, payload: Any) -> None:
        """
        Any JSON value gets exactly one well-formed reply (an array of them
        for a batch, one per non-notification), or none for notifications.
        """
        dispatcher = makeDispatcher(FakeService())
        body = self.successResultOf(dispatcher.handle(payload))
        self.flushLoggedErrors()
        if isinstance(payload, list) and payload and len(payload) <= MAX_BATCH:
            due = [p for p in payload if not _isNotification(p)]
            if not due:
                self.assertIsNone(body)
                return
            replies = decode(body)
            self.assertEqual(len(replies), len(due))
            for request, reply in zip(due, replies):
                self.assertWellFormed(request, reply)
            return
        if _isNotification(payload):
            self.assertIsNone(body)
            return
        if isinstance(payload, list):
            reply = decode(body)
            self.assertEqual(reply["error"]["code"], errors.INVALID_REQUEST)
            return
        self.assertWellFormed(payload, decode(body))

    @given(payloads)
    def test_http_any_json(self, payload: Any) -> None:
        """Over HTTP too: 200 with JSON, or 204 with nothing; never a 500."""
        code, content = _http("POST", "http://a.example/", data=json.dumps(payload).encode())
        self.flushLoggedErrors()
        self.assertIn(code, (200, 204))
        if code == 204:
            self.assertEqual(content, b"")
        else:
            json.loads(content)

    @given(st.binary(max_size=200))
    def test_http_any_bytes(self, body: bytes) -> None:
        """Any body bytes: one JSON reply, never a 500."""
        code, content = _http("POST", "http://a.example/", data=body)
        self.flushLoggedErrors()
        self.assertIn(code, (200, 204))
        if code == 200:
            reply = json.loads(content)
            if isinstance(reply, dict) and reply.get("error"):
                self.assertIn(reply["error"]["code"], CODES)

    @given(st.dictionaries(st.sampled_from(["method", "params", "id", "jsonrpc", "a", "text"]),
                           st.text(max_size=20), max_size=5))
    def test_http_any_query(self, fields: dict[str, str]) -> None:
        """Any GET query: 200 (or 204) with one JSON reply."""
        code, content = _http("GET", "http://a.example/?" + urlencode(fields))
        self.flushLoggedErrors()
        self.assertIn(code, (200, 204))
        if code == 200:
            reply = json.loads(content)
            self.assertEqual(reply["id"], fields.get("id"))

    @given(json_values)
    def test_str_param(self, value: Any) -> None:
        """The string accessor returns a NUL-free non-empty string or refuses, naming it."""
        try:
            result = Params({"p": value}).str("p")
        except errors.InvalidParams as e:
            self.assertEqual(e.data, {"param": "p"})
        else:
            self.assertIsInstance(result, str)
            self.assertTrue(result)
            self.assertNotIn("\x00", result)
