"""
Integration tests: the real manager on the OpenNebula driver, against the
OpenNebula simulator over real HTTP.

  - L{_EndToEnd} (one class per reply format: 4.14, 5.12, 6.10): the
    manager, configured by a C{[iaas] DRIVER = OPENNEBULA_XMLRPC} file,
    allocates VMs; the simulator boots each one for real (its CONTEXT's boot
    script starts a real agent with a real mariadbd on the VM's own loopback
    address); the nodes are RUNNING with the VM's IP.  Removing a node ends
    its VM and its processes; shutdown ends every VM; VMs of another user and
    of another service of the same user are never listed or touched.
  - L{CloudFaultTests}: the manager under cloud faults (error replies, slow
    replies past the timeout, the endpoint down and back, VMs in a
    C{*_FAILURE} state, lost VMs), with fake agents booted on the VMs'
    addresses (L{tests.support.onesim.FakeAgentBooter}) so that they are fast.
  - L{CallCountTests}: the XML-RPC calls of one manager poll cycle do not
    grow with the number of nodes (1, 10, 100).
"""

from __future__ import annotations

import itertools
import os
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.trial.unittest import TestCase

from conpaassql.iaas.base import NodeSpec, vmName
from conpaassql.iaas.onesim import BOOT_FAILURE, DONE, PROLOG_FAILURE, OneSimulator
from conpaassql.manager.config import ManagerConfig, parse_config
from conpaassql.manager.service import Manager
from conpaassql.manager.tap import ManagerService
from conpaassql.rpc.client import RPCClient
from tests import test_iaas_opennebula as driverTests
from tests.support.mariadb import pid_alive, skip_unless_mariadb
from tests.support.onesim import (
    PASSWORD,
    USER,
    free_port,
    make_driver,
    start_simulator,
)
from tests.test_iaas_local import _processesMentioning
from tests.test_manager_local import nodesIn, until

reactor: Any = _reactor

WAIT = 120.0  # seconds: generous on a 2-core machine shared with other test runs


def managerConfig(url: str, *, timeout: float = 5, **manager: float) -> ManagerConfig:
    """
    A manager configuration file for the simulator at C{url}, parsed as
    twistd would parse it; C{manager} are C{[manager]} keys.
    """
    options = {"poll_interval": 0.2, "boot_poll_interval": 0.1, "boot_timeout": WAIT,
               "list_timeout": 10, "probe_timeout": 2, "agent_port": free_port()}
    options.update(manager)
    text = (
        "[iaas]\n"
        "DRIVER = OPENNEBULA_XMLRPC\n"
        f"OPENNEBULA_URL = {url}\n"
        f"OPENNEBULA_USER = {USER}\n"
        f"OPENNEBULA_PASSWORD = {PASSWORD}\n"
        "OPENNEBULA_IMAGE_ID = 3\n"
        "OPENNEBULA_NETWORK_ID = 0\n"
        "OPENNEBULA_CPU = 0.5\n"
        "OPENNEBULA_MEMORY = 512\n"
        f"OPENNEBULA_TIMEOUT = {timeout:g}\n"
        "\n[manager]\n" + "".join(f"{k} = {v:g}\n" for k, v in options.items())
    )
    return parse_config(text, "manager-opennebula.cnf")


class Running:
    """A manager started for a test, and a client of its API."""

    def __init__(self, service: ManagerService, client: RPCClient, stops: list[int]) -> None:
        self.service = service
        self.client = client
        self.stops = stops

    @property
    def manager(self) -> Manager:
        assert self.service.manager is not None
        return self.service.manager

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        return await self.client.call(method, params or {})

    async def info(self, nodeId: int) -> dict[str, Any]:
        return (await self.call("get_node_info", {"serviceNodeId": nodeId}))["serviceNode"]

    async def timedCall(self, method: str) -> tuple[Any, float]:
        """The result of C{method}, and the seconds it took."""
        start = reactor.seconds()
        result = await self.call(method)
        return result, reactor.seconds() - start

    async def waitRunning(self, ids: list[int]) -> None:
        await until(lambda: nodesIn(self.client, "RUNNING", ids), f"nodes {ids} RUNNING", WAIT)

    async def waitState(self, nodeId: int, state: str) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            info = await self.info(nodeId)
            return info if info["state"] == state else None

        found: dict[str, Any] = await until(check, f"node {nodeId} {state}", WAIT)
        return found

    async def waitGone(self, nodeId: int) -> None:
        async def gone() -> bool:
            return nodeId not in (await self.call("list_nodes"))["serviceNode"]

        await until(gone, f"node {nodeId} gone from list_nodes", WAIT)


async def startManager(case: TestCase, config: ManagerConfig) -> Running:
    """A real manager (ManagerService: API over HTTP, registry, driver), stopped on cleanup."""
    stateDir = os.path.abspath(case.mktemp())
    os.makedirs(stateDir)
    stops: list[int] = []
    service = ManagerService(
        stateDir, config, "tcp:0:interface=127.0.0.1", os.path.join(stateDir, "api-token"),
        reactor=reactor, stopProcess=lambda: stops.append(1),
    )
    service.startService()
    case.addCleanup(lambda: service.stopService() if service.running else None)
    port = await service.listening
    with open(os.path.join(stateDir, "api-token")) as f:
        token = f.read().strip()
    client = RPCClient(f"http://127.0.0.1:{port.getHost().port}/", token, reactor=reactor,
                       timeout=30)
    case.addCleanup(client.close)
    return Running(service, client, stops)


def touched(sim: OneSimulator, vmIds: list[int], since: int) -> list[tuple[Any, ...]]:
    """The calls after the C{since}-th of the call log that name one of C{vmIds}."""
    wanted = set(vmIds)
    return [entry for entry in list(sim.callLog)[since:]
            if entry[1] != "one.vm.allocate" and any(p in wanted for p in entry[2][:2]
                                                     if isinstance(p, int))]


class _EndToEnd:
    """
    SLOW (real agents and mariadbds): the whole chain, manager -> simulator
    -> the VM's boot script -> agent -> nodes RUNNING, for one reply format.
    """

    skip = skip_unless_mariadb()
    timeout = 300
    version = "6.10"

    async def test_nodes_run_on_booted_vms(self: Any) -> None:
        sim, svc = await start_simulator(self, version=self.version, boot=True)
        # Another user's VMs, and a VM of another service of the same user.
        foreign = sim.addForeignVMs(2)
        other = make_driver(self, svc.url, "othersvc")
        otherVm = int((await other.create(NodeSpec(1, vmName("othersvc", 1), {}))).vmId)
        strangers = [*foreign, otherVm]
        logStart = len(sim.callLog)

        m = await startManager(self, managerConfig(svc.url))
        added = await m.call("add_nodes", {"function": "agent", "count": 2})
        self.assertEqual([n["state"] for n in added["serviceNode"]], ["PENDING", "PENDING"])
        try:
            await m.waitRunning([1, 2])
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.logs(sim)}") from None
        infos = [await m.info(1), await m.info(2)]
        vmIds = [int(i["vm_id"]) for i in infos]
        for info, vmId in zip(infos, vmIds):
            self.assertEqual(info["ip"], sim.vms[vmId].ip)
            self.assertTrue(info["ip"].startswith("127."), info)
            self.assertTrue(info["isRunningMySQL"], info)
            self.assertIsInstance(info["mysqld_port"], int)
            self.assertEqual(sim.vms[vmId].name, info["name"])
        self.assertNotEqual(infos[0]["ip"], infos[1]["ip"])
        self.assertEqual(await m.call("list_nodes"), {"serviceNode": [1, 2]})
        self.assertEqual(await m.call("get_service_info"), {
            "state": "RUNNING", "type": "conpaassql", "nodes": {"RUNNING": 2}, "master": None})

        # The agent answers on the VM's address with the node's token only.
        record = m.manager.nodes[1].core.record
        agent = RPCClient(f"http://{infos[0]['ip']}:{infos[0]['port']}/", record.token,
                          reactor=reactor, persistent=False, timeout=10)
        state = (await agent.call("get_server_state"))["return"]
        self.assertEqual(state["state"], "RUNNING")

        # remove_nodes ends the VM in the simulator, and the VM's processes.
        vmDir = sim.booter.vmDir(vmIds[0]) + os.sep  # type: ignore[union-attr]
        pids = _processesMentioning(vmDir)
        self.assertGreaterEqual(len(pids), 2, "an agent and its mariadbd")
        self.assertEqual(await m.call("remove_nodes", {"serviceNodeId": 1}), {"result": "OK"})
        await m.waitGone(1)
        await until(lambda: sim.vms[vmIds[0]].state == DONE, "node 1's VM DONE", WAIT)
        await until(lambda: not any(pid_alive(p) for p in pids), "node 1's processes to end", WAIT)
        self.assertEqual(_processesMentioning(vmDir), [])
        self.assertEqual(await m.call("list_nodes"), {"serviceNode": [2]})

        # shutdown ends every VM; the manager ends STOPPED.
        vmDir2 = sim.booter.vmDir(vmIds[1]) + os.sep  # type: ignore[union-attr]
        self.assertEqual(await m.call("shutdown"), {"state": "EPILOGUE"})

        async def stopped() -> bool:
            return (await m.call("get_service_info"))["state"] == "STOPPED"

        await until(stopped, "the manager to be STOPPED", WAIT)
        await until(lambda: m.stops, "stopProcess", WAIT)
        await until(lambda: sim.vms[vmIds[1]].state == DONE, "node 2's VM DONE", WAIT)
        await until(lambda: not _processesMentioning(vmDir2), "node 2's processes to end", WAIT)

        # The strangers' VMs were never touched, and are as they were.
        self.assertEqual(touched(sim, strangers, logStart), [])
        for vmId in strangers:
            self.assertNotEqual(sim.vms[vmId].state, DONE)
        self.assertEqual(sorted(vm.id for vm in sim.vms.values() if vm.state != DONE),
                         sorted(strangers))

    @staticmethod
    def logs(sim: OneSimulator) -> str:
        booter: Any = sim.booter
        return "\n".join(f"=== VM {vmId}\n" + driverTests.SlowEndToEndBootTests.vmLogs(
            booter.vmDir(vmId)) for vmId in sim.vms)


class EndToEndV610Tests(_EndToEnd, TestCase):
    version = "6.10"


class EndToEndV512Tests(_EndToEnd, TestCase):
    version = "5.12"


class EndToEndV414Tests(_EndToEnd, TestCase):
    version = "4.14"


class CloudFaultTests(TestCase):
    """
    The manager while the cloud fails, with fast fake agents on the VMs'
    addresses.  In every case the API keeps answering at once, the nodes
    whose agents answer stay RUNNING, and everything converges once the
    cloud is back.
    """

    timeout = 180

    async def started(self, nodes: int = 2, **manager: float) -> tuple[OneSimulator, Any, Running]:
        sim, svc = await start_simulator(self, boot="fake")
        m = await startManager(self, managerConfig(svc.url, **manager))
        if nodes:
            await m.call("add_nodes", {"function": "agent", "count": nodes})
            await m.waitRunning(list(range(1, nodes + 1)))
        return sim, svc, m

    async def cloudError(self, m: Running) -> str:
        async def check() -> str | None:
            info = await m.call("get_service_info")
            return info.get("cloud_error")

        error: str = await until(check, "get_service_info to show the cloud error", WAIT)
        return error

    async def cloudBack(self, m: Running) -> None:
        async def check() -> bool:
            return "cloud_error" not in await m.call("get_service_info")

        await until(check, "the cloud error to clear", WAIT)

    def listCalls(self, sim: OneSimulator, since: int = 0) -> list[float]:
        return [t for t, method, _ in list(sim.callLog)[since:] if method == "one.vmpool.info"]

    async def test_error_replies(self) -> None:
        """Error replies and faults: shown, backed off, and the nodes keep their state."""
        sim, _svc, m = await self.started(poll_interval=0.1)
        since = len(sim.callLog)
        sim.failNext("one.vmpool.info", 0x2000, "Internal error: database is locked", times=4)
        sim.faultNext("one.vmpool.info", -501, "Parameter that is supposed to be integer is not")
        error = await self.cloudError(m)
        self.assertIn("database is locked", error)
        self.assertIn("INTERNAL", error)

        async def fault() -> bool:
            return "fault -501" in (await m.call("get_service_info")).get("cloud_error", "")

        await until(fault, "the fault shown", WAIT)
        await self.cloudBack(m)
        # The failed calls came at growing intervals (backing off).
        times = self.listCalls(sim, since)[:6]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        self.assertEqual(len(gaps), 5, times)
        self.assertEqual(gaps, sorted(gaps), gaps)
        self.assertGreater(gaps[-1], 4 * gaps[0], gaps)
        # Agent probes went on meanwhile: the nodes are RUNNING, never ERROR.
        for nodeId in (1, 2):
            info = await m.info(nodeId)
            self.assertEqual((info["state"], info.get("error")), ("RUNNING", None))

    async def test_slow_replies(self) -> None:
        """
        A cloud that answers after the timeout: the API answers at once, and a
        node added meanwhile is created once the cloud answers again.
        """
        sim, _svc, m = await self.started(timeout=3, list_timeout=3)
        sim.replyDelay = 60.0
        before = sim.calls["one.vmpool.info"]
        await until(lambda: sim.calls["one.vmpool.info"] > before, "a list call in flight", WAIT)
        # While that call hangs, the API answers well before the cloud timeout.
        for method in ("list_nodes", "get_service_info"):
            result, seconds = await m.timedCall(method)
            self.assertLess(seconds, 1.0, f"{method} took {seconds:.2f} s")
        self.assertEqual(result["nodes"], {"RUNNING": 2})
        added = await m.call("add_nodes", {"function": "agent"})
        self.assertEqual(added["serviceNode"]["state"], "PENDING")
        self.assertIn("no answer", await self.cloudError(m))
        # The create timed out, but the cloud made the VM: the node is not
        # failed for it, and once the cloud answers it is found and runs.
        self.assertEqual((await m.info(3))["state"], "PENDING")
        sim.replyDelay = 0.0
        await self.cloudBack(m)
        await m.waitRunning([1, 2, 3])
        names = [vm.name for vm in sim.vms.values() if vm.state != DONE]
        self.assertEqual(len(names), 3, names)
        self.assertEqual(len(set(names)), 3, names)

    async def test_endpoint_down_and_back(self) -> None:
        """
        The endpoint refuses connections for a while (then listens again on
        the same port): removal waits for it, and nothing else changes.
        """
        sim, svc, m = await self.started()
        await svc.stopListening()
        self.assertIn("cannot reach", await self.cloudError(m))
        result, seconds = await m.timedCall("list_nodes")
        self.assertEqual(result, {"serviceNode": [1, 2]})
        self.assertLess(seconds, 1.0)
        vmId = int((await m.info(2))["vm_id"])
        self.assertEqual(await m.call("remove_nodes", {"serviceNodeId": 2}), {"result": "OK"})
        self.assertEqual((await m.info(2))["state"], "TERMINATING")
        self.assertEqual((await m.info(1))["state"], "RUNNING")
        await svc.listen()
        await self.cloudBack(m)
        await m.waitGone(2)
        await until(lambda: sim.vms[vmId].state == DONE, "node 2's VM DONE", WAIT)
        self.assertEqual(await m.call("list_nodes"), {"serviceNode": [1]})
        self.assertEqual((await m.info(1))["state"], "RUNNING")

    async def test_failure_states(self) -> None:
        """
        VMs that go to PROLOG_FAILURE or BOOT_FAILURE make their nodes ERROR
        with the cloud's reason; removing them ends the VMs.
        """
        sim, _svc, m = await self.started(nodes=1)
        sim.failNextBoots(1, lcm=PROLOG_FAILURE)
        await m.call("add_nodes", {"function": "agent"})
        info = await m.waitState(2, "ERROR")
        self.assertIn("PROLOG_FAILURE", info["error"])
        self.assertIn("Error executing image transfer script", info["error"])
        sim.failNextBoots(1, lcm=BOOT_FAILURE)
        await m.call("add_nodes", {"function": "agent"})
        info = await m.waitState(3, "ERROR")
        self.assertIn("BOOT_FAILURE", info["error"])
        # A RUNNING node's VM that fails.
        vmId = int((await m.info(1))["vm_id"])
        sim.failVM(vmId, BOOT_FAILURE, "the host crashed")
        info = await m.waitState(1, "ERROR")
        self.assertIn("the host crashed", info["error"])
        self.assertEqual((await m.call("get_service_info"))["nodes"], {"ERROR": 3})
        vmIds = [int((await m.info(n))["vm_id"]) for n in (1, 2, 3)]
        for nodeId in (1, 2, 3):
            await m.call("remove_nodes", {"serviceNodeId": nodeId})
        for nodeId in (1, 2, 3):
            await m.waitGone(nodeId)
        await until(lambda: all(sim.vms[v].state == DONE for v in vmIds), "the VMs DONE", WAIT)

    async def test_lost_vm(self) -> None:
        """A VM that vanishes from the cloud: its node is ERROR, and removable."""
        sim, _svc, m = await self.started()
        vmId = int((await m.info(1))["vm_id"])
        sim.loseVM(vmId)
        info = await m.waitState(1, "ERROR")
        self.assertIn(f"the cloud no longer has VM {vmId}", info["error"])
        self.assertEqual((await m.info(2))["state"], "RUNNING")
        await m.call("remove_nodes", {"serviceNodeId": 1})
        await m.waitGone(1)
        self.assertEqual(await m.call("list_nodes"), {"serviceNode": [2]})


class CallCountTests(TestCase):
    """One XML-RPC call per poll cycle, whatever the number of nodes."""

    timeout = 180

    async def test_calls_per_cycle(self) -> None:
        sim, svc = await start_simulator(self, boot="fake")
        sim.addForeignVMs(50)
        # The poller runs once at start; the test drives the cycles itself.
        m = await startManager(self, managerConfig(svc.url, poll_interval=3600,
                                                   boot_poll_interval=3600))
        manager = m.manager
        await until(lambda: manager.cycles >= 1, "the first poll cycle", WAIT)
        perCycle: dict[int, list[dict[str, int]]] = {}
        total = 0
        for count in (1, 10, 100):
            while total < count:
                step = min(50, count - total)
                await m.call("add_nodes", {"function": "agent", "count": step})
                total += step

            async def allRunning(count: int = count) -> bool:
                await manager.pollOnce()
                return sum(n.state == "RUNNING" for n in manager.nodes.values()) == count

            await until(allRunning, f"{count} nodes RUNNING", WAIT)
            cycles = []
            for _ in range(3):
                before = sim.calls.copy()
                await manager.pollOnce()
                cycles.append(dict(sim.calls - before))
            perCycle[count] = cycles
        self.assertEqual(perCycle, {n: [{"one.vmpool.info": 1}] * 3 for n in (1, 10, 100)})
