"""
Unit tests of the JSON-RPC envelope and dispatch (no HTTP), the error
classes and their wire form.
"""

from __future__ import annotations

import os
import re
from typing import Any

from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from conpaassql.rpc import errors
from conpaassql.rpc.dispatch import MAX_BATCH, Dispatcher, Params, Upload, encode, method
from tests.support.rpc import RAISABLE, FakeService, decode, makeDispatcher

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class DispatchTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.service = FakeService()
        self.dispatcher = makeDispatcher(self.service)

    def reply(self, payload: Any) -> Any:
        body = self.successResultOf(self.dispatcher.handle(payload))
        return None if body is None else decode(body)


class EnvelopeTests(DispatchTestCase):
    def test_original_envelope(self) -> None:
        """Without "jsonrpc", replies are {"result", "error": null, "id"}."""
        self.assertEqual(
            self.reply({"method": "add", "params": {"a": 2, "b": 3}, "id": 7}),
            {"result": 5, "error": None, "id": 7},
        )

    def test_original_envelope_error(self) -> None:
        """Errors go in "error", with "result" null."""
        reply = self.reply({"method": "add", "params": {}, "id": "x"})
        self.assertEqual(set(reply), {"result", "error", "id"})
        self.assertIsNone(reply["result"])
        self.assertEqual(reply["id"], "x")
        self.assertEqual(reply["error"]["code"], -32602)
        self.assertEqual(reply["error"]["data"], {"param": "a"})
        self.assertIn("'a'", reply["error"]["message"])

    def test_jsonrpc2(self) -> None:
        """With "jsonrpc": "2.0", replies are JSON-RPC 2.0: no "error" on success."""
        self.assertEqual(
            self.reply({"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": 1}),
            {"jsonrpc": "2.0", "result": 3, "id": 1},
        )
        reply = self.reply({"jsonrpc": "2.0", "method": "nope", "id": 2})
        self.assertEqual(set(reply), {"jsonrpc", "error", "id"})
        self.assertEqual(reply["error"]["code"], -32601)

    def test_ids_echoed(self) -> None:
        """String, number and null ids come back as they were sent."""
        for requestId in ("abc", 0, -5, 1.5, None, "", "ü" * 3):
            self.assertEqual(self.reply({"method": "add", "params": [1], "id": requestId})["id"],
                             requestId)

    def test_bad_id(self) -> None:
        """An id that is an object, array or boolean is an invalid request; id null."""
        for bad in ({"a": 1}, [1], True):
            reply = self.reply({"jsonrpc": "2.0", "method": "add", "params": [1], "id": bad})
            self.assertEqual(reply["error"]["code"], -32600)
            self.assertIsNone(reply["id"])

    def test_notification(self) -> None:
        """A JSON-RPC 2.0 request without an id is run, and gets no reply."""
        self.assertIsNone(self.reply({"jsonrpc": "2.0", "method": "add", "params": [4, 5]}))
        self.assertEqual(self.service.calls, [("add", (4, 5))])

    def test_notification_error(self) -> None:
        """A failing notification gets no reply either."""
        self.assertIsNone(self.reply({"jsonrpc": "2.0", "method": "nope"}))
        self.assertIsNone(self.reply({"jsonrpc": "2.0", "method": "add", "params": {}}))

    def test_original_without_id(self) -> None:
        """The original envelope has no notifications: no id still gets a reply."""
        self.assertEqual(self.reply({"method": "add", "params": [1, 1]}),
                         {"result": 2, "error": None, "id": None})

    def test_batch(self) -> None:
        """
        A batch gets an array of the replies to its non-notifications, in
        order, each with its own envelope and id.
        """
        reply = self.reply([
            {"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": "a"},
            {"jsonrpc": "2.0", "method": "add", "params": [3, 4]},
            {"method": "echo", "params": {"text": "hi"}, "id": "b"},
            {"jsonrpc": "2.0", "method": "nope", "id": "c"},
            5,
        ])
        self.assertEqual(reply[0], {"jsonrpc": "2.0", "result": 3, "id": "a"})
        self.assertEqual(reply[1], {"result": {"return": "hi"}, "error": None, "id": "b"})
        self.assertEqual(reply[2]["error"]["code"], -32601)
        self.assertEqual(reply[2]["id"], "c")
        self.assertEqual(reply[3]["error"]["code"], -32600)
        self.assertEqual(len(reply), 4)
        self.assertIn(("add", (3, 4)), self.service.calls)

    def test_batch_of_notifications(self) -> None:
        """A batch of notifications only gets no reply at all."""
        self.assertIsNone(self.reply([{"jsonrpc": "2.0", "method": "add", "params": [1]}] * 3))
        self.assertEqual(len(self.service.calls), 3)

    def test_empty_batch(self) -> None:
        reply = self.reply([])
        self.assertEqual(reply["error"]["code"], -32600)
        self.assertIsNone(reply["id"])

    def test_batch_limit(self) -> None:
        """A batch over MAX_BATCH requests is refused whole; none is run."""
        reply = self.reply([{"method": "add", "params": [1], "id": i}
                            for i in range(MAX_BATCH + 1)])
        self.assertEqual(reply["error"]["code"], -32600)
        self.assertIn(str(MAX_BATCH), reply["error"]["message"])
        self.assertEqual(self.service.calls, [])
        self.assertEqual(len(self.reply([{"method": "add", "params": [1], "id": i}
                                         for i in range(MAX_BATCH)])), MAX_BATCH)

    def test_invalid_requests(self) -> None:
        """Anything but a request object is -32600, with a message saying what is expected."""
        for payload in (None, 1, "add", True, {"params": [1], "id": 1},
                        {"method": 5, "id": 1}, {"method": "", "id": 1},
                        {"jsonrpc": "1.0", "method": "add", "id": 1}):
            reply = self.reply(payload)
            self.assertEqual(reply["error"]["code"], -32600, payload)
            self.assertIsNone(reply["result"])

    def test_later(self) -> None:
        """A Deferred result is replied when it fires."""
        d = self.dispatcher.handle({"method": "later", "id": 1})
        self.assertNoResult(d)
        self.service.pending[0].callback({"done": True})
        self.assertEqual(decode(self.successResultOf(d))["result"], {"done": True})

    def test_async_handler(self) -> None:
        self.assertEqual(self.reply({"method": "repeat", "params": ["x"], "id": 1})["result"],
                         {"return": "x"})


class ParamsBindingTests(DispatchTestCase):
    def test_positional(self) -> None:
        """Array params map onto the declared names, in order."""
        self.assertEqual(self.reply({"method": "add", "params": [2, 5], "id": 1})["result"], 7)

    def test_too_many_positional(self) -> None:
        reply = self.reply({"method": "add", "params": [1, 2, 3], "id": 1})
        self.assertEqual(reply["error"]["code"], -32602)
        self.assertIn("at most 2", reply["error"]["message"])

    def test_unknown_named(self) -> None:
        """An undeclared parameter is refused, naming it and listing the known ones."""
        reply = self.reply({"method": "add", "params": {"a": 1, "zz": 2}, "id": 1})
        self.assertEqual(reply["error"]["code"], -32602)
        self.assertEqual(reply["error"]["data"], {"param": "zz"})
        self.assertIn("a, b", reply["error"]["message"])

    def test_params_not_container(self) -> None:
        for raw in (1, "a=1", True):
            reply = self.reply({"method": "add", "params": raw, "id": 1})
            self.assertEqual(reply["error"]["code"], -32602)
            self.assertEqual(reply["error"]["data"], {"param": "params"})

    def test_null_params(self) -> None:
        """Null params are no params."""
        self.assertEqual(self.reply({"method": "list_methods", "params": None, "id": 1})
                         ["error"], None)

    def test_wrong_type(self) -> None:
        reply = self.reply({"method": "add", "params": {"a": "x1"}, "id": 1})
        self.assertEqual(reply["error"]["data"], {"param": "a"})
        self.assertIn("integer", reply["error"]["message"])
        self.assertIn("a string", reply["error"]["message"])


class ErrorMappingTests(DispatchTestCase):
    def test_application_errors(self) -> None:
        """Each application error reaches the wire with its code, message and data."""
        for name, cls in RAISABLE.items():
            reply = self.reply({"method": "fail", "params": {"name": name, "data": {"k": 1}},
                                "id": name})
            self.assertEqual(reply["error"], {"code": cls.code, "message": "it failed",
                                              "data": {"k": 1}}, name)
            self.assertEqual(reply["id"], name)

    def test_no_data(self) -> None:
        """An error without data has no "data" key."""
        reply = self.reply({"method": "fail", "params": {"name": "NotFound"}, "id": 1})
        self.assertNotIn("data", reply["error"])

    def test_internal_error(self) -> None:
        """
        An unexpected exception is -32603 with an incident id; the log has
        the traceback under that id; the reply does not leak the detail.
        """
        with capturedLogs() as events:
            reply = self.reply({"method": "crash", "id": 1})
        error = reply["error"]
        self.assertEqual(error["code"], -32603)
        incident = error["data"]["incident"]
        self.assertRegex(incident, r"^[0-9a-f]{12}$")
        self.assertIn(incident, error["message"])
        self.assertNotIn("secret detail", encode(reply).decode())
        logged = [e for e in events if e.get("incident") == incident]
        self.assertEqual(len(logged), 1)
        self.assertIsInstance(logged[0]["log_failure"].value, ZeroDivisionError)
        self.flushLoggedErrors(ZeroDivisionError)

    def test_unserialisable_result(self) -> None:
        """A result that cannot be encoded is an internal error, still one reply."""
        with capturedLogs():
            reply = self.reply({"method": "unserialisable", "id": 9})
        self.assertEqual(reply["error"]["code"], -32603)
        self.assertEqual(reply["id"], 9)
        self.flushLoggedErrors(TypeError)

    def test_unknown_method(self) -> None:
        reply = self.reply({"method": "drop_everything", "id": 1})
        self.assertEqual(reply["error"]["code"], -32601)
        self.assertEqual(reply["error"]["data"], {"method": "drop_everything"})
        self.assertIn("list_methods", reply["error"]["message"])


class IntrospectionTests(DispatchTestCase):
    def test_list_methods(self) -> None:
        """list_methods describes every method once, aliases included."""
        methods = {m["name"]: m for m in self.reply({"method": "list_methods", "id": 1})
                   ["result"]}
        self.assertEqual(methods["echo"]["aliases"], ["repeat"])
        self.assertNotIn("repeat", methods)
        self.assertEqual(methods["add"]["params"], ["a", "b"])
        self.assertEqual(methods["add"]["doc"], "Add two integers.")
        self.assertTrue(methods["store"]["upload"])
        self.assertTrue(self.dispatcher.isUpload("store"))
        self.assertFalse(self.dispatcher.isUpload("add"))
        self.assertFalse(self.dispatcher.isUpload("nope"))

    def test_published_twice(self) -> None:
        class Other:
            @method(name="add")
            def other(self, params: Params) -> None:
                pass

        with self.assertRaises(ValueError):
            Dispatcher(FakeService(), Other())


class ParamsTests(SynchronousTestCase):
    def invalid(self, f: Any, *args: Any, **kwargs: Any) -> errors.InvalidParams:
        with self.assertRaises(errors.InvalidParams) as cm:
            f(*args, **kwargs)
        return cm.exception

    def test_str(self) -> None:
        p = Params({"s": "abc", "n": 5, "e": "", "z": "a\x00b", "l": "x" * 10, "none": None})
        self.assertEqual(p.str("s"), "abc")
        self.assertEqual(p.str("n", allowNumber=True), "5")
        self.assertEqual(p.str("e", allowEmpty=True), "")
        self.assertEqual(p.str("missing", "d"), "d")
        self.assertEqual(p.str("none", None), None)
        self.assertEqual(self.invalid(p.str, "missing").data, {"param": "missing"})
        self.assertEqual(self.invalid(p.str, "none").data, {"param": "none"})
        self.assertIn("a number", self.invalid(p.str, "n").message)
        self.assertIn("empty", self.invalid(p.str, "e").message)
        self.assertIn("NUL", self.invalid(p.str, "z").message)
        self.assertIn("too long", self.invalid(p.str, "l", maxLength=9).message)
        self.assertIn("a name", self.invalid(p.str, "s", pattern=r"[0-9]+", what="a name")
                      .message)

    def test_int(self) -> None:
        p = Params({"i": 5, "s": " -12 ", "f": 3.0, "b": True, "x": "1e3", "h": 2.5})
        self.assertEqual(p.int("i"), 5)
        self.assertEqual(p.int("s"), -12)
        self.assertEqual(p.int("f"), 3)
        for name in ("b", "x", "h"):
            self.assertEqual(self.invalid(p.int, name).data, {"param": name})
        self.assertIn("at least 6", self.invalid(p.int, "i", min=6).message)
        self.assertIn("at most 4", self.invalid(p.int, "i", max=4).message)
        self.assertEqual(p.int("missing", 7), 7)

    def test_bool(self) -> None:
        p = Params({"t": True, "s": "yes", "z": 0, "bad": "maybe", "two": 2})
        self.assertIs(p.bool("t"), True)
        self.assertIs(p.bool("s"), True)
        self.assertIs(p.bool("z"), False)
        self.assertIs(p.bool("missing", False), False)
        self.invalid(p.bool, "bad")
        self.invalid(p.bool, "two")
        self.invalid(p.bool, "missing")

    def test_strList(self) -> None:
        p = Params({"l": ["a", "b"], "csv": "a, b,,c", "bad": [1], "obj": {}, "nul": ["a\x00"]})
        self.assertEqual(p.strList("l"), ["a", "b"])
        self.assertEqual(p.strList("csv"), ["a", "b", "c"])
        self.assertEqual(p.strList("missing", []), [])
        self.invalid(p.strList, "bad")
        self.invalid(p.strList, "obj")
        self.invalid(p.strList, "nul")
        self.invalid(p.strList, "l", maxItems=1)
        self.assertIn("'b'", self.invalid(p.strList, "l", pattern="a").message)

    def test_upload(self) -> None:
        upload = Upload("f", "x.sql", None, -1, 0, 0)
        p = Params({}, {"f": upload})
        self.assertIs(p.upload("f"), upload)
        error = self.invalid(p.upload, "g")
        self.assertEqual(error.data, {"param": "g"})
        self.assertIn("multipart/form-data", error.message)

    def test_contains(self) -> None:
        p = Params({"a": 1, "n": None})
        self.assertIn("a", p)
        self.assertNotIn("n", p)
        self.assertEqual(p.names(), {"a", "n"})


class UploadTests(SynchronousTestCase):
    def test_byte_range(self) -> None:
        """An Upload reads only its own byte range of the file, in chunks."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"HEADER" + bytes(range(256)) * 10 + b"TRAILER")
        fd = os.open(path, os.O_RDONLY)
        self.addCleanup(os.close, fd)
        upload = Upload("f", None, None, fd, 6, 2560)
        chunks = list(upload.chunks(1000))
        self.assertEqual([len(c) for c in chunks], [1000, 1000, 560])
        self.assertEqual(b"".join(chunks), bytes(range(256)) * 10)
        self.assertEqual(upload.read(2550, 100), bytes(range(246, 256)))
        self.assertEqual(upload.read(2560, 10), b"")


class WireErrorTests(SynchronousTestCase):
    """The error classes, their codes and HTTP statuses, as the README documents them."""

    def readmeTable(self) -> dict[int, str]:
        with open(os.path.join(ROOT, "README.md")) as f:
            text = f.read()
        return {int(code): meaning
                for code, meaning in re.findall(r"(?m)^\| (-?\d+) \| (.*) \|$", text)}

    def test_readme_table(self) -> None:
        """
        Every code in the README's table has an error class with that code
        (and the other way round), and those documented with an HTTP status
        carry it.
        """
        table = self.readmeTable()
        classes = {cls.code: cls for cls in errors._BY_CODE.values()}
        self.assertEqual(set(table), set(classes))
        for code, meaning in table.items():
            status = re.search(r"HTTP (\d{3})", meaning)
            self.assertEqual(classes[code].httpStatus, int(status.group(1)) if status else 200,
                             f"{code}: {meaning}")

    def test_codes(self) -> None:
        expected = {
            errors.ParseError: -32700, errors.InvalidRequest: -32600,
            errors.MethodNotFound: -32601, errors.InvalidParams: -32602,
            errors.InternalError: -32603, errors.Unauthorized: -32001,
            errors.TooLarge: -32002, errors.HTTPMethodNotAllowed: -32003,
            errors.WrongState: 1001, errors.NotFound: 1002, errors.MySQLError: 1003,
            errors.Conflict: 1004, errors.NotAvailable: 1005, errors.OperationFailed: 1006,
            errors.CloudError: 1007, errors.Timeout: 1008,
        }
        for cls, code in expected.items():
            self.assertEqual(cls.code, code)
            self.assertEqual(cls("m").toDict(), {"code": code, "message": "m"})

    def test_fromWire(self) -> None:
        """
        Every code comes back as an exception of the matching class (so
        C{except NotFound} works on the calling side), with message and data.
        """
        for cls in errors._BY_CODE.values():
            exc = errors.fromWire({"code": cls.code, "message": "msg", "data": {"x": [1]}})
            self.assertIsInstance(exc, cls)
            self.assertIsInstance(exc, errors.RemoteError)
            self.assertEqual((exc.code, exc.message, exc.data), (cls.code, "msg", {"x": [1]}))
        self.assertIs(type(errors.fromWire({"code": 1001})),
                      type(errors.fromWire({"code": 1001, "message": "x"})))

    def test_fromWire_odd(self) -> None:
        """Unknown codes, bare strings (the original's) and junk still make an RPCError."""
        unknown = errors.fromWire({"code": 4242, "message": "new"})
        self.assertEqual(unknown.code, 4242)
        self.assertIsInstance(unknown, errors.RemoteError)
        self.assertNotIsInstance(unknown, errors.NotFound)
        bare = errors.fromWire("Error: no such node")
        self.assertEqual((bare.code, bare.message), (-32603, "Error: no such node"))
        for junk in ({"code": True}, {"code": "1002"}, {}, [1], None):
            self.assertEqual(errors.fromWire(junk).code, -32603)

    def test_invalid_params_param(self) -> None:
        e = errors.InvalidParams("bad", "username")
        self.assertEqual(e.data, {"param": "username"})
        self.assertEqual(e.param, "username")
        self.assertIn("InvalidParams(-32602", repr(e))
