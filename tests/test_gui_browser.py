"""
The web front-end in a real browser: headless Chromium driven through
Selenium (Debian's C{chromium} and C{chromium-driver}, installed by
C{tools/setup}).

The WebDriver calls block, so each runs in a thread (C{deferToThread}) while
the reactor keeps serving the front-end and the manager.  A screenshot of
each main page is saved into C{artifacts/gui/} (git-ignored).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest
from twisted.web import resource
from twisted.web.server import Site

from tests.test_gui_http import GUITestCase

ARTIFACTS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "artifacts", "gui"
)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
#: How long to wait for something to appear in the page (generous: the
#: machine is shared).
WAIT = 120


def _startDriver(width: int, height: int) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--disable-extensions", "--no-first-run", f"--window-size={width},{height}"]:
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


class _EvilPage(resource.Resource):
    """A page of another site that posts a forged form to the front-end."""

    isLeaf = True

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target

    def render_GET(self, request: Any) -> bytes:
        return (
            "<!DOCTYPE html><html><body>"
            f'<form id="forged" method="post" action="{self.target}">'
            '<input name="count" value="3"><input name="csrf" value="guessed">'
            '<button id="go" type="submit">win a prize</button></form>'
            "</body></html>"
        ).encode()


class BrowserTestCase(GUITestCase):
    timeout = 600

    def setUp(self) -> None:
        try:
            import selenium  # noqa: F401
        except ImportError:
            raise SkipTest("selenium is not installed (tools/setup installs it)") from None
        for path in (CHROMIUM, CHROMEDRIVER):
            if not os.access(path, os.X_OK):
                raise SkipTest(f"{path} is missing: tools/setup installs chromium and "
                               "chromium-driver from Debian")
        os.makedirs(ARTIFACTS, exist_ok=True)

    async def startBrowser(self, width: int = 1200, height: int = 900) -> None:
        self.driver = await deferToThread(_startDriver, width, height)
        self.addCleanup(deferToThread, self.driver.quit)

    async def do(self, f: Callable[..., Any], *args: Any) -> Any:
        """Run C{f(driver, *args)} off the reactor thread."""
        return await deferToThread(f, self.driver, *args)

    async def until(self, condition: Callable[[Any], Any], timeout: float = WAIT) -> Any:
        from selenium.common.exceptions import (
            NoSuchElementException,
            StaleElementReferenceException,
        )
        from selenium.webdriver.support.ui import WebDriverWait

        # Elements go stale while a page loads or a live update replaces them.
        ignored = (StaleElementReferenceException, NoSuchElementException)
        return await self.do(
            lambda d: WebDriverWait(d, timeout, 0.2, ignored_exceptions=ignored).until(condition)
        )

    async def open(self, path: str) -> None:
        await self.do(lambda d: d.get(self.base + path))

    async def text(self, css: str) -> str:
        from selenium.webdriver.common.by import By

        return str(await self.do(lambda d: d.find_element(By.CSS_SELECTOR, css).text))

    async def click(self, css: str) -> None:
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.common.by import By

        def click(d: Any) -> None:
            # A live update may replace the element between finding and clicking it.
            for attempt in range(5):
                try:
                    d.find_element(By.CSS_SELECTOR, css).click()
                    return
                except StaleElementReferenceException:
                    if attempt == 4:
                        raise

        await self.do(click)

    async def follow(self, css: str) -> None:
        """Click a link or a submit button and wait for the next page to load."""
        await self.do(lambda d: d.execute_script("window.oldPage = true;"))
        await self.click(css)
        await self.until(lambda d: d.execute_script(
            "return !window.oldPage && document.readyState === 'complete';"))

    async def type(self, css: str, *keys: str) -> None:
        from selenium.webdriver.common.by import By

        def typeInto(d: Any) -> None:
            element = d.find_element(By.CSS_SELECTOR, css)
            element.clear()
            element.send_keys(*keys)

        await self.do(typeInto)

    async def screenshot(self, name: str) -> None:
        """Save the whole page (not just the window) as C{artifacts/gui/NAME.png}."""

        def save(d: Any) -> None:
            size = d.get_window_size()
            height = d.execute_script("return document.documentElement.scrollHeight;")
            d.set_window_size(size["width"], max(size["height"], min(int(height) + 140, 4000)))
            try:
                d.save_screenshot(os.path.join(ARTIFACTS, name + ".png"))
            finally:
                d.set_window_size(size["width"], size["height"])

        await self.do(save)

    def textIn(self, css: str, wanted: str) -> Callable[[Any], bool]:
        from selenium.webdriver.common.by import By

        def check(d: Any) -> bool:
            return any(wanted in e.text for e in d.find_elements(By.CSS_SELECTOR, css))

        return check

    async def signIn(self, token: str, *, refused: bool = False) -> None:
        """Sign in with the keyboard only: the token field has the focus; Enter submits."""
        from selenium.webdriver.common.keys import Keys

        await self.open("")
        await self.until(lambda d: d.current_url.endswith("/ui/login"))
        await self.do(lambda d: d.switch_to.active_element.send_keys(token, Keys.ENTER))
        if refused:
            await self.until(self.textIn("#login-error", "The manager refused this token"))
        else:
            await self.until(self.textIn("h1", "Service"))


class BrowserTests(BrowserTestCase):
    async def test_wrong_token(self) -> None:
        await self.startGUI()
        await self.startBrowser()
        await self.signIn("not-the-token", refused=True)
        await self.screenshot("login-refused")
        self.assertTrue(self.driver.current_url.endswith("/ui/login"))
        await self.open("nodes")
        await self.until(lambda d: d.current_url.endswith("/ui/login"))

    async def test_operator_flow(self) -> None:
        """
        Sign in, add a node and watch it reach RUNNING live, create a user,
        upload a dump and see the progress finish, make it master and slave
        (the API's "not available" answer shown), remove it.
        """
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        await self.startGUI()
        await self.startBrowser()
        await self.signIn(self.manager.token)
        await self.until(self.textIn("h1", "Service"))
        await self.until(self.textIn("#perf-status", "not available"))
        await self.screenshot("service")

        await self.follow("nav a[href='/ui/nodes']")
        await self.until(self.textIn("h1", "Nodes"))
        # Keyboard: Tab from the number field to the "Add nodes" button, Enter.
        await self.do(lambda d: d.find_element(By.ID, "count").send_keys(Keys.TAB))
        active = await self.do(lambda d: d.switch_to.active_element.get_attribute("id"))
        self.assertEqual(active, "add-nodes")
        await self.do(lambda d: d.switch_to.active_element.send_keys(Keys.ENTER))
        await self.until(self.textIn(".flash-ok", "Adding 1 node(s): 1"))
        await self.do(lambda d: d.execute_script("window.notReloaded = true;"))
        await self.until(self.textIn("tr[data-node='1'] .state", "RUNNING"))
        self.assertTrue(await self.do(lambda d: d.execute_script("return window.notReloaded;")))
        await self.until(self.textIn("#nodes-status", "updated"))
        await self.screenshot("nodes")

        await self.follow("tr[data-node='1'] td a")
        await self.until(self.textIn("h1", "Node 1"))
        await self.type("#username", "shop")
        await self.type("#password", "pw-1")
        await self.type("#confirm", "pw-1")
        await self.follow("#create-user")
        await self.until(self.textIn(".flash-ok", "User shop is set up on node 1."))
        self.assertEqual(await self.text("tr[data-user='shop'] td"), "shop")
        self.assertEqual(self.api.users[1], {"shop": "pw-1"})

        dump = os.path.abspath(self.mktemp() + ".sql")
        content = b"CREATE TABLE t (a INT);\n" + b"INSERT INTO t VALUES (1);\n" * 40000
        with open(dump, "wb") as f:
            f.write(content)
        await self.type("#mysqldump", dump)
        await self.click("#upload-dump")
        await self.until(lambda d: d.find_element(By.ID, "upload-status").get_attribute("data-done"))
        self.assertEqual(await self.text("#upload-status"),
                         f"The dump {os.path.basename(dump)} was loaded into node 1.")
        self.assertEqual(
            await self.do(lambda d: d.find_element(By.ID, "upload-progress").get_attribute("value")),
            "100",
        )
        self.assertEqual(self.api.uploads, [(1, os.path.basename(dump), content)])
        await self.screenshot("node")

        await self.follow("#h-replication ~ .actions button[aria-label='Make node 1 the master']")
        await self.until(self.textIn(".flash-error", "Not available in this deployment"))
        self.assertIn("replication is not available yet", await self.text(".flash-error"))
        await self.follow("#h-replication ~ .actions button[aria-label='Make node 1 a slave']")
        await self.until(self.textIn(".flash-error", "Not available in this deployment"))
        await self.screenshot("node-replication-not-available")

        await self.follow("#h-replication ~ .actions a.danger")
        await self.until(self.textIn("h1", "Remove node 1"))
        await self.screenshot("remove-confirm")
        await self.follow("#confirm-remove")
        await self.until(self.textIn(".flash-ok", "Node 1 is being removed."))
        await self.until(self.textIn("#nodes-status", "no nodes yet"))
        self.assertEqual(self.api.nodes, {})

    async def test_replication_and_charts(self) -> None:
        """With replication available: master, slave, lag and live charts."""
        from selenium.webdriver.common.by import By

        await self.startGUI(replication=True)
        self.api.addNode(state="RUNNING")
        self.api.addNode(state="RUNNING")
        await self.startBrowser()
        await self.signIn(self.manager.token)
        await self.follow("nav a[href='/ui/nodes']")
        await self.follow("tr[data-node='1'] button[aria-label='Make node 1 the master']")
        await self.until(self.textIn(".flash-ok", "Node 1 is now the master."))
        await self.follow("tr[data-node='2'] button[aria-label='Make node 2 a slave']")
        await self.until(self.textIn(".flash-ok", "Node 2 is being set up as a slave."))
        await self.until(self.textIn("tr[data-node='2'] td:nth-child(5)", "SLAVE"))
        await self.until(self.textIn("tr[data-node='2'] td:nth-child(7)", "0 s"))
        # The node page follows the node's replication status and error live.
        await self.follow("tr[data-node='2'] td a")
        await self.do(lambda d: d.execute_script("window.notReloaded = true;"))
        self.api.nodes[2]["replication"]["seconds_behind_master"] = 7
        self.api.nodes[2]["error"] = "replication IO thread stopped: <b>not bold</b>"
        await self.until(self.textIn("#replication", "7"))
        await self.until(self.textIn("#last-error", "replication IO thread stopped: <b>not bold</b>"))
        self.assertTrue(await self.do(lambda d: d.execute_script("return window.notReloaded;")))
        await self.screenshot("node-slave")

        await self.open("")
        await self.until(self.textIn("#service-master", "node 1"))
        # Three samples drawn in each chart, without a reload.
        await self.until(lambda d: all(
            len((e.get_attribute("points") or "").split()) >= 3
            for e in d.find_elements(By.CSS_SELECTOR, ".chart-plot polyline")
        ) and len(d.find_elements(By.CSS_SELECTOR, ".chart-plot polyline")) == 3)
        self.assertEqual(await self.text("#value-connections"), "3")
        await self.screenshot("service-charts")

    async def test_narrow_window(self) -> None:
        """On a phone-sized window the table scrolls inside its box, not the page."""
        await self.startGUI()
        for _ in range(3):
            self.api.addNode(state="RUNNING", name="conpaassql-agent-with-a-long-name")
        await self.startBrowser(390, 844)
        await self.signIn(self.manager.token)
        await self.open("nodes")
        await self.until(self.textIn("#nodes-status", "updated"))
        pageWidth = await self.do(
            lambda d: d.execute_script("return document.documentElement.scrollWidth;")
        )
        viewport = await self.do(lambda d: d.execute_script("return window.innerWidth;"))
        self.assertLessEqual(pageWidth, viewport)
        await self.screenshot("nodes-narrow")

    async def test_forged_cross_site_post(self) -> None:
        """A form on another site posting to the front-end is refused."""
        await self.startGUI()
        await self.startBrowser()
        await self.signIn(self.manager.token)
        await self.until(self.textIn("h1", "Service"))
        evil = reactor.listenTCP(0, Site(_EvilPage(self.base + "nodes/add")),
                                 interface="127.0.0.1")
        self.addCleanup(evil.stopListening)
        await self.do(lambda d: d.get(f"http://127.0.0.1:{evil.getHost().port}/"))
        await self.follow("#go")
        await self.until(self.textIn("body", "Refused"))
        await self.screenshot("forged-post-refused")
        self.assertEqual(self.api.called("add_nodes"), [])


def _rowsOfGuiTest(rootCnf: str) -> list[tuple[Any, ...]]:
    """The rows of guitest.t, read as root through the node's own option file."""
    import pymysql

    connection = pymysql.connect(read_default_file=rootCnf, connect_timeout=30)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT a, b FROM guitest.t ORDER BY a")
            return list(cursor.fetchall())
    finally:
        connection.close()


class RealManagerBrowserTests(BrowserTestCase):
    """
    The stand-alone front-end in front of a real manager on the LOCAL driver:
    real detached agents, each with its own real mariadbd.  Replication is
    made master and another node a slave through the buttons.
    """

    timeout = 900
    #: Nodes are real processes: allow for a slow, shared machine.
    NODE_WAIT = 300

    async def startGUI(self, **ignored: Any) -> None:
        from dataclasses import replace

        from conpaassql.manager.config import ManagerConfig
        from conpaassql.manager.tap import ManagerService
        from tests.support.mariadb import skip_unless_mariadb
        from tests.test_iaas_local import localCloud

        reason = skip_unless_mariadb()
        if reason:
            raise SkipTest(reason)
        self.captureLogs()
        # Registered first, so it runs last: ends every node the test left
        # and fails if any of their processes is still alive.
        self.cloud = localCloud(self)
        tokenFile = os.path.join(self.cloud.stateDir, "api-token")
        self.managerService = ManagerService(
            self.cloud.stateDir, replace(ManagerConfig(), poll_interval=0.5),
            "tcp:0:interface=127.0.0.1", tokenFile, reactor=reactor, stopProcess=lambda: None,
        )
        self.managerService.startService()
        self.addCleanup(self.managerService.stopService)
        port = await self.managerService.listening
        with open(tokenFile) as f:
            token = f.read().strip()
        self.manager = _Manager(f"http://127.0.0.1:{port.getHost().port}/", token)
        await self.startFrontEnd(self.manager.url)

    async def managerCall(self, method: str, params: Any = None) -> Any:
        from conpaassql.rpc.client import RPCClient

        client = RPCClient(self.manager.url, self.manager.token, reactor=reactor)
        try:
            return await client.call(method, params or {})
        finally:
            await client.close()

    async def test_wrong_token(self) -> None:
        await self.startGUI()
        await self.startBrowser()
        await self.signIn("not-" + self.manager.token, refused=True)
        await self.screenshot("real-login-refused")

    async def test_operator_flow(self) -> None:
        from selenium.webdriver.common.by import By

        await self.startGUI()
        await self.startBrowser()
        await self.signIn(self.manager.token)
        await self.until(self.textIn("#perf-status", "Updated"))
        self.assertEqual(await self.text("#service-state"), "RUNNING")

        # Add a node; watch it become RUNNING in the live table.
        await self.follow("nav a[href='/ui/nodes']")
        await self.type("#count", "1")
        await self.follow("#add-nodes")
        await self.until(self.textIn(".flash-ok", "Adding 1 node(s): 1"))
        await self.do(lambda d: d.execute_script(
            "window.notReloaded = true; window.seen = [];"
            "new MutationObserver(function () {"
            "  var s = document.querySelector(\"tr[data-node='1'] .state\");"
            "  if (s && window.seen[window.seen.length - 1] !== s.textContent)"
            "    window.seen.push(s.textContent);"
            "}).observe(document.getElementById('nodes-body'),"
            "           {childList: true, subtree: true, characterData: true});"))
        await self.until(self.textIn("tr[data-node='1'] .state", "RUNNING"), self.NODE_WAIT)
        await self.until(self.textIn("tr[data-node='1'] td:nth-child(6)", "yes"))
        seen = await self.do(lambda d: d.execute_script("return window.seen;"))
        self.assertTrue(await self.do(lambda d: d.execute_script("return window.notReloaded;")))
        self.assertEqual(seen[-1], "RUNNING")
        self.assertTrue(set(seen) <= {"PENDING", "BOOTING", "RUNNING"}, seen)
        await self.screenshot("real-nodes")
        info = (await self.managerCall("get_node_info", {"serviceNodeId": 1}))["serviceNode"]
        self.assertEqual(await self.text("tr[data-node='1'] td:nth-child(2)"), info["name"])

        # A user, on the node's real server.
        await self.follow("tr[data-node='1'] td a")
        await self.type("#username", "shop")
        await self.type("#password", "pw-1")
        await self.type("#confirm", "pw-1")
        await self.follow("#create-user")
        await self.until(self.textIn(".flash-ok", "User shop is set up on node 1."))
        await self.until(self.textIn("tr[data-user='shop']", "%"))
        users = await self.managerCall("get_users", {"serviceNodeId": 1})
        self.assertIn({"username": "shop", "location": "%", "managed": False}, users["1"])

        # A dump, loaded into the real server; then one that fails.
        dump = os.path.abspath(self.mktemp() + ".sql")
        with open(dump, "w") as f:
            f.write("CREATE DATABASE guitest;\nUSE guitest;\n"
                    "CREATE TABLE t (a INT PRIMARY KEY, b VARCHAR(40));\n")
            for i in range(5000):
                f.write(f"INSERT INTO t VALUES ({i}, 'row {i} of the GUI test dump');\n")
        await self.type("#mysqldump", dump)
        await self.click("#upload-dump")
        await self.until(
            lambda d: d.find_element(By.ID, "upload-status").get_attribute("data-done"),
            self.NODE_WAIT,
        )
        self.assertEqual(await self.text("#upload-status"),
                         f"The dump {os.path.basename(dump)} was loaded into node 1.")
        self.assertEqual(
            await self.do(lambda d: d.find_element(By.ID, "upload-progress").get_attribute("value")),
            "100",
        )
        await self.screenshot("real-node")
        rootCnf = [os.path.join(top, "root.cnf") for top, _, files in os.walk(self.cloud.baseDir)
                   if "root.cnf" in files]
        self.assertEqual(len(rootCnf), 1)
        rows = await deferToThread(_rowsOfGuiTest, rootCnf[0])
        self.assertEqual(len(rows), 5000)
        self.assertEqual(rows[4999], (4999, "row 4999 of the GUI test dump"))

        bad = os.path.abspath(self.mktemp() + ".sql")
        with open(bad, "w") as f:
            f.write("USE guitest;\nINSERT INTO t VALUES (1, 'duplicate');\n")
        await self.do(lambda d: d.execute_script(
            "document.getElementById('upload-status').removeAttribute('data-done');"))
        await self.type("#mysqldump", bad)
        await self.click("#upload-dump")
        await self.until(
            lambda d: d.find_element(By.ID, "upload-status").get_attribute("data-done"),
            self.NODE_WAIT,
        )
        status = await self.text("#upload-status")
        self.assertIn("The operation failed: node 1: the dump failed at line 2", status)
        self.assertIn("Duplicate entry", status)

        # Replication: node 1 becomes the master, a second node its slave
        # (seeded with the dump above).
        await self.follow("#h-replication ~ .actions button[aria-label='Make node 1 the master']")
        await self.until(self.textIn(".flash-ok", "Node 1 is now the master."))
        await self.until(self.textIn("#node-details", "MASTER"))
        await self.follow("#h-replication ~ .actions button[aria-label='Make node 1 a slave']")
        await self.until(self.textIn(".flash-error", "is the master"))
        await self.managerCall("add_nodes", {"function": "agent"})

        async def running() -> bool:
            info = await self.managerCall("get_node_info", {"serviceNodeId": 2})
            return info["serviceNode"]["state"] == "RUNNING"

        deadline = reactor.seconds() + self.NODE_WAIT
        while not await running():
            self.assertLess(reactor.seconds(), deadline, "node 2 never RUNNING")
            await deferLater(reactor, 0.2, lambda: None)
        await self.open("nodes/2")
        await self.follow("#h-replication ~ .actions button[aria-label='Make node 2 a slave']")
        await self.until(self.textIn(".flash-ok", "Node 2 is being set up as a slave."))
        await self.until(self.textIn("#node-details", "SLAVE"), self.NODE_WAIT)
        await self.until(self.textIn("#replication", "seconds_behind"))
        await self.screenshot("real-node-slave")
        rows = await deferToThread(_rowsOfGuiTest, *[
            os.path.join(top, "root.cnf") for top, _, files in os.walk(self.cloud.baseDir)
            if "root.cnf" in files and "node-2" in top])
        self.assertEqual(len(rows), 5000)
        self.assertEqual(await self.managerCall("remove_nodes", {"serviceNodeId": 2}),
                         {"result": "OK"})
        await self.open("nodes/1")

        # Remove it, confirming; it leaves the live table.
        await self.follow("#h-replication ~ .actions a.danger")
        await self.follow("#confirm-remove")
        await self.until(self.textIn(".flash-ok", "Node 1 is being removed."))
        await self.until(self.textIn("#nodes-status", "no nodes yet"), self.NODE_WAIT)
        self.assertEqual(await self.managerCall("list_nodes"), {"serviceNode": []})
        for line in self.logged:
            self.assertNotIn(self.manager.token, line)


class _Manager:
    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.token = token
