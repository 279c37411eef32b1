"""
The web front-end over real HTTP: the stand-alone service
(L{conpaassql.gui.tap.GUIService}) on a free port, in front of a fake
manager served by the project's own JSON-RPC resource on another.
"""

from __future__ import annotations

import html
import json
import os
import re
from typing import Any
from urllib.parse import urlencode

import treq
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from conpaassql.gui.tap import GUIService
from tests.support.fakemanager import FakeManager, serveFakeManager

TOKEN = "manager-token-Zq81xW3pLk"


class Response:
    def __init__(self, code: int, headers: Any, body: bytes) -> None:
        self.code = code
        self.headers = headers
        self.body = body
        self.text = body.decode("utf-8", "replace")

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    def csrf(self) -> str:
        match = re.search(r'<meta name="csrf-token" content="([^"]*)"', self.text)
        assert match, "page without a CSRF token"
        return match.group(1)

    def json(self) -> Any:
        return json.loads(self.body)


class WebClient:
    """A cookie-keeping HTTP client that records every URL it asked for."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.origin = base.split("/ui/")[0]
        self.cookies: dict[str, str] = {}
        self.setCookies: list[str] = []
        self.urls: list[str] = []
        self._pool = HTTPConnectionPool(reactor, persistent=False)
        self._http = HTTPClient(Agent(reactor, pool=self._pool))

    async def close(self) -> None:
        await self._pool.closeCachedConnections()

    async def request(self, method: str, path: str, *, data: Any = None,
                      headers: dict[str, str] | None = None, files: Any = None,
                      origin: str | None | bool = True) -> Response:
        url = path if path.startswith("http") else self.base + path
        self.urls.append(url)
        sent = {k: [v] for k, v in (headers or {}).items()}
        if origin is True and method == "POST":
            sent["Origin"] = [self.origin]
        elif isinstance(origin, str):
            sent["Origin"] = [origin]
        if self.cookies:
            sent["Cookie"] = ["; ".join(f"{k}={v}" for k, v in self.cookies.items())]
        response = await self._http.request(
            method, url, data=data, files=files, headers=sent, allow_redirects=False,
            timeout=60,
        )
        body = await treq.content(response)
        for raw in response.headers.getRawHeaders("set-cookie", []):
            self.setCookies.append(raw)
            name, _, rest = raw.partition("=")
            value = rest.split(";", 1)[0]
            if "max-age=0" in raw.lower() or not value:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        return Response(response.code, response.headers, body)

    async def get(self, path: str, **kw: Any) -> Response:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, fields: dict[str, Any] | None = None, **kw: Any) -> Response:
        headers = kw.pop("headers", {})
        if fields is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            kw["data"] = urlencode(fields).encode("utf-8")
        return await self.request("POST", path, headers=headers, **kw)

    async def signIn(self, token: str = TOKEN) -> Response:
        page = await self.get("login")
        return await self.post("login", {"csrf": page.csrf(), "token": token})


class GUITestCase(TestCase):
    """A fake manager, the front-end in front of it, a client, captured logs."""

    timeout = 120
    apiOptions: dict[str, Any] = {}

    def captureLogs(self) -> None:
        """Keep every log line (and traceback) of the test in C{self.logged}."""
        self.logged: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            self.logged.append(formatEvent(event) or "")
            if "log_failure" in event:
                self.logged.append(event["log_failure"].getTraceback())

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    async def startFrontEnd(self, managerURL: str) -> None:
        """The stand-alone front-end for C{managerURL} on a free port, and a client."""
        state = os.path.abspath(self.mktemp())
        self.gui = GUIService(state, managerURL, "tcp:0:interface=127.0.0.1")
        self.gui.startService()
        self.addCleanup(self.gui.stopService)
        port = await self.gui.listening
        self.base = f"http://127.0.0.1:{port.getHost().port}/ui/"
        self.web = WebClient(self.base)
        self.addCleanup(self.web.close)

    async def startGUI(self, **apiOptions: Any) -> None:
        self.captureLogs()
        self.manager: FakeManager = serveFakeManager(TOKEN, **{**self.apiOptions, **apiOptions})
        self.addCleanup(self.manager.stop)
        self.api = self.manager.api
        await self.startFrontEnd(self.manager.url)

    async def signedIn(self, **apiOptions: Any) -> WebClient:
        await self.startGUI(**apiOptions)
        response = await self.web.signIn()
        self.assertEqual(response.code, 303, response.text)
        return self.web


PAGES = ["", "nodes", "nodes/1", "nodes/1/remove"]
ACTIONS = ["logout", "nodes/add", "nodes/1/remove", "nodes/1/master", "nodes/1/slave",
           "nodes/1/users", "nodes/1/users/delete", "nodes/1/dump"]


class SignInTests(GUITestCase):
    async def test_pages_need_sign_in(self) -> None:
        """Every page redirects to the sign-in form; JSON answers 401."""
        await self.startGUI()
        self.api.addNode(state="RUNNING")
        for path in PAGES:
            response = await self.web.get(path)
            self.assertEqual((response.code, response.header("location")), (303, "/ui/login"),
                             path)
        for path in ["api/nodes", "api/service"]:
            response = await self.web.get(path)
            self.assertEqual(response.code, 401)
            self.assertEqual(response.json()["signIn"], "/ui/login")
        self.assertEqual(self.api.calls, [])

    async def test_actions_need_sign_in(self) -> None:
        """A POST from the front-end's own origin without a session does nothing."""
        await self.startGUI()
        self.api.addNode(state="RUNNING")
        # A pre-session cookie and its valid CSRF token are not a session.
        csrf = (await self.web.get("login")).csrf()
        for path in ACTIONS:
            response = await self.web.post(path, {"csrf": csrf, "username": "x", "count": "1"})
            self.assertEqual(response.code, 401, path)
            self.assertIn("not signed in", response.text)
        self.assertEqual(self.api.calls, [])

    async def test_sign_in(self) -> None:
        await self.startGUI()
        login = await self.web.get("login")
        self.assertEqual(login.code, 200)
        presession = self.web.cookies["conpaassql_session"]
        response = await self.web.post("login", {"csrf": login.csrf(), "token": TOKEN})
        self.assertEqual((response.code, response.header("location")), (303, "/ui/"))
        # The session id is new (no fixation) and the cookie is locked down.
        session = self.web.cookies["conpaassql_session"]
        self.assertNotEqual(session, presession)
        cookie = self.web.setCookies[-1]
        for flag in ["HttpOnly", "SameSite=strict", "Path=/ui/"]:
            self.assertIn(flag, cookie)
        page = await self.web.get("")
        self.assertEqual(page.code, 200)
        self.assertIn("Sign out", page.text)
        # Signed in, the sign-in form sends you on.
        self.assertEqual((await self.web.get("login")).code, 303)

    async def test_wrong_token(self) -> None:
        """A token the manager refuses is refused with a message; no session."""
        await self.startGUI()
        response = await self.web.signIn("not-the-token")
        self.assertEqual(response.code, 401)
        self.assertIn("The manager refused this token", response.text)
        self.assertEqual((await self.web.get("nodes")).code, 303)
        self.assertNotIn("not-the-token", response.text)

    async def test_not_a_token(self) -> None:
        await self.startGUI()
        response = await self.web.signIn("x" * 2000)
        self.assertEqual(response.code, 400)
        self.assertIn("That is not an API token", response.text)
        self.assertEqual(self.api.calls, [])

    async def test_empty_token(self) -> None:
        await self.startGUI()
        response = await self.web.signIn("   ")
        self.assertEqual(response.code, 400)
        self.assertIn("Enter the manager's API token.", html.unescape(response.text))

    async def test_manager_unreachable(self) -> None:
        """Signing in while the manager is down says so, naming its URL."""
        await self.startGUI()
        await self.manager.stop()
        response = await self.web.signIn()
        self.assertEqual(response.code, 502)
        self.assertIn(f"Cannot reach the manager at {self.manager.url}", html.unescape(response.text))

    async def test_sign_out(self) -> None:
        web = await self.signedIn()
        page = await web.get("")
        response = await web.post("logout", {"csrf": page.csrf()})
        self.assertEqual((response.code, response.header("location")), (303, "/ui/login"))
        self.assertNotIn("conpaassql_session", web.cookies)
        # The old session id no longer works even if replayed.
        replayed = re.search(r"conpaassql_session=([^;]+)", web.setCookies[-2])
        assert replayed is not None
        web.cookies["conpaassql_session"] = replayed.group(1)
        self.assertEqual((await web.get("")).code, 303)

    async def test_token_revoked(self) -> None:
        """When the manager stops taking the session's token, the session ends."""
        web = await self.signedIn()
        auth = self.manager.port.factory.resource.auth
        auth._tokens = [b"rotated"]
        response = await web.get("nodes")
        self.assertEqual(response.code, 401)
        self.assertIn("The manager refused the API token", response.text)
        self.assertEqual((await web.get("nodes")).code, 303)
        # The same from pages that make several calls at once, and from JSON.
        for path in ["", "nodes/1", "api/service"]:
            auth._tokens = [TOKEN.encode()]
            web.cookies.clear()
            self.assertEqual((await web.signIn()).code, 303)
            auth._tokens = [b"rotated"]
            response = await web.get(path)
            self.assertEqual(response.code, 401, path)
            self.assertIn("The manager refused the API token", response.text)
            self.assertEqual((await web.get(path)).code, 303 if path != "api/service" else 401)

    async def test_token_never_in_url_or_log(self) -> None:
        from conpaassql.rpc.resource import RPCSite

        self.patch(RPCSite, "accessLogInterval", 0)  # access log lines at once
        web = await self.signedIn()
        self.api.addNode(state="RUNNING")
        for path in PAGES + ["api/nodes", "api/service"]:
            response = await web.get(path)
            self.assertNotIn(TOKEN, response.text)
            self.assertNotIn(TOKEN, str(list(response.headers.getAllRawHeaders())))
        other = WebClient(self.base)
        self.addCleanup(other.close)
        await other.signIn("wrong-" + TOKEN)
        self.assertTrue(any("GET /ui/nodes" in line for line in self.logged))
        for url in web.urls + other.urls:
            self.assertNotIn(TOKEN, url)
        for line in self.logged:
            self.assertNotIn(TOKEN, line)


class CSRFTests(GUITestCase):
    async def test_refused_without_token(self) -> None:
        web = await self.signedIn()
        response = await web.post("nodes/add", {"count": "1"})
        self.assertEqual(response.code, 403)
        self.assertIn("security token is missing or out of date", response.text)
        self.assertEqual(self.api.called("add_nodes"), [])

    async def test_refused_with_wrong_token(self) -> None:
        web = await self.signedIn()
        csrf = (await web.get("nodes")).csrf()
        for bad in ["x", csrf[:-1], csrf + "x", csrf.swapcase()]:
            response = await web.post("nodes/add", {"count": "1", "csrf": bad})
            self.assertEqual(response.code, 403)
        self.assertEqual(self.api.called("add_nodes"), [])

    async def test_refused_with_another_sessions_token(self) -> None:
        web = await self.signedIn()
        other = WebClient(self.base)
        self.addCleanup(other.close)
        await other.signIn()
        otherCsrf = (await other.get("nodes")).csrf()
        response = await web.post("nodes/add", {"count": "1", "csrf": otherCsrf})
        self.assertEqual(response.code, 403)
        self.assertEqual(self.api.called("add_nodes"), [])

    async def test_refused_from_another_origin(self) -> None:
        """A forged cross-site POST is refused even with a valid token."""
        web = await self.signedIn()
        csrf = (await web.get("nodes")).csrf()
        response = await web.post("nodes/add", {"count": "1", "csrf": csrf},
                                  origin="https://evil.example")
        self.assertEqual(response.code, 403)
        self.assertIn("came from another site", html.unescape(response.text))
        response = await web.post("nodes/add", {"count": "1", "csrf": csrf}, origin=False,
                                  headers={"Referer": "https://evil.example/page"})
        self.assertEqual(response.code, 403)
        response = await web.post("nodes/add", {"count": "1", "csrf": csrf}, origin=False)
        self.assertEqual(response.code, 403)
        self.assertIn("no Origin or Referer", response.text)
        # A sandboxed frame or a data: page sends "Origin: null".
        response = await web.post("nodes/add", {"count": "1", "csrf": csrf}, origin="null")
        self.assertEqual(response.code, 403)
        self.assertEqual(self.api.called("add_nodes"), [])
        # The same request from the front-end's own page goes through.
        response = await web.post("nodes/add", {"count": "1", "csrf": csrf}, origin=False,
                                  headers={"Referer": self.base + "nodes"})
        self.assertEqual(response.code, 303)
        self.assertEqual(len(self.api.called("add_nodes")), 1)

    async def test_sign_in_form_is_protected(self) -> None:
        """Login CSRF: the sign-in POST needs the form's token and the own origin."""
        await self.startGUI()
        await self.web.get("login")
        response = await self.web.post("login", {"token": TOKEN})
        self.assertEqual(response.code, 403)
        csrf = (await self.web.get("login")).csrf()
        response = await self.web.post("login", {"token": TOKEN, "csrf": csrf},
                                       origin="https://evil.example")
        self.assertEqual(response.code, 403)
        self.assertEqual((await self.web.get("nodes")).code, 303)

    async def test_no_destructive_get(self) -> None:
        web = await self.signedIn()
        self.api.addNode(state="RUNNING")
        for path in ACTIONS:
            if path == "nodes/1/remove":
                continue  # the confirmation page
            response = await web.get(path)
            self.assertIn(response.code, (404, 405), path)
        self.assertIn("Remove node 1 (conpaassql-agent-1)?", html.unescape((await web.get("nodes/1/remove")).text))
        self.assertEqual([c for c in self.api.calls], [])
        self.assertIn(1, self.api.nodes)

    async def test_security_headers(self) -> None:
        web = await self.signedIn()
        self.api.addNode(state="RUNNING")
        for path in PAGES + ["api/nodes", "api/service", "login", "static/app.js"]:
            response = await web.get(path)
            csp = response.header("content-security-policy") or ""
            self.assertIn("script-src 'self'", csp, path)
            self.assertNotIn("unsafe-inline", csp)
            self.assertIn("frame-ancestors 'none'", csp)
            self.assertEqual(response.header("x-frame-options"), "DENY")
            self.assertEqual(response.header("x-content-type-options"), "nosniff")
            if not path.startswith("static"):
                self.assertEqual(response.header("cache-control"), "no-store", path)
            self.assertNotIn("<script>", response.text)
            self.assertIsNone(re.search(r"<[^>]+\son[a-z]+=", response.text), path)


HOSTILE_NAME = '<script>alert("name")</script>'
HOSTILE_USER = '"><img src=x onerror=alert(1)>'


class PageTests(GUITestCase):
    async def act(self, web: WebClient, path: str, page: str, **fields: str) -> Response:
        """POST C{fields} to C{path} the way the page C{page} would; follow the redirect."""
        csrf = (await web.get(page)).csrf()
        response = await web.post(path, {"csrf": csrf, **fields})
        self.assertEqual(response.code, 303, response.text)
        location = response.header("location")
        assert location is not None
        return await web.get(location.removeprefix("/ui/"))

    async def test_escaping(self) -> None:
        """Hostile node names, errors and user names are shown as text."""
        web = await self.signedIn()
        node = self.api.addNode(state="RUNNING", name=HOSTILE_NAME, error="<b>bad</b> & worse")
        self.api.users[node["id"]][HOSTILE_USER] = "pw"
        for path in ["nodes", f"nodes/{node['id']}", f"nodes/{node['id']}/remove"]:
            text = (await web.get(path)).text
            self.assertNotIn("<script>alert", text, path)
            self.assertNotIn("<img", text, path)
            self.assertNotIn("<b>bad", text, path)
        text = (await web.get(f"nodes/{node['id']}")).text
        self.assertIn("<dd>&lt;script&gt;alert(\"name\")&lt;/script&gt;</dd>", text)
        self.assertIn("&quot;&gt;&lt;img src=x onerror=alert(1)&gt;", text)
        # Deleting the hostile user round-trips its exact name.
        page = await self.act(web, f"nodes/{node['id']}/users/delete", f"nodes/{node['id']}",
                              username=HOSTILE_USER)
        self.assertEqual(self.api.called("delete_user")[-1]["username"], HOSTILE_USER)
        self.assertIn("was deleted", page.text)
        self.assertNotIn("<img", page.text)
        # The JSON for the live table carries the name as data, for textContent.
        rows = (await web.get("api/nodes")).json()["nodes"]
        self.assertEqual(rows[0]["name"], HOSTILE_NAME)

    async def test_nodes_lifecycle(self) -> None:
        web = await self.signedIn()
        page = await self.act(web, "nodes/add", "nodes", count="2")
        self.assertEqual(self.api.called("add_nodes"), [{"function": "agent", "count": 2}])
        self.assertIn("Adding 2 node(s): 1, 2", page.text)
        # Added PENDING; the fake moves a node one step per get_node_info.
        self.assertEqual(page.text.count('class="state state-BOOTING"'), 2)
        states = []
        for _ in range(2):
            rows = (await web.get("api/nodes")).json()["nodes"]
            states.append([r["state"] for r in rows])
        self.assertEqual(states, [["RUNNING"] * 2, ["RUNNING"] * 2])
        self.assertEqual(rows[0]["mysql"], True)
        page = await self.act(web, "nodes/1/remove", "nodes/1/remove")
        self.assertIn("Node 1 is being removed.", page.text)
        self.assertEqual(sorted(self.api.nodes), [2])
        page = await self.act(web, "nodes/add", "nodes", count="0")
        self.assertIn("Enter a number of nodes from 1 to 20.", page.text)
        self.assertEqual(len(self.api.called("add_nodes")), 1)

    async def test_error_in_words(self) -> None:
        web = await self.signedIn()
        page = await self.act(web, "nodes/7/remove", "nodes")
        self.assertIn("Not found: no node 7 in this service", page.text)
        page = await web.get("nodes/7")
        self.assertIn("Not found: no node 7 in this service", page.text)

    async def test_users(self) -> None:
        web = await self.signedIn()
        node = self.api.addNode(state="RUNNING")
        nodePage = f"nodes/{node['id']}"
        page = await self.act(web, f"{nodePage}/users", nodePage,
                              username="app", password="s3cret", confirm="other")
        self.assertIn("The two passwords differ", page.text)
        self.assertEqual(self.api.called("configure_user"), [])
        page = await self.act(web, f"{nodePage}/users", nodePage,
                              username="app", password="s3cret", confirm="s3cret")
        self.assertIn("User app is set up on node 1.", page.text)
        self.assertEqual(self.api.called("configure_user"),
                         [{"serviceNodeId": 1, "username": "app", "password": "s3cret"}])
        self.assertIn('<tr data-user="app"><td>app</td><td>%</td>', page.text)
        self.assertNotIn("s3cret", page.text)
        page = await self.act(web, f"{nodePage}/users/delete", nodePage, username="ghost")
        self.assertIn("Not found: no user 'ghost' on node 1", html.unescape(page.text))
        page = await self.act(web, f"{nodePage}/users/delete", nodePage, username="app",
                              host="%")
        self.assertEqual(self.api.called("delete_user")[-1],
                         {"serviceNodeId": 1, "username": "app", "host": "%"})
        self.assertNotIn('data-user="app"', page.text)
        # The service's own users are shown without a delete button.
        self.assertIn('<tr data-user="root"><td>root</td><td>localhost</td><td><span '
                      'class="muted">managed by the service</span>', page.text)
        self.assertNotIn('name="username" value="root"', page.text)

    async def test_upload_streams_to_manager(self) -> None:
        """The XHR upload answers JSON; the dump reaches send_mysqldump whole."""
        web = await self.signedIn()
        node = self.api.addNode(state="RUNNING")
        csrf = (await web.get(f"nodes/{node['id']}")).csrf()
        dump = b"CREATE TABLE t (a INT);\n" + b"INSERT INTO t VALUES (1);\n" * 20000
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(dump)
        with open(path, "rb") as f:
            response = await web.request(
                "POST", f"nodes/{node['id']}/dump",
                files={"mysqldump": ("shop.sql", "application/sql", f)},
                headers={"Accept": "application/json", "X-CSRF-Token": csrf},
            )
        self.assertEqual(response.code, 200, response.text)
        self.assertEqual(response.json()["ok"], True)
        self.assertEqual(response.json()["message"], "The dump shop.sql was loaded into node 1.")
        self.assertEqual(self.api.uploads, [(1, "shop.sql", dump)])
        # Without the CSRF header or field: refused, nothing sent on.
        with open(path, "rb") as f:
            response = await web.request(
                "POST", f"nodes/{node['id']}/dump",
                files={"mysqldump": ("shop.sql", "application/sql", f)},
                headers={"Accept": "application/json"},
            )
        self.assertEqual(response.code, 403)
        self.assertEqual(len(self.api.uploads), 1)

    async def test_upload_without_script(self) -> None:
        """A plain form upload (no script) redirects back with the outcome."""
        web = await self.signedIn()
        self.api.autoRun = False
        node = self.api.addNode(state="BOOTING")
        csrf = (await web.get(f"nodes/{node['id']}")).csrf()
        response = await web.request(
            "POST", f"nodes/{node['id']}/dump", data={"csrf": csrf},
            files={"mysqldump": ("d.sql", "application/sql", _bytesFile(b"SELECT 1;\n"))},
        )
        self.assertEqual(response.code, 303)
        page = await web.get(f"nodes/{node['id']}")
        self.assertIn("Not possible in the current state: node 1 is BOOTING, not RUNNING",
                      page.text)

    async def test_replication_not_available(self) -> None:
        """Before the replication work, make master/slave show the API's error."""
        web = await self.signedIn()
        self.api.addNode(state="RUNNING")
        page = await self.act(web, "nodes/1/master", "nodes", back="nodes")
        self.assertIn("Not available in this deployment: replication is not available yet",
                      page.text)
        page = await self.act(web, "nodes/1/slave", "nodes/1", back="node")
        self.assertIn("<h1>Node 1", page.text)
        self.assertIn("Not available in this deployment", page.text)
        service = (await web.get("api/service")).json()
        self.assertIsNone(service["performance"])
        self.assertIn("Not available in this deployment", service["performanceError"])
        self.assertIn("service performance figures are not available yet",
                      (await web.get("")).text)

    async def test_replication(self) -> None:
        web = await self.signedIn(replication=True)
        self.api.addNode(state="RUNNING")
        self.api.addNode(state="RUNNING")
        page = await self.act(web, "nodes/1/master", "nodes", back="nodes")
        self.assertIn("Node 1 is now the master.", page.text)
        page = await self.act(web, "nodes/2/slave", "nodes/2", back="node")
        self.assertIn("Node 2 is being set up as a slave.", page.text)
        self.assertIn("seconds_behind_master", page.text)
        rows = (await web.get("api/nodes")).json()["nodes"]
        self.assertEqual([(r["role"], r["lag"]) for r in rows], [("MASTER", None), ("SLAVE", 0.0)])
        node = (await web.get("api/nodes/2")).json()
        self.assertIn(["seconds_behind_master", "0"], node["replication"])
        self.assertIn(["Role", "SLAVE"], node["details"])
        self.assertIsNone(node["lastError"])
        missing = (await web.get("api/nodes/9")).json()
        self.assertEqual((missing["ok"], missing["error"]),
                         (False, "Not found: no node 9 in this service"))
        service = (await web.get("api/service")).json()
        self.assertEqual(service["service"]["master"], 1)
        self.assertEqual(set(service["performance"]), {"qps", "connections", "lag"})
        self.assertEqual(service["performance"]["connections"], 3.0)
        page = await web.get("")
        self.assertIn('href="/ui/nodes/1" id="service-master">node 1<', page.text)


def _bytesFile(data: bytes) -> Any:
    import io

    return io.BytesIO(data)


class MountedTests(GUITestCase):
    """
    The front-end mounted as C{/ui/} of the manager's own site, beside the
    JSON-RPC resource at C{/}, calling the API of the site it is part of (as
    the manager will serve it).
    """

    async def test_under_the_managers_site(self) -> None:
        from twisted.web.resource import Resource

        from conpaassql.gui.tap import ManagerClients
        from conpaassql.gui.web import makeGUIResource
        from conpaassql.rpc.client import RPCClient
        from conpaassql.rpc.dispatch import Dispatcher, Introspection
        from conpaassql.rpc.resource import RPCResource, TokenAuth, makeSite
        from tests.support.fakemanager import FakeManagerAPI

        self.captureLogs()
        self.api = FakeManagerAPI()
        self.api.addNode(state="RUNNING")
        dispatcher = Dispatcher(self.api)
        dispatcher.collect(Introspection(dispatcher))
        clients = ManagerClients("http://unset/", reactor=reactor)
        self.addCleanup(clients.close)
        gui = makeGUIResource(clients.forToken, reactor=reactor, secret=b"s" * 32)
        root = Resource()
        root.putChild(b"", RPCResource(dispatcher, TokenAuth([TOKEN])))
        root.putChild(b"ui", gui)
        port = reactor.listenTCP(0, makeSite(root, uploadDir=os.path.abspath(".")),
                                 interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = f"http://127.0.0.1:{port.getHost().port}/"
        clients.url = gui.managerURL = url
        self.web = WebClient(url + "ui/")
        self.addCleanup(self.web.close)

        response = await self.web.get(url + "ui")
        self.assertEqual((response.code, response.header("location")), (303, "/ui/"))
        self.assertEqual((await self.web.signIn()).code, 303)
        csrf = (await self.web.get("nodes")).csrf()
        response = await self.web.post("nodes/add", {"csrf": csrf, "count": "1"})
        self.assertEqual(response.code, 303)
        self.assertEqual(sorted(self.api.nodes), [1, 2])
        response = await self.web.request(
            "POST", "nodes/1/dump", files={"mysqldump": ("d.sql", "text/plain",
                                                         _bytesFile(b"SELECT 1;\n"))},
            headers={"Accept": "application/json", "X-CSRF-Token": csrf},
        )
        self.assertEqual(response.json()["ok"], True, response.text)
        self.assertEqual(self.api.uploads, [(1, "d.sql", b"SELECT 1;\n")])
        # The API is still served at / beside it.
        client = RPCClient(url, TOKEN, reactor=reactor)
        self.addCleanup(client.close)
        self.assertEqual(await client.call("list_nodes"), {"serviceNode": [1, 2]})
