"""
Unit tests of JSON-RPC over HTTP: the resource, authentication, limits, the
multipart reader; in memory with C{treq.testing.StubTreq}, except the
uploads and connection tracking, which need a real socket and the real
reactor (the body is spooled to disk and parsed in a thread).
"""

from __future__ import annotations

import hashlib
import json
import os
import tracemalloc
from typing import Any
from urllib.parse import quote

from treq.testing import StubTreq
from twisted.internet import endpoints, protocol, reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase, TestCase

from conpaassql.rpc import multipart
from conpaassql.rpc.client import RPCClient
from conpaassql.rpc.errors import InvalidRequest, TooLarge
from conpaassql.rpc.multipart import parseMultipart
from conpaassql.rpc.resource import ConnectionTracker, TokenAuth, makeSite
from tests.support.rpc import AUTH, TOKEN, FakeService, SiteStubTreq, makeResource

URL = "http://agent.example/"


class HTTPTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.service = FakeService()
        self.resource = makeResource(self.service)
        self.treq: Any = StubTreq(self.resource)

    def request(self, method: str, url: str = URL, **kwargs: Any) -> tuple[int, Any, Any]:
        """Send a request; return the status, the decoded body and the response."""
        d = self.treq.request(method, url, **kwargs)
        self.treq.flush()
        response = self.successResultOf(d)
        body = self.successResultOf(self.treq.content(response))
        return response.code, (json.loads(body) if body else None), response


class GetTests(HTTPTestCase):
    def test_seed_form(self) -> None:
        """
        The seed's exact GET form works: params URL-encoded JSON (with
        C{+} for space), method and id as query fields; the id comes back
        as the string it was.
        """
        url = (URL + "?params=%7B%22serviceNodeId%22%3A+%221%22%7D&method=echo&id=1")
        code, body, response = self.request("GET", url, headers=AUTH)
        self.assertEqual(code, 200)
        self.assertEqual(body["id"], "1")
        self.assertEqual(body["error"]["code"], -32602)
        self.assertEqual(body["error"]["data"], {"param": "serviceNodeId"})
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/json"])

    def test_seed_form_method(self) -> None:
        """The same form with a method taking that parameter answers it."""
        params = quote(json.dumps({"text": "hello world"}), safe="")
        code, body, _ = self.request("GET", f"{URL}?params={params}&method=echo&id=1",
                                     headers=AUTH)
        self.assertEqual((code, body), (200, {"result": {"return": "hello world"},
                                              "error": None, "id": "1"}))

    def test_fields_as_params(self) -> None:
        """Other query fields are named parameters (strings, coerced where typed)."""
        code, body, _ = self.request("GET", URL + "?method=add&a=2&b=40&id=3", headers=AUTH)
        self.assertEqual((code, body), (200, {"result": 42, "error": None, "id": "3"}))

    def test_params_not_json(self) -> None:
        code, body, _ = self.request("GET", URL + "?method=add&params=%7Bnope&id=1",
                                     headers=AUTH)
        self.assertEqual(code, 200)
        self.assertEqual(body["error"]["code"], -32700)
        self.assertEqual(body["error"]["data"], {"param": "params"})
        self.assertEqual(body["id"], "1")

    def test_no_query(self) -> None:
        """A bare GET (authenticated) says how to use the endpoint."""
        code, body, _ = self.request("GET", URL, headers=AUTH)
        self.assertEqual(code, 200)
        self.assertEqual(body["error"]["code"], -32600)
        self.assertIn("list_methods", body["error"]["message"])

    def test_jsonrpc2_get(self) -> None:
        code, body, _ = self.request("GET", URL + "?jsonrpc=2.0&method=add&a=1&id=x",
                                     headers=AUTH)
        self.assertEqual((code, body), (200, {"jsonrpc": "2.0", "result": 1, "id": "x"}))


class PostTests(HTTPTestCase):
    def post(self, body: bytes, **headers: str) -> tuple[int, Any, Any]:
        return self.request("POST", data=body, headers={**AUTH, **headers})

    def test_json(self) -> None:
        code, body, _ = self.post(b'{"method": "add", "params": {"a": 1, "b": 2}, "id": 1}',
                                  **{"Content-Type": "application/json"})
        self.assertEqual((code, body), (200, {"result": 3, "error": None, "id": 1}))

    def test_batch(self) -> None:
        code, body, _ = self.post(json.dumps([
            {"jsonrpc": "2.0", "method": "add", "params": [1], "id": 1},
            {"jsonrpc": "2.0", "method": "add", "params": [2]},
        ]).encode())
        self.assertEqual((code, body), (200, [{"jsonrpc": "2.0", "result": 1, "id": 1}]))

    def test_notification_204(self) -> None:
        """A notification gets HTTP 204 and no body."""
        code, body, _ = self.post(b'{"jsonrpc": "2.0", "method": "add", "params": [1]}')
        self.assertEqual((code, body), (204, None))
        self.assertEqual(self.service.calls, [("add", (1, 0))])

    def test_parse_errors(self) -> None:
        """Bodies that are not JSON get -32700 (HTTP 200), saying why."""
        for raw in (b"{", b"\xff\xfe", b"[" * 100000 + b"]" * 100000, b"nul"):
            code, body, _ = self.post(raw)
            self.assertEqual(code, 200)
            self.assertEqual(body["error"]["code"], -32700, raw[:10])
            self.assertIsNone(body["id"])

    def test_empty_body(self) -> None:
        code, body, _ = self.post(b"  ")
        self.assertEqual((code, body["error"]["code"]), (200, -32600))
        self.assertIn("list_methods", body["error"]["message"])

    def test_form_urlencoded(self) -> None:
        code, body, _ = self.post(b"method=add&a=5&id=2",
                                  **{"Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual((code, body), (200, {"result": 5, "error": None, "id": "2"}))

    def test_internal_error(self) -> None:
        """An unexpected exception is still one JSON reply, HTTP 200, -32603."""
        code, body, _ = self.post(b'{"method": "crash", "id": 1}')
        self.assertEqual(code, 200)
        self.assertEqual(body["error"]["code"], -32603)
        self.flushLoggedErrors(ZeroDivisionError)

    def test_other_path(self) -> None:
        code, body, _ = self.request("GET", URL + "elsewhere?method=add&a=1", headers=AUTH)
        self.assertEqual(code, 404)
        self.assertIn("'/'", body["error"]["message"])


class AuthTests(HTTPTestCase):
    """Every request is authenticated before anything else is looked at."""

    def assertRefused(self, headers: dict[str, str], why: str) -> None:
        code, body, response = self.request(
            "POST", data=b'{"method": "add", "params": [1], "id": 1}', headers=headers)
        self.assertEqual(code, 401)
        self.assertEqual(body["error"]["code"], -32001)
        message = body["error"]["message"]
        self.assertIn(why, message)
        self.assertIn("Authorization: Bearer <token>", message)
        self.assertIn("token file /x/api-token", message)
        self.assertNotIn(TOKEN, json.dumps(body))
        self.assertEqual(response.headers.getRawHeaders("www-authenticate"),
                         ['Bearer realm="conpaassql"'])
        self.assertEqual(self.service.calls, [])

    def test_missing(self) -> None:
        self.assertRefused({}, "authentication required")

    def test_wrong(self) -> None:
        self.assertRefused({"Authorization": "Bearer " + TOKEN + "x"}, "wrong API token")
        self.assertRefused({"Authorization": "Bearer " + TOKEN[:-1]}, "wrong API token")
        self.assertRefused({"Authorization": "Bearer \u00e9"}, "wrong API token")

    def test_not_bearer(self) -> None:
        self.assertRefused({"Authorization": "Basic " + TOKEN}, "unsupported")
        self.assertRefused({"Authorization": "Bearer"}, "unsupported")

    def test_right(self) -> None:
        code, body, _ = self.request("POST", data=b'{"method": "add", "params": [1], "id": 1}',
                                     headers={"Authorization": "bearer  " + TOKEN})
        self.assertEqual((code, body["result"]), (200, 1))

    def test_refused_before_parsing(self) -> None:
        """Without the token even a malformed body gets 401, not -32700."""
        code, body, _ = self.request("POST", data=b"{", headers={})
        self.assertEqual((code, body["error"]["code"]), (401, -32001))

    def test_several_tokens(self) -> None:
        auth = TokenAuth(["one", "", "two"])
        self.assertEqual(len(auth._tokens), 2)
        with self.assertRaises(ValueError):
            TokenAuth(["", ""])


class HTTPMethodTests(HTTPTestCase):
    def test_405(self) -> None:
        """Methods other than GET and POST get 405 with an Allow header."""
        for verb in ("PUT", "DELETE", "PATCH"):
            code, body, response = self.request(verb, data=b"{}", headers=AUTH)
            self.assertEqual(code, 405, verb)
            self.assertEqual(body["error"]["code"], -32003)
            self.assertEqual(response.headers.getRawHeaders("allow"), ["GET, POST"])


class LimitTests(SynchronousTestCase):
    """Body limits need the site's own request class: L{SiteStubTreq}."""

    def setUp(self) -> None:
        self.service = FakeService()
        self.treq: Any = SiteStubTreq(makeResource(self.service), maxBody=1000, maxUpload=5000)

    def post(self, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        d = self.treq.post(URL, data=body, headers=headers if headers is not None else AUTH)
        self.treq.flush()
        response = self.successResultOf(d)
        content = self.successResultOf(self.treq.content(response))
        return response.code, json.loads(content)

    def test_413(self) -> None:
        """A JSON body over the limit gets 413 and is not run."""
        body = json.dumps({"method": "echo", "params": {"text": "x" * 1000}, "id": 1}).encode()
        code, reply = self.post(body)
        self.assertEqual(code, 413)
        self.assertEqual(reply["error"]["code"], -32002)
        self.assertIn("1000 bytes", reply["error"]["message"])
        self.assertEqual(self.service.calls, [])

    def test_under_limit(self) -> None:
        body = json.dumps({"method": "echo", "params": {"text": "x" * 900}, "id": 1}).encode()
        self.assertEqual(self.post(body)[0], 200)

    def test_401_before_413(self) -> None:
        """An unauthenticated oversized request learns only that it must authenticate."""
        code, reply = self.post(b"x" * 2000, headers={})
        self.assertEqual((code, reply["error"]["code"]), (401, -32001))

    def test_upload_limit(self) -> None:
        """multipart bodies have their own (larger) limit."""
        boundary = "b0undary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"method\"\r\n\r\n"
                f"store\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"f\"; "
                f"filename=\"f\"\r\n\r\n").encode() + b"z" * 6000 + f"\r\n--{boundary}--\r\n"\
            .encode()
        code, reply = self.post(body, {**AUTH, "Content-Type":
                                       f"multipart/form-data; boundary={boundary}"})
        self.assertEqual((code, reply["error"]["code"]), (413, -32002))
        self.assertIn("5000 bytes", reply["error"]["message"])


def _multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "XyZ") -> bytes:
    out = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += (f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + content + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


class MultipartTests(SynchronousTestCase):
    """The streaming multipart reader, on files."""

    def parse(self, body: bytes, ctype: str = "multipart/form-data; boundary=XyZ",
              **kwargs: Any) -> tuple[dict[str, str], dict[str, Any], Any]:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(body)
        f = open(path, "rb")  # noqa: SIM115 - closed by the cleanup
        self.addCleanup(f.close)
        fields, files = parseMultipart(f, ctype, **kwargs)
        return fields, files, f

    def test_fields_and_files(self) -> None:
        """Plain fields are read; files are byte ranges of the body, exact to the byte."""
        dump = b"CREATE TABLE t (a INT);\r\n-- --XyZ in a line\r\n" + bytes(range(256)) * 50
        fields, files, _ = self.parse(_multipart([
            ("method", None, b"store"), ("note", None, "\u00fcber".encode()),
            ("mysqldump", "../../etc/dump.sql", dump), ("empty", "e", b""),
        ]))
        self.assertEqual(fields, {"method": "store", "note": "\u00fcber"})
        upload = files["mysqldump"]
        self.assertEqual(upload.filename, "dump.sql")
        self.assertEqual(upload.size, len(dump))
        self.assertEqual(b"".join(upload.chunks(100)), dump)
        self.assertEqual(files["empty"].size, 0)

    def test_boundary_across_chunks(self) -> None:
        """Delimiters split across the reader's chunks are found."""
        self.patch(multipart, "_CHUNK", 7)
        content = b"0123456789" * 5
        fields, files, _ = self.parse(_multipart([("method", None, b"m"), ("f", "f", content)]))
        self.assertEqual(b"".join(files["f"].chunks()), content)
        self.assertEqual(fields, {"method": "m"})

    def test_malformed(self) -> None:
        """Malformed bodies are -32600 with a reason, never an exception of another kind."""
        good = _multipart([("method", None, b"m"), ("f", "f", b"data")])
        for body, ctype in [
            (good, "multipart/form-data"),
            (good, "multipart/form-data; boundary=" + "x" * 201),
            (b"no boundary here", "multipart/form-data; boundary=XyZ"),
            (good[:-10], "multipart/form-data; boundary=XyZ"),
            (b"--XyZ\r\nContent-Disposition: form-data\r\n\r\nv\r\n--XyZ--\r\n",
             "multipart/form-data; boundary=XyZ"),
            (b"--XyZ\r\nContent-Disposition: form-data; name=a" + b"x" * 20000,
             "multipart/form-data; boundary=XyZ"),
            (b"--XyZjunk", "multipart/form-data; boundary=XyZ"),
            (_multipart([("f", None, b"\xff\xfe")]), "multipart/form-data; boundary=XyZ"),
        ]:
            with self.assertRaises(InvalidRequest, msg=repr(body[:40])):
                self.parse(body, ctype)

    def test_field_too_large(self) -> None:
        with self.assertRaises(TooLarge):
            self.parse(_multipart([("note", None, b"x" * 101)]), maxFieldSize=100)


class UploadOverHTTPTests(TestCase):
    """
    Uploads over a real socket: streamed to a spool file in the upload
    directory, parsed in a thread, handed to the method as byte ranges.
    """

    timeout = 120

    async def serve(self, **siteOptions: Any) -> tuple[RPCClient, str]:
        uploads = os.path.abspath(self.mktemp())
        os.makedirs(uploads)
        self.service = FakeService()
        site = makeSite(makeResource(self.service), uploadDir=uploads, **siteOptions)
        tracker = ConnectionTracker(site)
        port = await endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(
            tracker)

        async def stop() -> None:
            await port.stopListening()
            await tracker.closeConnections(reactor)

        self.addCleanup(lambda: Deferred.fromCoroutine(stop()))
        client = RPCClient(f"http://127.0.0.1:{port.getHost().port}", TOKEN, timeout=60)
        self.addCleanup(client.close)
        return client, uploads

    async def test_upload(self) -> None:
        """
        Files arrive byte-exact; the body is spooled in the upload directory
        (and removed after); plain fields and JSON params are parameters.
        """
        client, uploads = await self.serve()
        a = os.urandom(300_000) + b"\r\n--" + os.urandom(1000)
        b = b""
        paths = []
        for content in (a, b):
            path = self.mktemp()
            with open(path, "wb") as f:
                f.write(content)
            paths.append(path)
        with open(paths[0], "rb") as fa, open(paths[1], "rb") as fb:
            result = await client.upload("store", {"note": "n1"},
                                         {"a": ("a.bin", fa), "b": ("b.bin", fb)})
        self.assertEqual(result, {"note": "n1", "files": {
            "a": {"filename": "a.bin", "size": len(a), "sha256": hashlib.sha256(a).hexdigest()},
            "b": {"filename": "b.bin", "size": 0, "sha256": hashlib.sha256(b).hexdigest()},
        }})
        self.assertEqual(os.listdir(uploads), [])

    async def test_upload_producer(self) -> None:
        """A body producer of known length (a spooled range) is sent as it is."""
        from io import BytesIO

        from twisted.web.client import FileBodyProducer

        client, _ = await self.serve()
        content = os.urandom(100_000)
        result = await client.upload("store", {}, {"p": ("p.bin",
                                                         FileBodyProducer(BytesIO(content)))})
        self.assertEqual(result["files"]["p"]["sha256"], hashlib.sha256(content).hexdigest())

    async def test_upload_to_plain_method(self) -> None:
        """Files sent to a method that takes none are ignored; fields still work."""
        client, _ = await self.serve()
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"x" * 1000)
        with open(path, "rb") as f:
            result = await client.upload("echo", {"text": "hi"}, {"f": ("f", f)})
        self.assertEqual(result, {"return": "hi"})

    async def test_memory(self) -> None:
        """
        A 24 MB upload is never held in memory: the Python heap (server and
        client both, in this process) grows by a small fraction of it.
        """
        client, _ = await self.serve()
        path = self.mktemp()
        block = os.urandom(1 << 20)
        with open(path, "wb") as f:
            for _ in range(24):
                f.write(block)
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        with open(path, "rb") as f:
            result = await client.upload("store", {}, {"f": ("big", f)})
        peak = tracemalloc.get_traced_memory()[1]
        self.assertEqual(result["files"]["f"]["size"], 24 << 20)
        self.assertLess(peak, 6 << 20)


class ConnectionTrackerTests(TestCase):
    timeout = 60

    async def test_closes_open_connections(self) -> None:
        """
        After stopListening, connections already accepted (here an idle
        one) stay open until closeConnections closes them.
        """
        site = makeSite(makeResource())
        tracker = ConnectionTracker(site)
        port = await endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(
            tracker)
        lost: Deferred[None] = Deferred()

        class Idle(protocol.Protocol):
            def connectionLost(self, reason: Any) -> None:
                lost.callback(None)

        await endpoints.connectProtocol(
            endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), Idle())
        while not tracker.protocols:
            await Deferred.fromCoroutine(_tick())
        await port.stopListening()
        self.assertEqual(len(tracker.protocols), 1)
        self.assertFalse(lost.called)
        await tracker.closeConnections(reactor)
        self.assertEqual(tracker.protocols, {})
        await lost

    def test_nothing_open(self) -> None:
        tracker = ConnectionTracker(makeSite(makeResource()))
        self.successResultOf(tracker.closeConnections(reactor))


async def _tick() -> None:
    from twisted.internet.task import deferLater

    await deferLater(reactor, 0.01)


class AccessLogTests(SynchronousTestCase):
    """L{RPCSite} writes its access log lines in batches, and on stop."""

    def test_batched(self) -> None:
        from twisted.internet.task import Clock
        from twisted.logger import globalLogPublisher
        from twisted.web.test.requesthelper import DummyRequest

        from conpaassql.rpc.resource import RPCSite

        events: list[dict[str, Any]] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_namespace") == "conpaassql.rpc.access":
                events.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        clock = Clock()
        site = makeSite(makeResource())
        site.reactor = clock
        self.assertIsInstance(site, RPCSite)
        for path in (b"/a", b"/b"):
            request = DummyRequest([b""])
            request.uri = path + b"?token=secret"
            request.method = b"GET"
            request.clientproto = b"HTTP/1.1"
            request.code = 200
            request.sentLength = 3
            site.log(request)
        self.assertEqual(events, [])
        clock.advance(site.accessLogInterval)
        self.assertEqual(len(events), 1)
        lines = events[0]["lines"].split("\n")
        self.assertEqual(len(lines), 2)
        self.assertIn('"GET /a HTTP/1.1" 200 3', lines[0])
        self.assertNotIn("secret", events[0]["lines"])
        self.assertEqual(clock.getDelayedCalls(), [])
        site.log(request)
        site.stopFactory()
        self.assertEqual(len(events), 2)
        self.assertEqual(clock.getDelayedCalls(), [])
