"""
Tests of the LOCAL cloud driver: settings, names and states from node
directories (unit tests, no processes), and real detached agents with real
C{mariadbd}s driven through the driver and spoken to over real HTTP.

Every test that starts agents registers, before it starts any, a cleanup
that terminates every node of its base directory and then fails the test
if any process of that directory is still alive.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import sys
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from conpaassql.common.procfs import process_argv
from conpaassql.iaas.base import (
    CloudFailure,
    DriverConfigError,
    IaaSDriver,
    NodeSpec,
    VMInfo,
    vmName,
)
from conpaassql.iaas.local import LocalDriver, LocalSettings, makeDriver
from conpaassql.rpc.client import RPCClient
from conpaassql.rpc.errors import Unauthorized
from tests.support.drivercontract import DriverContractMixin
from tests.support.managerproc import processesMentioning as _processesMentioning
from tests.support.mariadb import pid_alive, skip_unless_mariadb
from tests.test_agent_initdb import INSTALLER_SAYS, fingerprint

TAG = "test"
OTHER = "other"
reactor: Any = _reactor  # typed Any: mypy without the zope plugin misreads it
WAIT = 180.0  # seconds: a generous bound on a 2-core machine shared with others


def _environ(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


def spec(nodeId: int, tag: str = TAG, **context: str) -> NodeSpec:
    ctx = {"AGENT_TOKEN": f"tok-{os.urandom(12).hex()}", "AGENT_PORT": "0", "SERVICE_TAG": tag}
    ctx.update(context)
    return NodeSpec(nodeId, vmName(tag, nodeId), ctx)


class LocalCloud:
    """
    A base directory for one test, and drivers on it.  Its cleanup (made
    by L{localCloud}) terminates every node of every tag and checks that no
    process of the directory is left.
    """

    def __init__(self, testcase: TestCase) -> None:
        self.testcase = testcase
        self.stateDir = os.path.abspath(testcase.mktemp())
        os.makedirs(self.stateDir)
        self.baseDir = os.path.join(self.stateDir, "local-cloud")

    def driver(self, tag: str = TAG, **settings: str) -> LocalDriver:
        driver = makeDriver(settings, stateDir=self.stateDir, reactor=reactor, serviceTag=tag)
        self.testcase.addCleanup(lambda: Deferred.fromCoroutine(driver.close()))
        return driver

    def nodeDir(self, name: str) -> str:
        return os.path.join(self.baseDir, name)

    async def cleanup(self) -> None:
        names = os.listdir(self.baseDir) if os.path.isdir(self.baseDir) else []
        tags = {n.split("-")[1] for n in names if n.startswith("conpaassql-")}
        for tag in tags:
            driver = makeDriver({}, stateDir=self.stateDir, reactor=reactor, serviceTag=tag)
            try:
                for info in await driver.list():
                    await driver.terminate(info.vmId)
            finally:
                await driver.close()
        left = _processesMentioning(self.baseDir + os.sep)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        self.testcase.assertEqual(left, [], f"processes left in {self.baseDir}")


def localCloud(testcase: TestCase) -> LocalCloud:
    cloud = LocalCloud(testcase)
    testcase.addCleanup(lambda: Deferred.fromCoroutine(cloud.cleanup()))
    return cloud


async def waitFor(
    driver: IaaSDriver, vmId: str, states: tuple[str, ...], seen: list[str] | None = None
) -> VMInfo:
    """
    Poll C{list()} until the VM is in one of C{states}; record the states
    seen on the way in C{seen}.
    """
    deadline = reactor.seconds() + WAIT
    last = None
    while reactor.seconds() < deadline:
        last = next((i for i in await driver.list() if i.vmId == vmId), None)
        if seen is not None and last is not None and (not seen or seen[-1] != last.state):
            seen.append(last.state)
        if last is not None and last.state in states:
            return last
        await _sleep(0.05)
    raise AssertionError(f"{vmId} not in {states} after {WAIT} s: {last}")


async def serverRunning(info: VMInfo, token: str) -> dict[str, Any]:
    """
    Ask the agent over HTTP until its server is RUNNING; its state.
    """
    client = RPCClient(f"http://{info.ip}:{info.agentPort}/", token, reactor=reactor, timeout=30)
    try:
        deadline = reactor.seconds() + WAIT
        while True:
            state = (await client.call("get_server_state"))["return"]
            if state["state"] == "RUNNING" or reactor.seconds() > deadline:
                return dict(state)
            await _sleep(0.05)
    finally:
        await client.close()


# -- settings


class SettingsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        settings = LocalSettings.fromMapping({}, "/srv/manager")
        self.assertEqual(settings, LocalSettings("/srv/manager/local-cloud"))
        self.assertEqual(settings.bindAddress, "127.0.0.1")
        self.assertEqual(settings.bootTimeout, 60.0)
        self.assertEqual(settings.stopTimeout, 30.0)

    def test_every_key_any_case(self) -> None:
        settings = LocalSettings.fromMapping(
            {
                "local_base_dir": "nodes",
                "LOCAL_BIND_ADDRESS": "::1",
                "Local_Boot_Timeout": "12.5",
                "LOCAL_STOP_TIMEOUT": "3",
                "local_agent_restart": "No",
                "DRIVER": "LOCAL",
                "OPENNEBULA_URL": "ignored: not ours",
            },
            "/srv/manager",
        )
        self.assertEqual(settings, LocalSettings("/srv/manager/nodes", "::1", 12.5, 3.0, False))

    def test_absolute_base_dir(self) -> None:
        settings = LocalSettings.fromMapping({"LOCAL_BASE_DIR": "/data/cloud/"}, "/srv")
        self.assertEqual(settings.baseDir, "/data/cloud")

    def test_every_problem_at_once(self) -> None:
        e = self.assertRaises(
            DriverConfigError,
            makeDriver,
            {
                "LOCAL_BIND_ADDRESS": "localhost",
                "LOCAL_BOOT_TIMEOUT": "soon",
                "LOCAL_STOP_TIMEOUT": "-1",
                "LOCAL_AGENT_RESTART": "maybe",
                "LOCAL_BASE": "/x",
            },
            stateDir="/srv",
            reactor=Clock(),
            serviceTag="Bad Tag",
        )
        self.assertEqual(len(e.problems), 6, e.problems)
        text = str(e)
        for word in (
            "LOCAL_BASE",
            "LOCAL_BIND_ADDRESS",
            "LOCAL_BOOT_TIMEOUT",
            "LOCAL_STOP_TIMEOUT",
            "LOCAL_AGENT_RESTART",
            "service tag",
        ):
            self.assertIn(word, text)

    def test_no_io(self) -> None:
        stateDir = os.path.abspath(self.mktemp())
        driver = makeDriver({}, stateDir=stateDir, reactor=Clock(), serviceTag=TAG)
        self.assertEqual(driver.name, "LOCAL")
        self.assertIsInstance(driver, IaaSDriver)
        self.assertFalse(os.path.exists(stateDir))


# -- names and states read from node directories, no processes


class NodeDirectoryTests(SynchronousTestCase):
    """
    The driver on a L{Clock}, over node directories made by hand.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.stateDir = os.path.abspath(self.mktemp())
        self.base = os.path.join(self.stateDir, "local-cloud")
        os.makedirs(self.base)
        self.driver = makeDriver(
            {"LOCAL_BOOT_TIMEOUT": "60"},
            stateDir=self.stateDir,
            reactor=self.clock,
            serviceTag=TAG,
        )

    def node(self, name: str, created: float = 1000.0, files: dict[str, str] | None = None) -> str:
        path = os.path.join(self.base, name)
        os.makedirs(path)
        with open(os.path.join(path, "vm.json"), "w") as f:
            json.dump({"name": name, "created": created}, f)
        for fname, text in (files or {}).items():
            with open(os.path.join(path, fname), "w") as f:
                f.write(text)
        return path

    def listed(self) -> list[VMInfo]:
        return self.successResultOf(Deferred.fromCoroutine(self.driver.list()))

    def test_no_base_dir(self) -> None:
        os.rmdir(self.base)
        self.assertEqual(self.listed(), [])

    def test_only_this_services_nodes(self) -> None:
        self.node(vmName(TAG, 2))
        self.node(vmName(TAG, 10))
        self.node(vmName(OTHER, 1))
        self.node(f"conpaassql-{TAG}-node-x")
        self.node("something-else")
        with open(os.path.join(self.base, vmName(TAG, 3)), "w") as f:
            f.write("a file, not a node")
        os.symlink(
            os.path.join(self.base, vmName(OTHER, 1)), os.path.join(self.base, vmName(TAG, 4))
        )
        self.assertEqual([i.vmId for i in self.listed()], [vmName(TAG, 2), vmName(TAG, 10)])

    def test_pending_then_failed_after_boot_timeout(self) -> None:
        name = vmName(TAG, 1)
        self.node(name, created=990.0)
        [info] = self.listed()
        self.assertEqual(
            (info.vmId, info.name, info.state, info.ip), (name, name, "PENDING", "127.0.0.1")
        )
        self.clock.advance(60)
        [info] = self.listed()
        self.assertEqual(info.state, "FAILED")
        self.assertIn("no agent process 60 s after creation", info.detail)

    def test_launch_failure_recorded(self) -> None:
        self.node(
            vmName(TAG, 1),
            files={"launch-failed": "twistd failed to start the agent (exit code 1)"},
        )
        [info] = self.listed()
        self.assertEqual(info.state, "FAILED")
        self.assertIn("exit code 1", info.detail)

    def test_ended_after_launch(self) -> None:
        path = self.node(vmName(TAG, 1), files={"launched": "", "agent-token": "s3cret-token\n"})
        with open(os.path.join(path, "agent.log"), "w") as f:
            f.write("x" * 10000 + "\nline one\n\nline two with s3cret-token\nServer Shut Down.\n")
        [info] = self.listed()
        self.assertEqual(info.state, "FAILED")
        self.assertIn("the agent process ended", info.detail)
        self.assertIn("line one\nline two with <token>\nServer Shut Down.", info.detail)
        self.assertNotIn("s3cret-token", info.detail)
        self.assertNotIn("xxx", info.detail)

    def test_dead_or_recycled_pid(self) -> None:
        # Our own pid is alive but it is not that node's agent.
        self.node(vmName(TAG, 1), files={"twistd.pid": str(os.getpid())})
        [info] = self.listed()
        self.assertEqual(info.state, "FAILED")
        self.assertIn(f"the agent process (pid {os.getpid()}) is gone", info.detail)

    def test_terminating_is_gone(self) -> None:
        self.node(vmName(TAG, 1), files={"terminating": ""})
        [info] = self.listed()
        self.assertEqual(info.state, "GONE")

    def test_refused_names(self) -> None:
        for bad in (
            "",
            "..",
            "../x",
            f"{vmName(TAG, 1)}/../../x",
            "/etc",
            vmName(OTHER, 1),
            f"conpaassql-{TAG}-node-01x",
            f"{vmName(TAG, 1)}\n",
        ):
            f = self.failureResultOf(
                Deferred.fromCoroutine(self.driver.terminate(bad)), CloudFailure
            )
            self.assertFalse(f.value.transient, bad)
            f = self.failureResultOf(
                Deferred.fromCoroutine(self.driver.create(NodeSpec(1, bad, {"AGENT_TOKEN": "t"}))),
                CloudFailure,
            )
            self.assertFalse(f.value.transient, bad)
        self.assertEqual(sorted(os.listdir(self.base)), [])

    def test_foreign_node_untouched(self) -> None:
        path = self.node(vmName(OTHER, 1))
        f = self.failureResultOf(
            Deferred.fromCoroutine(self.driver.terminate(vmName(OTHER, 1))), CloudFailure
        )
        self.assertIn("not the name of a VM of this service", str(f.value))
        self.assertTrue(os.path.exists(os.path.join(path, "vm.json")))

    def test_symlink_node_refused(self) -> None:
        target = self.node(vmName(OTHER, 1))
        os.symlink(target, os.path.join(self.base, vmName(TAG, 1)))
        f = self.failureResultOf(
            Deferred.fromCoroutine(self.driver.terminate(vmName(TAG, 1))), CloudFailure
        )
        self.assertFalse(f.value.transient)
        self.assertTrue(os.path.exists(os.path.join(target, "vm.json")))

    def test_terminate_unknown(self) -> None:
        self.successResultOf(Deferred.fromCoroutine(self.driver.terminate(vmName(TAG, 5))))

    def test_bad_specs_leave_nothing(self) -> None:
        cases = [
            NodeSpec(2, vmName(TAG, 1), {"AGENT_TOKEN": "t"}),  # id and name disagree
            NodeSpec(1, vmName(TAG, 1), {}),
            NodeSpec(1, vmName(TAG, 1), {"AGENT_TOKEN": "two words"}),
            NodeSpec(1, vmName(TAG, 1), {"AGENT_TOKEN": "t", "AGENT_PORT": "http"}),
            NodeSpec(1, vmName(TAG, 1), {"AGENT_TOKEN": "t", "AGENT_PORT": "70000"}),
        ]
        for bad in cases:
            f = self.failureResultOf(Deferred.fromCoroutine(self.driver.create(bad)), CloudFailure)
            self.assertFalse(f.value.transient)
            self.assertNotIn("two words", str(f.value))
        self.assertEqual(os.listdir(self.base), [])

    def test_existing_name_refused(self) -> None:
        self.node(vmName(TAG, 1))
        f = self.failureResultOf(Deferred.fromCoroutine(self.driver.create(spec(1))), CloudFailure)
        self.assertIn("already exists", str(f.value))

    def test_closed(self) -> None:
        self.successResultOf(Deferred.fromCoroutine(self.driver.close()))
        self.failureResultOf(Deferred.fromCoroutine(self.driver.list()), CloudFailure)


class _Transport:
    def __init__(self) -> None:
        self.signals: list[str] = []

    def closeStdin(self) -> None:
        pass

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)


class _ProcessClock(Clock):
    """A Clock that records the processes it is asked to spawn (none runs)."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[Any, list[str]]] = []

    def spawnProcess(self, proto: Any, executable: str, args: list[str], env: Any = None,
                     path: Any = None) -> _Transport:
        transport = _Transport()
        proto.makeConnection(transport)
        self.spawned.append((proto, list(args)))
        return transport


class TemplateWaitTests(SynchronousTestCase):
    """
    Creates while the datadir template is being made (on a clock, with no
    real process).
    """

    def setUp(self) -> None:
        self.clock = _ProcessClock()
        self.stateDir = os.path.abspath(self.mktemp())
        os.makedirs(self.stateDir)
        self.driver = makeDriver({}, stateDir=self.stateDir, reactor=self.clock, serviceTag=TAG)

    def create(self, nodeId: int) -> Deferred[VMInfo]:
        return Deferred.fromCoroutine(self.driver.create(spec(nodeId)))

    def test_wait_then_use(self) -> None:
        """
        The first create starts making the template and waits for it; a
        create meanwhile waits too; both then start their agents with it,
        and later creates use it at once.  One template maker only.
        """
        first, second = self.create(1), self.create(2)
        [(maker, argv)] = self.clock.spawned
        self.assertEqual(argv[1:3], ["-m", "conpaassql.agent.initdb"])
        self.assertNoResult(first)
        self.assertNoResult(second)
        template = os.path.join(self.stateDir, "local-cloud", "templates", "mariadb-1")
        os.makedirs(template)
        maker.childDataReceived(1, template.encode() + b"\n")
        maker.processEnded(Failure(ProcessDone(0)))
        self.successResultOf(first)
        self.successResultOf(second)
        self.successResultOf(self.create(3))
        launched = [argv for _, argv in self.clock.spawned[1:]]
        self.assertEqual(len(launched), 3)
        for argv in launched:
            self.assertIn(f"--datadir-template={template}", argv)

    def test_slow_or_failed_template(self) -> None:
        """
        A create waits at most templateWait for the template: its agent then
        initialises its own; a maker that fails leaves every agent to do so.
        """
        first = self.create(1)
        self.clock.advance(self.driver.templateWait)
        self.successResultOf(first)
        maker = self.clock.spawned[0][0]
        maker.childDataReceived(2, b"template: no mariadbd\n")
        maker.processEnded(Failure(ProcessTerminated(1)))
        self.successResultOf(self.create(2))
        launched = [argv for _, argv in self.clock.spawned[1:]]
        self.assertEqual(len(launched), 2)
        for argv in launched:
            self.assertEqual([a for a in argv if a.startswith("--datadir-t")], [])


# -- real agents


class LocalAgentTests(TestCase):
    skip = skip_unless_mariadb()
    timeout = 600

    def setUp(self) -> None:
        self.cloud = localCloud(self)

    async def test_lifecycle(self) -> None:
        """
        create -> PENDING, BOOTING -> RUNNING with the agent's port; the agent
        answers over HTTP with the context's token and its server runs; a
        second driver (a restarted manager) sees the same; terminate ends
        every process and removes the directory.
        """
        driver = self.cloud.driver()
        nodeSpec = spec(1)
        token = nodeSpec.context["AGENT_TOKEN"]
        created = await driver.create(nodeSpec)
        self.assertEqual(
            created,
            VMInfo(nodeSpec.name, nodeSpec.name, "PENDING", "127.0.0.1", None, "agent starting"),
        )
        seen: list[str] = []
        running = await waitFor(driver, created.vmId, ("RUNNING", "FAILED"), seen)
        self.assertEqual(running.state, "RUNNING", running.detail)
        order = ["PENDING", "BOOTING", "RUNNING"]
        self.assertEqual(seen, sorted(seen, key=order.index), seen)
        self.assertEqual(running.ip, "127.0.0.1")
        nodeDir = self.cloud.nodeDir(nodeSpec.name)
        url = _read(os.path.join(nodeDir, "agent", "agent-url")).strip()
        self.assertEqual(url, f"http://127.0.0.1:{running.agentPort}/")

        state = await serverRunning(running, token)
        self.assertEqual(state["state"], "RUNNING", state)
        self.assertEqual(state["port"], running.agentPort)
        mysqld = state["pid"]
        self.assertTrue(pid_alive(mysqld))
        bad = RPCClient(url, "wrong-token", reactor=reactor, timeout=30)
        self.addCleanup(lambda: Deferred.fromCoroutine(bad.close()))
        with self.assertRaises(Unauthorized):
            await bad.call("get_server_state")

        # Secrets: 0600/0700 files, never on a command line, in an
        # environment or in the log.
        self.assertEqual(stat.S_IMODE(os.stat(nodeDir).st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(nodeDir, "agent-token")).st_mode), 0o600)
        self.assertEqual(_read(os.path.join(nodeDir, "agent-token")).strip(), token)
        self.assertEqual(_processesMentioning(token), [])
        agentPid = int(_read(os.path.join(nodeDir, "twistd.pid")))
        for pid in (agentPid, mysqld):
            self.assertNotIn(token.encode(), _environ(pid))
        self.assertIn(f"--pidfile={nodeDir}/twistd.pid", process_argv(agentPid))
        self.assertNotIn(token, _read(os.path.join(nodeDir, "agent.log")))
        self.assertNotIn(token, repr(nodeSpec))

        # A restarted manager sees the same VM.
        again = self.cloud.driver()
        self.assertEqual(await again.list(), [running])

        socketDir = self._socketDir(nodeDir)
        await driver.close()
        await again.terminate(running.vmId)
        self.assertFalse(pid_alive(agentPid))
        self.assertFalse(pid_alive(mysqld))
        self.assertFalse(os.path.exists(nodeDir))
        if socketDir is not None:
            self.assertFalse(os.path.exists(socketDir))
        self.assertEqual(await again.list(), [])
        await again.terminate(running.vmId)

    def _socketDir(self, nodeDir: str) -> str | None:
        for line in _read(os.path.join(nodeDir, "agent", "mysql", "my.cnf")).splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "socket":
                directory = os.path.dirname(value.strip())
                return None if directory.startswith(nodeDir) else directory
        return None

    async def test_killed_agent_restarted(self) -> None:
        """
        SIGKILL of an agent that served: the next list starts it again
        (BOOTING), on the same port, with the same server data; its new self
        replaces the mariadbd the old one left.  Killed again soon after its
        restart, it is FAILED with the end of its log, no secret; terminate
        then ends the server it left behind and cleans up.
        """
        driver = self.cloud.driver()
        nodeSpec = spec(3)
        token = nodeSpec.context["AGENT_TOKEN"]
        info = await driver.create(nodeSpec)
        running = await waitFor(driver, info.vmId, ("RUNNING", "FAILED"))
        state = await serverRunning(running, token)
        self.assertEqual(state["state"], "RUNNING", state)
        nodeDir = self.cloud.nodeDir(nodeSpec.name)
        socketDir = self._socketDir(nodeDir)
        agentPid = int(_read(os.path.join(nodeDir, "twistd.pid")))
        os.kill(agentPid, signal.SIGKILL)
        restarting = await waitFor(driver, info.vmId, ("BOOTING", "PENDING", "FAILED"))
        self.assertEqual(restarting.state, "BOOTING", restarting.detail)
        self.assertIn(f"agent restarted (the agent process (pid {agentPid}) is gone",
                      restarting.detail)
        again = await waitFor(driver, info.vmId, ("RUNNING", "FAILED"))
        self.assertEqual(again.state, "RUNNING", again.detail)
        self.assertEqual(again.agentPort, running.agentPort)
        restarted = await serverRunning(again, token)
        self.assertEqual(restarted["state"], "RUNNING", restarted)
        self.assertEqual(restarted["mysqld_port"], state["mysqld_port"])
        self.assertNotEqual(restarted["pid"], state["pid"])
        self.assertFalse(pid_alive(state["pid"]), "the orphaned mariadbd")
        self.assertIn('"count": 1', _read(os.path.join(nodeDir, "restarts.json")))

        agentPid = int(_read(os.path.join(nodeDir, "twistd.pid")))
        os.kill(agentPid, signal.SIGKILL)
        failed = await waitFor(driver, info.vmId, ("FAILED",))
        self.assertIn(f"the agent process (pid {agentPid}) is gone", failed.detail)
        self.assertIn("after its restart 1: not restarted again", failed.detail)
        self.assertIn("agent.log", failed.detail)
        self.assertIn("database server state STARTING -> RUNNING", failed.detail)
        self.assertNotIn(token, failed.detail)
        self.assertTrue(pid_alive(restarted["pid"]), "the orphaned mariadbd")

        await driver.terminate(info.vmId)
        self.assertFalse(pid_alive(restarted["pid"]))
        self.assertFalse(os.path.exists(nodeDir))
        if socketDir is not None:
            self.assertFalse(os.path.exists(socketDir))
        self.assertEqual(await driver.list(), [])

    async def test_killed_agent_not_restarted(self) -> None:
        """
        With LOCAL_AGENT_RESTART off, a dead agent is a crashed VM: FAILED.
        """
        driver = self.cloud.driver(LOCAL_AGENT_RESTART="false")
        info = await driver.create(spec(8))
        await waitFor(driver, info.vmId, ("RUNNING", "FAILED"))
        nodeDir = self.cloud.nodeDir(info.name)
        agentPid = int(_read(os.path.join(nodeDir, "twistd.pid")))
        os.kill(agentPid, signal.SIGKILL)
        failed = await waitFor(driver, info.vmId, ("FAILED", "BOOTING"))
        self.assertEqual(failed.state, "FAILED")
        self.assertIn(f"the agent process (pid {agentPid}) is gone", failed.detail)
        self.assertFalse(os.path.exists(os.path.join(nodeDir, "restarts.json")))

    async def test_two_nodes_at_once(self) -> None:
        """
        Two nodes created together (add_nodes with count 2) both run, each
        with its own agent and server.
        """
        driver = self.cloud.driver()
        specs = [spec(11), spec(12)]
        infos = [await driver.create(s) for s in specs]
        states = []
        for nodeSpec, info in zip(specs, infos, strict=True):
            running = await waitFor(driver, info.vmId, ("RUNNING", "FAILED"))
            self.assertEqual(running.state, "RUNNING", running.detail)
            states.append(await serverRunning(running, nodeSpec.context["AGENT_TOKEN"]))
        self.assertEqual([s["state"] for s in states], ["RUNNING", "RUNNING"], states)
        self.assertNotEqual(states[0]["port"], states[1]["port"])
        self.assertNotEqual(states[0]["mysqld_port"], states[1]["mysqld_port"])
        self.assertEqual([i.vmId for i in await driver.list()], [i.vmId for i in infos])

    async def test_datadir_template(self) -> None:
        """
        The first create makes one datadir template (named by the server's
        version), every agent is given it and copies it instead of running
        mariadb-install-db; each server has its own root password; the
        template is untouched by the nodes and outlives their termination.
        """
        driver = self.cloud.driver()
        specs = [spec(21), spec(22)]
        infos = [await driver.create(s) for s in specs]
        templates = os.path.join(self.cloud.baseDir, "templates")
        [name] = os.listdir(templates)
        template = os.path.join(templates, name)
        self.assertTrue(name.startswith("mariadb-"), name)
        before = fingerprint(template)
        passwords = []
        for nodeSpec, info in zip(specs, infos, strict=True):
            running = await waitFor(driver, info.vmId, ("RUNNING", "FAILED"))
            self.assertEqual(running.state, "RUNNING", running.detail)
            state = await serverRunning(running, nodeSpec.context["AGENT_TOKEN"])
            self.assertEqual(state["state"], "RUNNING", state)
            nodeDir = self.cloud.nodeDir(nodeSpec.name)
            agentPid = int(_read(os.path.join(nodeDir, "twistd.pid")))
            self.assertIn(f"--datadir-template={template}", process_argv(agentPid))
            mysql = os.path.join(nodeDir, "agent", "mysql")
            self.assertNotIn(INSTALLER_SAYS, _read(os.path.join(mysql, "error.log")))
            self.assertIn("copying the datadir template", _read(os.path.join(nodeDir,
                                                                               "agent.log")))
            passwords.append(_read(os.path.join(mysql, "root.cnf")))
        self.assertNotEqual(passwords[0], passwords[1])
        for info in infos:
            await driver.terminate(info.vmId)
        self.assertEqual(fingerprint(template), before)
        self.assertEqual(os.listdir(templates), [name])

    async def test_without_template(self) -> None:
        """
        When no template can be made, the agents initialise their own data
        directory and run.
        """
        os.makedirs(self.cloud.baseDir)
        _write(os.path.join(self.cloud.baseDir, "templates"), "in the way\n")
        driver = self.cloud.driver()
        nodeSpec = spec(23)
        info = await driver.create(nodeSpec)
        running = await waitFor(driver, info.vmId, ("RUNNING", "FAILED"))
        state = await serverRunning(running, nodeSpec.context["AGENT_TOKEN"])
        self.assertEqual(state["state"], "RUNNING", state)
        nodeDir = self.cloud.nodeDir(nodeSpec.name)
        agentPid = int(_read(os.path.join(nodeDir, "twistd.pid")))
        self.assertEqual([a for a in process_argv(agentPid) if a.startswith("--datadir-t")], [])
        self.assertIn(INSTALLER_SAYS, _read(os.path.join(nodeDir, "agent", "mysql",
                                                         "error.log")))

    async def test_agent_port_from_context(self) -> None:
        driver = self.cloud.driver()
        port = _freePort()
        info = await driver.create(spec(4, AGENT_PORT=str(port)))
        self.assertEqual(info.agentPort, port)
        running = await waitFor(driver, info.vmId, ("RUNNING", "FAILED"))
        self.assertEqual((running.state, running.agentPort), ("RUNNING", port), running.detail)

    async def test_port_taken_failed(self) -> None:
        """
        An agent that cannot listen stops: its VM is FAILED with the reason.
        """
        taken = reactor.listenTCP(0, _NoFactory(), interface="127.0.0.1")
        self.addCleanup(taken.stopListening)
        driver = self.cloud.driver()
        info = await driver.create(spec(5, AGENT_PORT=str(taken.getHost().port)))
        failed = await waitFor(driver, info.vmId, ("FAILED", "RUNNING"))
        self.assertEqual(failed.state, "FAILED")
        self.assertIn("the agent process ended", failed.detail)
        self.assertIn("Address already in use", failed.detail)

    async def test_twistd_failure_failed(self) -> None:
        """
        twistd refusing to start the agent: FAILED with what it said.
        """
        driver = _BadOptionDriver(
            LocalSettings.fromMapping({}, self.cloud.stateDir), reactor=reactor, serviceTag=TAG
        )
        self.addCleanup(lambda: Deferred.fromCoroutine(driver.close()))
        info = await driver.create(spec(6))
        failed = await waitFor(driver, info.vmId, ("FAILED", "RUNNING"))
        self.assertEqual(failed.state, "FAILED")
        self.assertIn("twistd failed to start the agent (exit code 1)", failed.detail)
        self.assertIn("no-such-option", failed.detail)

    async def test_close_leaves_agents_running(self) -> None:
        driver = self.cloud.driver()
        info = await driver.create(spec(7))
        await driver.close()  # at once: the twistd launcher is still running
        with self.assertRaises(CloudFailure):
            await driver.list()
        again = self.cloud.driver()
        running = await waitFor(again, info.vmId, ("RUNNING", "FAILED"))
        self.assertEqual(running.state, "RUNNING", running.detail)

    async def test_terminate_while_booting(self) -> None:
        """
        Terminate at once after create (twistd, install-db running), twice
        concurrently: both succeed and nothing is left.
        """
        driver = self.cloud.driver()
        info = await driver.create(spec(8))
        nodeDir = self.cloud.nodeDir(info.name)
        first = Deferred.fromCoroutine(driver.terminate(info.vmId))
        second = Deferred.fromCoroutine(driver.terminate(info.vmId))
        await first
        await second
        self.assertFalse(os.path.exists(nodeDir))
        self.assertEqual(_processesMentioning(nodeDir + os.sep), [])
        self.assertEqual(await driver.list(), [])

    async def test_other_service_untouched(self) -> None:
        """
        Two services on one base directory: each lists and ends only its own.
        """
        ours = self.cloud.driver(TAG)
        theirs = self.cloud.driver(OTHER)
        mine = await ours.create(spec(9))
        other = await theirs.create(spec(9, OTHER))
        await waitFor(theirs, other.vmId, ("RUNNING", "FAILED"))
        self.assertEqual([i.vmId for i in await ours.list()], [mine.vmId])
        with self.assertRaises(CloudFailure):
            await ours.terminate(other.vmId)
        await ours.terminate(mine.vmId)
        [still] = await theirs.list()
        self.assertEqual((still.vmId, still.state), (other.vmId, "RUNNING"))


class StubbornAgentTests(TestCase):
    """
    Termination of an agent that ignores SIGTERM: a real process that
    the driver takes for a node's agent (its arguments name the node's pid
    file), started by the test.
    """

    timeout = 300

    def setUp(self) -> None:
        self.cloud = localCloud(self)

    async def stubbornNode(self, nodeId: int) -> tuple[str, _Stubborn]:
        name = vmName(TAG, nodeId)
        nodeDir = self.cloud.nodeDir(name)
        os.makedirs(nodeDir, mode=0o700)
        record = {"name": name, "nodeId": nodeId, "created": reactor.seconds()}
        _write(os.path.join(nodeDir, "vm.json"), json.dumps(record))
        proto = _Stubborn()
        reactor.spawnProcess(
            proto,
            sys.executable,
            [sys.executable, "-c", _STUBBORN, f"--pidfile={nodeDir}/twistd.pid"],
            env={},
        )
        self.addCleanup(proto.ended)
        await proto.ready
        _write(os.path.join(nodeDir, "twistd.pid"), str(proto.pid))
        return name, proto

    async def test_killed_after_stop_timeout(self) -> None:
        name, proto = await self.stubbornNode(1)
        driver = self.cloud.driver(LOCAL_STOP_TIMEOUT="0.5")
        [info] = await driver.list()
        self.assertEqual((info.vmId, info.state), (name, "BOOTING"))
        await driver.terminate(name)
        self.assertEqual(await proto.ended(), signal.SIGKILL)
        self.assertFalse(os.path.exists(self.cloud.nodeDir(name)))
        self.assertEqual(await driver.list(), [])

    async def test_close_interrupts_terminate(self) -> None:
        """
        A manager stopping in the middle of a termination: the VM is then
        listed GONE ("terminating") and a new terminate finishes the job.
        """
        name, proto = await self.stubbornNode(2)
        driver = self.cloud.driver()
        terminating = Deferred.fromCoroutine(driver.terminate(name))
        await driver.close()
        with self.assertRaises(CloudFailure) as caught:
            await terminating
        self.assertIn("closed", str(caught.exception))
        again = self.cloud.driver(LOCAL_STOP_TIMEOUT="0.5")
        [info] = await again.list()
        self.assertEqual((info.state, info.detail), ("GONE", "terminating"))
        await again.terminate(name)
        self.assertEqual(await proto.ended(), signal.SIGKILL)
        self.assertEqual(await again.list(), [])


_STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(600)"
)


class _Stubborn(ProcessProtocol):
    def __init__(self) -> None:
        self.ready: Deferred[None] = Deferred()
        self._ended: list[Deferred[int | None]] = []
        self.signal: int | None = None
        self.done = False

    def connectionMade(self) -> None:
        transport: Any = self.transport
        self.pid: int = transport.pid

    def outReceived(self, data: bytes) -> None:
        if b"ready" in data and not self.ready.called:
            self.ready.callback(None)

    def processEnded(self, reason: Any) -> None:
        self.done = True
        self.signal = getattr(reason.value, "signal", None)
        for d in self._ended:
            d.callback(self.signal)

    def ended(self) -> Deferred[int | None]:
        """The signal that ended it (a new Deferred each time)."""
        if self.done:
            return succeed(self.signal)
        d: Deferred[int | None] = Deferred()
        self._ended.append(d)
        return d


class _NoFactory:
    """A factory whose connections are dropped (only the port matters)."""

    def doStart(self) -> None:
        pass

    def doStop(self) -> None:
        pass

    def buildProtocol(self, addr: Any) -> None:
        return None


class _BadOptionDriver(LocalDriver):
    """Starts twistd with an option it refuses (a real launch failure)."""

    def _agentArgv(self, node: Any, port: int, template: str | None = None) -> list[str]:
        argv = super()._agentArgv(node, port, template)
        return [*argv, "--no-such-option"]


class LocalDriverContractTests(DriverContractMixin, TestCase):
    skip = skip_unless_mariadb()
    timeout = 600

    def setUp(self) -> None:
        self.cloud = localCloud(self)

    def makeTestDriver(self, serviceTag: str) -> IaaSDriver:
        return self.cloud.driver(serviceTag)
