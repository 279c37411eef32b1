"""
Tests of the libcloud driver (conpaassql.iaas.libcloud) with libcloud's own
dummy compute driver (Provider.DUMMY): settings, state mapping, the calls
made in the driver's thread pool, user data, filtering by name, terminate,
and the driver contract.

libcloud's DummyNodeDriver ignores the name given to create_node (its nodes
are all called dummy-N), keeps its nodes per driver object and reuses ids;
the tests therefore also register a thin subclass of it that keeps the name
and the user data, shares one node list per credential and numbers nodes
uniquely ("conpaassql_test_dummy", below).  Everything else is libcloud's.
"""

from __future__ import annotations

import itertools
import threading
import uuid
from typing import Any, ClassVar

from libcloud.compute.drivers.dummy import DummyNodeDriver
from libcloud.compute.providers import Provider, set_driver
from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from conpaassql.iaas.base import CloudFailure, DriverConfigError, IaaSDriver, NodeSpec, vmName
from conpaassql.iaas.libcloud import LibcloudDriver, makeDriver, mapNodeState, parseConfig
from tests.support.drivercontract import DriverContractMixin

TAG = "svc1"
TEST_PROVIDER = "conpaassql_test_dummy"


class NamingDummyNodeDriver(DummyNodeDriver):
    """libcloud's dummy, keeping names and user data, one node list per credential."""

    clouds: ClassVar[dict[str, list[Any]]] = {}
    userData: ClassVar[dict[str, str | None]] = {}
    ids = itertools.count(100)
    lock = threading.Lock()

    def __init__(self, creds: str) -> None:
        super().__init__(creds)
        self.nl = self.clouds.setdefault(creds, self.nl)

    def create_node(self, name: str, size: Any, image: Any, ex_userdata: str | None = None) -> Any:  # type: ignore[override]
        with self.lock:
            node = super().create_node(name, size, image)
            node.id = str(next(self.ids))
            node.name = name
            self.userData[node.id] = ex_userdata
        return node


try:
    set_driver(TEST_PROVIDER, __name__, "NamingDummyNodeDriver")
except AttributeError:  # already registered (module imported twice)
    pass


def settings(**extra: str) -> dict[str, str]:
    s = {
        "DRIVER": "LIBCLOUD", "LIBCLOUD_PROVIDER": TEST_PROVIDER, "LIBCLOUD_KEY": uuid.uuid4().hex,
        "LIBCLOUD_IMAGE": "1", "LIBCLOUD_SIZE": "Small", "LIBCLOUD_ADDRESS": "public",
        "LIBCLOUD_TIMEOUT": "10",
    }
    s.update(extra)
    return s


def spec(nodeId: int, tag: str = TAG) -> NodeSpec:
    return NodeSpec(nodeId, vmName(tag, nodeId), {
        "MANAGER_URL": "http://10.0.0.1:50000/", "NODE_ID": str(nodeId), "AGENT_TOKEN": "t'ok",
        "AGENT_PORT": "60000", "SERVICE_TAG": tag,
    })


class ConfigTests(SynchronousTestCase):
    def test_every_problem(self) -> None:
        with self.assertRaises(DriverConfigError) as e:
            parseConfig({"LIBCLOUD_PROVIDER": "nosuchcloud", "LIBCLOUD_ADDRESS": "both",
                         "LIBCLOUD_THREADS": "0", "OPENNEBULA_URL": "x"})
        text = "\n".join(e.exception.problems)
        for key in ("OPENNEBULA_URL: unknown", "LIBCLOUD_PROVIDER: libcloud has no", "LIBCLOUD_KEY: missing",
                    "LIBCLOUD_IMAGE: missing", "LIBCLOUD_SIZE: missing", "LIBCLOUD_ADDRESS", "LIBCLOUD_THREADS"):
            self.assertIn(key, text)

    def test_extra_arguments(self) -> None:
        c = parseConfig(settings(LIBCLOUD_EXTRA_EX_FORCE_AUTH_URL="https://keystone:5000", libcloud_secret="s"))
        self.assertEqual(dict(c.extra), {"ex_force_auth_url": "https://keystone:5000"})
        self.assertNotIn("'s'", repr(c))

    def test_states(self) -> None:
        from libcloud.compute.types import NodeState

        self.assertEqual(mapNodeState(NodeState.PENDING), "PENDING")
        self.assertEqual(mapNodeState(NodeState.STARTING), "BOOTING")
        self.assertEqual(mapNodeState(NodeState.RUNNING), "RUNNING")
        self.assertEqual(mapNodeState(NodeState.ERROR), "FAILED")
        self.assertEqual(mapNodeState(NodeState.STOPPED), "FAILED")
        self.assertEqual(mapNodeState(NodeState.TERMINATED), "GONE")


class DummyTests(TestCase):
    def driver(self, **extra: str) -> LibcloudDriver:
        d = makeDriver(settings(**extra), stateDir=self.mktemp(), reactor=reactor, serviceTag=TAG)
        self.addCleanup(d.close)
        return d

    async def test_plain_dummy_provider(self) -> None:
        d = makeDriver(settings(LIBCLOUD_PROVIDER=Provider.DUMMY, LIBCLOUD_KEY="0"),
                       stateDir=self.mktemp(), reactor=reactor, serviceTag=TAG)
        self.addCleanup(d.close)
        self.assertEqual(await d.list(), [])  # dummy-1 and dummy-2 are not ours
        self.assertEqual(d.calls, {"list_nodes": 1})
        info = await d.create(spec(1))  # libcloud's dummy names it dummy-3
        self.assertEqual(info.state, "RUNNING")
        self.assertEqual(await d.list(), [])
        await d.close()
        self.assertFalse(d.pool.started)

    async def test_create_list_terminate(self) -> None:
        d = self.driver()
        self.assertIsInstance(d, IaaSDriver)
        info = await d.create(spec(1))
        self.assertEqual((info.name, info.state, info.ip), (vmName(TAG, 1), "RUNNING", info.ip))
        listed = await d.list()
        self.assertEqual([(v.vmId, v.name, v.state) for v in listed], [(info.vmId, vmName(TAG, 1), "RUNNING")])
        self.assertTrue(listed[0].ip and listed[0].ip.startswith("127.0.0."))
        data = NamingDummyNodeDriver.userData[info.vmId]
        assert data is not None
        self.assertTrue(data.startswith("#!/bin/sh\nexport MANAGER_URL="))
        self.assertIn("export AGENT_TOKEN='t'\"'\"'ok'\n", data)
        self.assertIn("twistd", data)
        await d.terminate(info.vmId)
        self.assertEqual(await d.list(), [])
        await d.terminate(info.vmId)  # gone: fine

    async def test_refusals(self) -> None:
        d = self.driver()
        with self.assertRaises(CloudFailure):
            await d.create(spec(1, tag="other"))
        with self.assertRaises(CloudFailure) as e:
            await d.terminate("1")  # dummy-1: not ours
        self.assertFalse(e.exception.transient)
        self.assertIn("refusing", str(e.exception))

    async def test_unknown_image_and_size(self) -> None:
        with self.assertRaises(CloudFailure) as e:
            await self.driver(LIBCLOUD_IMAGE="no-such-image").create(spec(1))
        self.assertIn("no image", str(e.exception))
        with self.assertRaises(CloudFailure) as e:
            await self.driver(LIBCLOUD_SIZE="Huge").create(spec(1))
        self.assertIn("no size", str(e.exception))
        with self.assertRaises(CloudFailure) as e:
            await self.driver(LIBCLOUD_NETWORK="net-1").create(spec(1))
        self.assertIn("takes no LIBCLOUD_NETWORK", str(e.exception))

    async def test_calls_run_off_the_reactor_thread(self) -> None:
        d = self.driver()
        seen: list[bool] = []
        original = NamingDummyNodeDriver.list_nodes

        def spy(cloud: Any) -> Any:
            seen.append(threading.current_thread() is threading.main_thread())
            return original(cloud)

        self.patch(NamingDummyNodeDriver, "list_nodes", spy)
        await d.list()
        self.assertEqual(seen, [False])

    async def test_one_call_per_list(self) -> None:
        d = self.driver()
        for n in range(1, 21):
            await d.create(spec(n))
        before = d.calls.get("list_nodes", 0)
        self.assertEqual(len(await d.list()), 20)
        self.assertEqual(d.calls["list_nodes"] - before, 1)


class LibcloudContractTests(DriverContractMixin, TestCase):
    runningTimeout = 10.0

    def setUp(self) -> None:
        self.key = uuid.uuid4().hex

    def makeTestDriver(self, serviceTag: str) -> IaaSDriver:
        d = makeDriver(settings(LIBCLOUD_KEY=self.key), stateDir=self.mktemp(), reactor=reactor, serviceTag=serviceTag)
        self.addCleanup(d.close)
        return d

    def unknownVmId(self, serviceTag: str) -> str:
        return "987654"
