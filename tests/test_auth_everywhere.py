"""
Authentication everywhere: every method of the manager and of a real agent,
under every HTTP method and on every path, without a token, with a wrong
one or with another service's, is refused (401, or a 404/405 that reveals
nothing) and changes nothing; the web front-end's every route wants a
session.  An agent accepts only its own token (two LOCAL nodes); tokens are
compared in constant time; refusals are logged without the token.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from typing import Any

from twisted.internet.threads import deferToThread
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.test.requesthelper import DummyRequest

from conpaassql.gui.tap import GUIService
from conpaassql.gui.web import ROUTES
from conpaassql.rpc import resource as rpcresource
from conpaassql.rpc.errors import Unauthorized
from conpaassql.rpc.resource import TokenAuth
from tests.support import rawhttp
from tests.support.agent import startAgent
from tests.support.localmanager import startLocalManager
from tests.support.mariadb import skip_unless_mariadb
from tests.test_manager_api import ManagerFixture

VERBS = ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"]
PATHS = ["/", "/metrics", "/snapshot", "/ui/", "/ui/nodes", "/ui/api/nodes", "/nope",
         "/%2e%2e/etc/passwd", "//", "/?x=1"]


def credentials(token: str, others: list[str]) -> list[dict[str, str]]:
    """Authorization headers that must not get in (C{token} is the right one)."""
    wrong = [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer " + secrets.token_urlsafe(32)},
        {"Authorization": "Bearer " + token[:-1]},
        {"Authorization": "Bearer " + token + "x"},
        {"Authorization": "Basic " + base64.b64encode(f"admin:{token}".encode()).decode()},
        {"Authorization": token},
        {"X-Api-Token": token},
        {"Cookie": f"token={token}"},
    ]
    return wrong + [{"Authorization": f"Bearer {other}"} for other in others]


def _refused(testcase: TestCase, url: str, token: str, others: list[str],
             methods: list[str], secretsShown: list[str], guiMounted: bool = False) -> int:
    """
    Send every (path, verb, credentials, method) combination, blocking (in
    a thread); check each is refused and reveals nothing.

    @return: how many requests were sent.
    """
    sent = 0
    for path in PATHS:
        for verb in VERBS:
            for creds in credentials(token, others):
                # Every method on "/", and two (harmless and not) elsewhere.
                for name in methods if path == "/" else ["list_methods", "shutdown"]:
                    body = json.dumps({"method": name, "params": {}, "id": 1}).encode()
                    target = path + ("&" if "?" in path else "?") + f"method={name}&id=1"
                    headers: dict[str, str | bytes] = {**creds, "Content-Type": "application/json"}
                    data = rawhttp.request(verb, target, headers,
                                           body if verb in ("POST", "PUT", "PATCH") else b"")
                    reply = rawhttp._exchange(*rawhttp.hostPort(url), data, False,
                                              rawhttp.BOUND, verb == "HEAD")
                    sent += 1
                    what = (verb, path, creds, name)
                    assert reply is not None, what
                    text = reply.body.decode("utf-8", "replace")
                    for secret in secretsShown:
                        testcase.assertNotIn(secret, text, what)
                    if path.startswith("/ui") and guiMounted:
                        # The web front-end (its own sign-in; GUITests below
                        # covers it): sent to sign in, or refused.
                        testcase.assertIn(reply.status, (303, 401, 403, 404, 405), what)
                        if reply.status == 303:
                            testcase.assertIn("/ui/login", reply.headers["location"], what)
                        continue
                    testcase.assertIn(reply.status, (401, 404, 405), what)
                    if verb == "HEAD":
                        testcase.assertEqual(reply.body, b"", what)
                        continue
                    answer = json.loads(text)
                    testcase.assertIsNone(answer["result"], what)
                    if reply.status == 401:
                        testcase.assertEqual(answer["error"]["code"], Unauthorized.code, what)
                        testcase.assertEqual(reply.headers.get("www-authenticate"),
                                             'Bearer realm="conpaassql"')
    return sent


class ManagerAuthTests(TestCase):
    timeout = 600

    async def test_everything_refused(self) -> None:
        m = await ManagerFixture(self).start()
        await m.call("add_nodes", {"function": "agent"})
        await m.running(1)
        before = await m.call("get_node_info", {"serviceNodeId": 1})
        described = await m.call("list_methods")
        methods = sorted(n for d in described for n in [d["name"], *d["aliases"]])
        self.assertIn("shutdown", methods)
        agentToken = m.tokens[1]
        shown = [m.token, agentToken, before["serviceNode"]["name"]]
        sent = await deferToThread(_refused, self, m.url, m.token, [agentToken], methods, shown,
                                   True)
        self.assertGreater(sent, 1000)
        self.assertEqual(await m.call("get_node_info", {"serviceNodeId": 1}), before)
        self.assertEqual(await m.call("list_nodes"), {"serviceNode": [1]})
        self.assertEqual(m.stops, 0)
        self.assertEqual(m.agents[1].users, {"root": "localhost"})

    async def test_front_end_routes_need_a_session(self) -> None:
        """
        Every route of the web front-end, under every HTTP method, without a
        session (or with a forged one): a redirect to the sign-in page, 401,
        403, 404 or 405, never the manager's data.
        """
        m = await ManagerFixture(self).start()
        await m.call("add_nodes", {"function": "agent"})
        await m.running(1)
        info = (await m.call("get_node_info", {"serviceNodeId": 1}))["serviceNode"]
        gui = GUIService(os.path.abspath(self.mktemp()), m.url, "tcp:0:interface=127.0.0.1")
        gui.startService()
        self.addCleanup(gui.stopService)
        port = await gui.listening
        base = f"http://127.0.0.1:{port.getHost().port}"
        paths = sorted({"/ui/" + r.pattern.pattern.strip("^$").replace("(?P<id>[^/]+)", "1")
                        for r in ROUTES} | {"/ui", "/ui/static/../../etc/passwd", "/"})

        def check() -> int:
            sent = 0
            for path in paths:
                for verb in VERBS:
                    for cookie in ({}, {"Cookie": "conpaassql_session=" + "A" * 40},
                                   {"Authorization": f"Bearer {m.token}"}):
                        headers: dict[str, str | bytes] = {
                            **cookie, "Origin": base,
                            "Content-Type": "application/x-www-form-urlencoded"}
                        body = b"count=1&username=u&password=p&token=" + m.token.encode()
                        data = rawhttp.request(verb, path, headers,
                                               body if verb in ("POST", "PUT") else b"")
                        reply = rawhttp._exchange(*rawhttp.hostPort(base), data, False,
                                                  rawhttp.BOUND, verb == "HEAD")
                        sent += 1
                        what = (verb, path, cookie)
                        assert reply is not None, what
                        text = reply.body.decode("utf-8", "replace")
                        for secret in (m.token, m.tokens[1], info["name"], str(info["port"])):
                            self.assertNotIn(secret, text, what)
                        if path.startswith("/ui/login") and verb in ("GET", "HEAD"):
                            self.assertEqual(reply.status, 200, what)  # the sign-in form
                            continue
                        if reply.status in (302, 303):
                            self.assertIn("/ui/", reply.headers["location"], what)
                            continue
                        self.assertIn(reply.status, (401, 403, 404, 405), what)
            return sent

        self.assertGreater(await deferToThread(check), 300)
        self.assertEqual(await m.call("list_nodes"), {"serviceNode": [1]})


class AgentAuthTests(TestCase):
    skip = skip_unless_mariadb()
    timeout = 600

    async def test_everything_refused(self) -> None:
        agent = await startAgent(self)
        described = await agent.call("list_methods")
        methods = sorted(n for d in described for n in [d["name"], *d["aliases"]])
        self.assertIn("shutdown", methods)
        users = await agent.call("get_all_users")
        other = secrets.token_urlsafe(32)  # another service's token
        sent = await deferToThread(_refused, self, agent.url, agent.token, [other], methods,
                                   [agent.token])
        self.assertGreater(sent, 1000)
        self.assertEqual(agent.shutdowns, 0)
        self.assertEqual((await agent.state())["state"], "RUNNING")
        self.assertEqual(await agent.call("get_all_users"), users)


class AgentTokenTests(TestCase):
    """On the LOCAL driver, each node's agent accepts its own token only."""

    skip = skip_unless_mariadb()
    timeout = 600

    async def test_only_its_own_token(self) -> None:
        m = await startLocalManager(self, nodes=2)
        service, client, managerToken = m.service, m.client, m.token
        assert service.manager is not None
        agents = {}
        for nodeId in (1, 2):
            info = (await client.call("get_node_info", {"serviceNodeId": nodeId}))["serviceNode"]
            agents[nodeId] = (f"http://{info['ip']}:{info['port']}/",
                              service.manager.node(nodeId).core.record.token)
        self.assertNotEqual(agents[1][1], agents[2][1])
        for nodeId, (url, token) in agents.items():
            otherToken = agents[3 - nodeId][1]
            for presented, accepted in ((token, True), (managerToken, False),
                                        (otherToken, False)):
                data = rawhttp.request("GET", "/?method=get_server_state&id=1",
                                       {"Authorization": f"Bearer {presented}"})
                reply = await rawhttp.exchange(url, data)
                self.assertEqual(reply.status, 200 if accepted else 401, (nodeId, accepted))
                if accepted:
                    self.assertEqual(reply.json()["result"]["return"]["state"], "RUNNING")
                else:
                    self.assertEqual(reply.json()["error"]["code"], Unauthorized.code)


class _RecordingHmac:
    def __init__(self) -> None:
        self.compared: list[tuple[bytes, bytes]] = []

    def compare_digest(self, a: bytes, b: bytes) -> bool:
        self.compared.append((a, b))
        import hmac

        return hmac.compare_digest(a, b)


class ConstantTimeTests(SynchronousTestCase):
    def check(self, auth: TokenAuth, header: bytes) -> bool:
        request = DummyRequest([b""])
        request.requestHeaders.setRawHeaders(b"authorization", [header])
        try:
            auth.check(request)
        except Unauthorized:
            return False
        return True

    def test_compare_digest_against_every_token(self) -> None:
        """
        Every presented token is compared with C{hmac.compare_digest}, with
        every configured token, whether it matches or not (no early exit).
        """
        recorder = _RecordingHmac()
        self.patch(rpcresource, "hmac", recorder)
        auth = TokenAuth(["first-token", "second-token"])
        for header, ok in ((b"Bearer first-token", True), (b"Bearer second-token", True),
                           (b"Bearer first-tokex", False), (b"Bearer x", False)):
            recorder.compared.clear()
            self.assertEqual(self.check(auth, header), ok)
            presented = header.split(b" ", 1)[1]
            self.assertEqual(recorder.compared, [(presented, b"first-token"),
                                                 (presented, b"second-token")])

    def test_no_plain_comparison(self) -> None:
        """The check's code compares tokens only through compare_digest."""
        import inspect

        source = inspect.getsource(TokenAuth.check)
        self.assertIn("hmac.compare_digest", source)
        self.assertNotIn("candidate ==", source)
        self.assertNotIn("== token", source)
        self.assertNotIn("candidate in", source)


class RefusalLogTests(TestCase):
    timeout = 120

    async def test_refusals_logged_without_the_token(self) -> None:
        logged: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            logged.append(formatEvent(event) or "")
            logged.append(repr(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        m = await ManagerFixture(self).start()
        presented = [secrets.token_urlsafe(24) for _ in range(3)]
        forms = [f"Bearer {presented[0]}", f"Basic {presented[1]}", f"{presented[2]}"]
        for header in forms:
            for data in (
                rawhttp.request("GET", f"/?method=list_nodes&id=1&token={presented[0]}",
                                {"Authorization": header}),
                rawhttp.request("POST", "/", {"Authorization": header},
                                b'{"method": "list_nodes", "id": 1}'),
            ):
                reply = await rawhttp.exchange(m.url, data)
                self.assertEqual(reply.status, 401)
        text = "\n".join(logged)
        for value in presented + [m.token]:
            self.assertNotIn(value, text)
        refusals = [line for line in logged if "refused a request from 127.0.0.1" in line]
        self.assertGreaterEqual(len(refusals), 6)
        self.assertTrue(any("wrong token" in line for line in refusals))
