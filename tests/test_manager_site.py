"""
The manager's site over real HTTP: JSON-RPC at C{/} as before, the web
front-end at C{/ui/} of the same port, other resources mounted with
C{addChild}, and uploads (through the API and through the front-end)
streamed to disk, not held in memory.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import treq
from twisted.internet import reactor as _reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool
from twisted.web.resource import Resource

from conpaassql.manager.tap import loopbackURL
from conpaassql.rpc.errors import NotFound
from tests.test_gui_http import WebClient
from tests.test_manager_api import ManagerFixture

reactor: Any = _reactor

UPLOAD_SIZE = 50 * 1024 * 1024
#: How much more the peak resident memory may grow during a 50 MB upload.
MEMORY_SLACK = 8 * 1024 * 1024


def peakRSS() -> int:
    """This process's peak resident memory (VmHWM), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/self/status")


def resetPeakRSS() -> bool:
    """Reset VmHWM to the current RSS (Linux 4.0+); whether it could be."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


class _Hello(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"hello"


class SiteTests(TestCase):
    timeout = 300

    async def setUp(self) -> None:  # type: ignore[override]
        self.m = await ManagerFixture(self).start()
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.web = WebClient(self.m.url + "ui/")
        self.addCleanup(self.web.close)

    async def http(self, method: str, path: str, **kwargs: Any) -> tuple[int, bytes, Any]:
        headers = kwargs.pop("headers", {b"Authorization": [b"Bearer " + self.m.token.encode()]})
        response = await treq.request(method, self.m.url + path, headers=headers,
                                      pool=self.pool, allow_redirects=False, **kwargs)
        return response.code, await treq.content(response), response.headers

    async def test_gui_at_ui(self) -> None:
        """
        /ui redirects to /ui/, which asks to sign in; the manager's own token
        signs in and the nodes page shows the manager's nodes; a wrong token
        is refused.
        """
        await self.m.call("add_nodes", {"function": "agent"})
        response = await self.web.get(self.m.url + "ui")
        self.assertEqual((response.code, response.header("location")), (303, "/ui/"))
        response = await self.web.get("")
        self.assertEqual(response.code, 303)
        self.assertIn("login", response.header("location") or "")
        login = await self.web.get("login")
        self.assertEqual(login.code, 200)
        self.assertIn("token", login.text.lower())
        refused = await self.web.signIn("not-the-token")
        self.assertNotEqual(refused.code, 303)
        self.assertEqual((await self.web.signIn(self.m.token)).code, 303)
        nodes = await self.web.get("nodes")
        self.assertEqual(nodes.code, 200)
        self.assertIn("conpaassql-", nodes.text)
        self.assertEqual(self.m.service.gui.managerURL, self.m.url)  # type: ignore[union-attr]

    async def test_jsonrpc_unchanged(self) -> None:
        """
        GET /?method=, POST / and the JSON errors of other paths are as they
        were without the front-end.
        """
        code, body, _ = await self.http("GET", "?method=list_nodes&id=7")
        self.assertEqual(
            (code, body), (200, b'{"result":{"serviceNode":[]},"error":null,"id":"7"}'))
        code, body, _ = await self.http(
            "POST", "", data=b'{"method": "get_service_info", "id": 1}')
        self.assertEqual(code, 200)
        self.assertIn(b'"type":"conpaassql"', body)
        code, body, headers = await self.http("GET", "nowhere?method=list_nodes")
        self.assertEqual(code, 404)
        self.assertIn(str(NotFound.code).encode(), body)
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/json"])
        code, _, _ = await self.http("GET", "?method=list_nodes", headers={})
        self.assertEqual(code, 401)

    async def test_add_child(self) -> None:
        """
        A resource mounted with addChild (as /metrics will be) is served
        beside the API, also after the service started.
        """
        self.m.service.addChild("hello", _Hello())
        code, body, _ = await self.http("GET", "hello", headers={})
        self.assertEqual((code, body), (200, b"hello"))
        with self.assertRaises(ValueError):
            self.m.service.addChild("a/b", _Hello())

    async def test_uploads_streamed(self) -> None:
        """
        A 50 MB upload to the API, and one through the front-end (which
        streams it on to the API), do not raise this process's peak memory
        (the manager runs in it) by more than a few MB.
        """
        if not resetPeakRSS():
            self.skipTest("cannot reset VmHWM (/proc/self/clear_refs) here")
        path = os.path.join(tempfile.mkdtemp(dir=os.path.abspath(".")), "big.sql")
        with open(path, "wb") as f:
            for _ in range(UPLOAD_SIZE // (1024 * 1024)):
                f.write(b"-- " + b"x" * (1024 * 1024 - 4) + b"\n")
        self.assertTrue(resetPeakRSS())
        before = peakRSS()
        with open(path, "rb") as dump:
            code, body, _ = await self.http(
                "POST", "", data={"method": "send_mysqldump", "serviceNodeId": "99"},
                files={"mysqldump": ("big.sql", "text/plain", dump)})
        self.assertEqual(code, 200)
        self.assertIn(b"node 99", body)
        api = peakRSS() - before

        self.assertEqual((await self.web.signIn(self.m.token)).code, 303)
        csrf = (await self.web.get("nodes")).csrf()
        self.assertTrue(resetPeakRSS())
        before = peakRSS()
        with open(path, "rb") as dump:
            response = await self.web.request(
                "POST", "nodes/99/dump", files={"mysqldump": ("big.sql", "text/plain", dump)},
                headers={"Accept": "application/json", "X-CSRF-Token": csrf})
        self.assertEqual(response.json()["ok"], False, response.text)
        self.assertIn("99", response.json()["error"])
        gui = peakRSS() - before
        self.assertLess(api, MEMORY_SLACK, f"the API upload raised VmHWM by {api} bytes")
        self.assertLess(gui, MEMORY_SLACK, f"the front-end upload raised VmHWM by {gui} bytes")


class LoopbackURLTests(TestCase):
    def test_loopback(self) -> None:
        self.assertEqual(loopbackURL("0.0.0.0", 5), "http://127.0.0.1:5/")
        self.assertEqual(loopbackURL("::", 5), "http://[::1]:5/")
        self.assertEqual(loopbackURL("10.0.0.5", 5), "http://10.0.0.5:5/")
        self.assertEqual(loopbackURL("::1", 5), "http://[::1]:5/")
