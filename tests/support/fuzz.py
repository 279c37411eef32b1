"""
Property-based fuzzing of a real JSON-RPC service over real HTTP.

L{ServiceFuzzer} is mixed into a trial C{TestCase} that starts one real
service (C{self.url}, C{self.token}) and then awaits L{ServiceFuzzer.fuzzAll}.
Hypothesis runs in a worker thread (the reactor keeps serving in the main
one) and speaks raw HTTP over blocking sockets (L{tests.support.rawhttp}),
so it can send what no well-behaved client would: invalid UTF-8, 100k
nesting levels, cut-off uploads, lying Content-Length headers.

For every reply the oracle (L{expectedCode}) says which JSON-RPC error code
the input deserves, from the envelope rules of the README, and the fuzzer
checks it: never a 500, never a -32603, never a missing reply.
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import quote, urlencode

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tests  # noqa: F401  (registers the 'ci' profile)
from conpaassql.rpc.dispatch import MAX_BATCH
from tests.support import rawhttp
from tests.support.rawhttp import Reply

PARSE, INVALID_REQUEST, NO_METHOD, INVALID_PARAMS, INTERNAL = (
    -32700, -32600, -32601, -32602, -32603)
#: Application error codes (README): an input may deserve one of these.
APPLICATION = set(range(1001, 1009))
#: Every code a reply may carry (-32603 is never a right answer to input).
WIRE = {PARSE, INVALID_REQUEST, NO_METHOD, INVALID_PARAMS, -32001, -32002, -32003} | APPLICATION

#: Examples per property: small, the server is real and the machine shared.
EXAMPLES = int(os.environ.get("CONPAASSQL_FUZZ_EXAMPLES", "40"))


def _fuzzSettings(examples: int = EXAMPLES) -> settings:
    return settings(settings.get_profile("ci"), max_examples=examples,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


json_scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30)
                | st.sampled_from(["\ud800", "a\udfffb", "\x00", "\u202e"]))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=4),
    max_leaves=12,
)
#: Values no declared parameter takes (objects, arrays of objects).
wrong_values = (st.dictionaries(st.text(max_size=5), json_values, max_size=3)
                | st.lists(st.dictionaries(st.text(max_size=3), json_scalars, min_size=1),
                           min_size=1, max_size=3))


def _strictLoads(body: bytes) -> Any:
    def refuse(constant: str) -> Any:
        raise AssertionError(f"reply is not strict JSON: it holds {constant}")

    return json.loads(body.decode("utf-8"), parse_constant=refuse)


def _validId(value: Any) -> bool:
    return value is None or (isinstance(value, (str, int, float)) and not isinstance(value, bool))


class Oracle:
    """What a service with these methods answers to a decoded request object."""

    def __init__(self, methods: list[dict[str, Any]], safe: frozenset[str]) -> None:
        self.params: dict[str, list[str]] = {}
        for m in methods:
            for name in [m["name"], *m["aliases"]]:
                self.params[name] = list(m["params"])
        self.safe = safe

    def code(self, obj: Any) -> int | None | set[int | None]:
        """
        The error code due (an int), or a set of acceptable outcomes
        (L{None} meaning a result), for one request object.
        """
        if not isinstance(obj, dict):
            return INVALID_REQUEST
        if "jsonrpc" in obj and obj["jsonrpc"] != "2.0":
            return INVALID_REQUEST
        if not _validId(obj.get("id")):
            return INVALID_REQUEST
        name = obj.get("method")
        if not isinstance(name, str) or not name:
            return INVALID_REQUEST
        if name not in self.params:
            return NO_METHOD
        declared = self.params[name]
        raw = obj.get("params")
        if raw is not None and not isinstance(raw, (list, dict)):
            return INVALID_PARAMS
        if isinstance(raw, list) and len(raw) > len(declared):
            return INVALID_PARAMS
        if isinstance(raw, dict) and any(k not in declared for k in raw) and declared != []:
            # (methods taking extra parameters are the not-yet-available ones)
            return {INVALID_PARAMS, *APPLICATION}
        if isinstance(raw, dict) and raw and not declared:
            return INVALID_PARAMS
        assert name in self.safe, f"the fuzzer may not call {name} with valid parameters"
        return {None, INVALID_PARAMS, *APPLICATION}


class ServiceFuzzer:
    """
    Mixin for a trial TestCase with C{self.url}, C{self.token} and an async
    C{healthy()}; C{destructive} names methods that must never succeed.
    """

    url: str
    token: str
    #: Methods that change the service: fuzzed only with invalid parameters.
    destructive: frozenset[str] = frozenset()
    methods: list[dict[str, Any]]
    failures: list[str]

    def auth(self) -> dict[str, str | bytes]:
        return {"Authorization": f"Bearer {self.token}"}

    # Blocking helpers (they run in the hypothesis thread).

    def send(self, data: bytes, **kwargs: Any) -> Reply | None:
        self.sent = getattr(self, "sent", 0) + 1
        return rawhttp._exchange(*rawhttp.hostPort(self.url), data,
                                 kwargs.get("closeAfter", False), rawhttp.BOUND,
                                 kwargs.get("head", False))

    def post(self, body: bytes, ctype: str = "application/json",
             headers: dict[str, str | bytes] | None = None) -> Reply:
        reply = self.send(rawhttp.request("POST", "/", {**self.auth(), "Content-Type": ctype,
                                                         **(headers or {})}, body))
        assert reply is not None
        return reply

    def checkReply(self, reply: Reply, due: Any, what: Any, *, status: int = 200) -> Any:
        """C{reply} is one well-formed JSON-RPC reply with an outcome in C{due}."""
        where = f"{what!r}"[:300]
        assert reply.status != 500, f"HTTP 500 for {where}"
        assert reply.status == status, f"HTTP {reply.status} (not {status}) for {where}"
        assert reply.headers.get("content-type") == "application/json", (reply.headers, where)
        body = _strictLoads(reply.body)
        self.checkObject(body, due, where)
        return body

    def checkObject(self, body: Any, due: Any, where: str) -> None:
        assert isinstance(body, dict), f"reply {body!r} for {where}"
        error = body.get("error")
        code = error["code"] if isinstance(error, dict) else None
        if isinstance(error, dict):
            assert isinstance(error.get("message"), str) and error["message"], (body, where)
        allowed = due if isinstance(due, set) else {due}
        assert code != INTERNAL, f"internal error {error} for {where}"
        assert code in allowed, f"code {code} (want one of {allowed}) for {where}: {body}"

    def checkEnvelope(self, oracle: Oracle, payload: Any, reply: Reply) -> None:
        """The reply to a decoded POST body (single, batch, notifications)."""
        def notification(o: Any) -> bool:
            return (isinstance(o, dict) and o.get("jsonrpc") == "2.0" and "id" not in o
                    and oracle.code(o) is not INVALID_REQUEST)

        if isinstance(payload, list) and 0 < len(payload) <= MAX_BATCH:
            due = [p for p in payload if not (isinstance(p, dict) and p.get("jsonrpc") == "2.0"
                                              and "id" not in p)]
            if not due:
                assert reply.status == 204, (reply, payload)
                return
            assert reply.status == 200, (reply, payload)
            replies = _strictLoads(reply.body)
            assert isinstance(replies, list) and len(replies) == len(due), (replies, payload)
            for item, answer in zip(due, replies):
                self.checkObject(answer, oracle.code(item), repr(item)[:300])
                if _validId(item.get("id") if isinstance(item, dict) else None):
                    assert answer["id"] == (item.get("id") if isinstance(item, dict) else None)
            return
        if isinstance(payload, list):
            self.checkReply(reply, INVALID_REQUEST, payload)
            return
        if isinstance(payload, dict) and payload.get("jsonrpc") == "2.0" and "id" not in payload:
            assert reply.status == 204, (reply, payload)
            return
        body = self.checkReply(reply, oracle.code(payload), payload)
        requestId = payload.get("id") if isinstance(payload, dict) else None
        assert body["id"] == (requestId if _validId(requestId) else None), (body, payload)

    # The properties.

    def properties(self, oracle: Oracle) -> list[Any]:
        methodNames = sorted(oracle.params)
        n = self.examples
        safe = sorted(oracle.safe)
        destructive = self.destructive
        names = (st.sampled_from(safe) | st.text(max_size=12).filter(
            lambda n: n not in destructive))
        envelopes = st.fixed_dictionaries({}, optional={
            "method": names | json_values,
            "params": json_values,
            "id": json_values,
            "jsonrpc": st.sampled_from(["2.0", "1.0", 2]) | json_values,
        })
        bodies = envelopes | st.lists(envelopes, max_size=5) | json_values

        @_fuzzSettings(n)
        @given(bodies)
        def random_envelopes(payload: Any) -> None:
            self.checkEnvelope(oracle, payload, self.post(json.dumps(payload).encode()))

        @st.composite
        def wrongParams(draw: Any) -> dict[str, Any]:
            name = draw(st.sampled_from(methodNames))
            declared = oracle.params[name]
            if not declared or draw(st.booleans()):
                key = draw(st.text(min_size=1, max_size=10).filter(lambda k: k not in declared))
                params: Any = {key: draw(json_values)}
            else:
                bad = draw(st.sampled_from(declared))
                params = {bad: draw(wrong_values)}
                for other in declared:
                    if other != bad and draw(st.booleans()):
                        params[other] = draw(json_values)
                if draw(st.booleans()):
                    params = [params.get(p) for p in declared[:declared.index(bad) + 1]]
                    if params[-1] is None:
                        params[-1] = draw(wrong_values)
            return {"method": name, "params": params, "id": draw(st.integers(0, 10**6))}

        @_fuzzSettings(n * 2)
        @given(wrongParams())
        def wrong_types(obj: dict[str, Any]) -> None:
            reply = self.post(json.dumps(obj).encode())
            self.checkReply(reply, {INVALID_PARAMS, 1005}, obj)

        @_fuzzSettings(n)
        @given(st.sampled_from(methodNames), st.integers(1, 4),
               st.sampled_from(["[", "{\"a\":", "[{\"b\":"]))
        def deep_nesting(name: str, scale: int, opener: str) -> None:
            depth = 25_000 * scale  # up to 100k levels
            body = (f'{{"method": "{name}", "id": 7, "params": {{"x": '.encode()
                    + opener.encode() * depth)
            self.checkReply(self.post(body), PARSE, (name, depth, opener))
            self.checkReply(self.post(opener.encode() * depth), PARSE, (depth, opener))
            form = b"method=" + name.encode() + b"&id=1&params=" + quote(opener * depth).encode()
            self.checkReply(self.post(form, "application/x-www-form-urlencoded"), PARSE,
                            ("form", name, depth))

        @_fuzzSettings(max(3, n // 4))
        @given(st.sampled_from(methodNames), st.sampled_from(["string", "array", "object"]))
        def huge_values(name: str, shape: str) -> None:
            declared = oracle.params[name] or ["x"]
            size = 3 * 1024 * 1024
            value: Any = {"string": "x" * size, "array": [{"a": 1}] * (size // 8),
                          "object": {str(i): [i] for i in range(size // 16)}}[shape]
            obj = {"method": name, "id": 3, "params": {declared[0]: value}}
            body = json.dumps(obj).encode()
            assert len(body) < 4 * 1024 * 1024
            reply = self.checkReply(self.post(body), {INVALID_PARAMS, 1005}, (name, shape))
            assert reply["id"] == 3
            over = json.dumps({"method": name, "id": 4, "params": {"x": "y" * (5 << 20)}})
            self.checkReply(self.post(over.encode()), -32002, (name, "over"), status=413)

        @_fuzzSettings(n)
        @given(st.binary(min_size=1, max_size=60), st.sampled_from(methodNames))
        def invalid_utf8(junk: bytes, name: str) -> None:
            bad = b"\xff\xfe" + junk + b"\xc3"
            body = b'{"method": "' + name.encode() + b'", "id": 1, "params": {"a": "' + bad + b'"}}'
            self.checkReply(self.post(body), PARSE, body)
            form = b"method=" + name.encode() + b"&params=" + bad
            self.checkReply(self.post(form, "application/x-www-form-urlencoded"), PARSE, form)
            # In the URL and in headers: decoded with replacement, or refused.
            reply = self.send(rawhttp.request("GET", b"/?id=1&method=" + quote(bad).encode(),
                                              self.auth()))
            assert reply is not None
            self.checkReply(reply, {NO_METHOD, INVALID_PARAMS, INVALID_REQUEST}, ("GET", bad))
            # (Twisted's own framing refuses NUL, CR and LF in a header with a 400.)
            headerBad = bytes(b for b in bad if b not in b"\x00\r\n")
            for header in ("Content-Type", "X-Junk", "Authorization"):
                reply = self.send(rawhttp.request(
                    "POST", "/", {**self.auth(), header: headerBad},
                    b'{"method": "list_methods", "id": 2}'))
                assert reply is not None
                if header == "Authorization":
                    self.checkReply(reply, -32001, (header, headerBad), status=401)
                else:
                    self.checkReply(reply, None, (header, headerBad))

        fieldKeys = (st.sampled_from(["method", "params", "id", "jsonrpc"])
                     | st.text(min_size=1, max_size=8))
        queryValues = st.sampled_from(safe) | st.text(max_size=20) | json_values.map(json.dumps)

        @_fuzzSettings(n)
        @given(st.dictionaries(fieldKeys, queryValues, max_size=5))
        def random_queries(fields: dict[str, str]) -> None:
            if fields.get("method") in destructive:
                fields["method"] = "list_methods"
            reply = self.send(rawhttp.request("GET", "/?" + urlencode(fields), self.auth()))
            assert reply is not None
            if not fields:
                self.checkReply(reply, INVALID_REQUEST, fields)
                return
            obj: dict[str, Any] = {}
            params: Any = None
            rest = dict(fields)
            for key in ("method", "jsonrpc", "id"):
                if key in rest:
                    obj[key] = rest.pop(key)
            if "params" in rest:
                try:
                    params = json.loads(rest.pop("params"))
                except ValueError:
                    self.checkReply(reply, PARSE, fields)
                    return
            if rest:
                if params is None:
                    params = {}
                if not isinstance(params, dict):
                    self.checkReply(reply, INVALID_REQUEST, fields)
                    return
                for k, v in rest.items():
                    params.setdefault(k, v)
            if params is not None:
                obj["params"] = params
            if obj.get("jsonrpc") == "2.0" and "id" not in obj and oracle.code(obj) != \
                    INVALID_REQUEST:
                assert reply.status in (200, 204), (reply, fields)
                return
            self.checkReply(reply, oracle.code(obj), fields)

        @_fuzzSettings(n)
        @given(st.binary(max_size=80))
        def raw_queries(query: bytes) -> None:
            target = b"/?" + quote(query, safe="=&").encode()
            reply = self.send(rawhttp.request("GET", target, self.auth()))
            assert reply is not None
            assert reply.status in (200, 204), (reply, query)
            if reply.status == 200:
                body = _strictLoads(reply.body)
                if isinstance(body, dict) and body.get("error"):
                    assert body["error"]["code"] in WIRE, (body, query)

        uploadName = min(n for n in methodNames if n in self.uploadMethods)

        @_fuzzSettings(n)
        @given(st.integers(0, 400), st.sampled_from(["cut", "lie", "no-boundary", "chunked"]))
        def truncated_uploads(cut: int, how: str) -> None:
            boundary = "fuzzboundary42"
            whole = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"method\"\r\n\r\n"
                     f"{uploadName}\r\n--{boundary}\r\nContent-Disposition: form-data; "
                     f"name=\"mysqldump\"; filename=\"d.sql\"\r\n"
                     f"Content-Type: application/sql\r\n\r\n"
                     + "SELECT 1;\n" * 20 + f"\r\n--{boundary}--\r\n").encode()
            part = whole[:min(cut, len(whole) - 5)]  # the closing boundary is never whole
            ctype = f"multipart/form-data; boundary={boundary}"
            if how == "no-boundary":
                ctype = "multipart/form-data"
            if how in ("cut", "no-boundary"):
                self.checkReply(self.post(part, ctype), INVALID_REQUEST, (how, cut))
                return
            if how == "lie":
                data = rawhttp.request("POST", "/", {**self.auth(), "Content-Type": ctype},
                                       part, contentLength=len(whole) + 100)
            else:
                headers: dict[str, str | bytes] = {
                    **self.auth(), "Content-Type": ctype, "Transfer-Encoding": "chunked"}
                data = (rawhttp.request("POST", "/", headers).rstrip(b"\r\n") + b"\r\n\r\n"
                        + f"{len(part):x}\r\n".encode() + part)
                data = data.replace(b"Content-Length: 0\r\n", b"")
            assert self.send(data, closeAfter=True) is None, (how, cut)

        return [random_envelopes, wrong_types, deep_nesting, huge_values, invalid_utf8,
                random_queries, raw_queries, truncated_uploads]

    uploadMethods: frozenset[str] = frozenset()
    #: Examples per property.
    examples = EXAMPLES

    async def healthy(self) -> None:
        """Fail unless the service still answers (and is in its normal state)."""
        raise NotImplementedError

    async def fuzzAll(self) -> None:
        """
        Run every property against the service, one after another, each in
        a worker thread, checking the service is healthy after each.
        """
        from twisted.internet.threads import deferToThread

        reply = await deferToThread(self.post, b'{"method": "list_methods", "id": 0}')
        self.methods = reply.json()["result"]
        self.uploadMethods = frozenset(n for m in self.methods if m["upload"]
                                       for n in [m["name"], *m["aliases"]])
        names = {n for m in self.methods for n in [m["name"], *m["aliases"]]}
        oracle = Oracle(self.methods, frozenset(names - self.destructive))
        for prop in self.properties(oracle):
            before = getattr(self, "sent", 0)
            await deferToThread(prop)
            await self.healthy()
            # Each property sent at least one request per example.
            assert self.sent - before >= 3, (prop.__name__, self.sent - before)


def openSpoolFiles(directory: str) -> list[str]:
    """Files of this process open in C{directory} (spooled request bodies)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(directory.rstrip("/") + "/"):
            found.append(target)
    return found


__all__ = ["Oracle", "ServiceFuzzer", "openSpoolFiles"]
