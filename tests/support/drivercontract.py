"""
The contract every cloud driver (L{conpaassql.iaas.base.IaaSDriver}) must
keep, as a mixin of tests to run against each driver, real or fake.

Usage, in a C{twisted.trial.unittest.TestCase} (real reactor or not, as the
driver needs)::

    class LocalDriverContractTests(DriverContractMixin, TestCase):
        def makeTestDriver(self, serviceTag: str) -> IaaSDriver:
            driver = ...  # a driver of that service tag, on THIS test's cloud
            self.addCleanup(driver.close)
            return driver

Every call of L{makeTestDriver} in one test must give a driver on the same
cloud (the same base directory, the same fake or recorded cloud), so that
the tests can check that two services never see each other's VMs.  Every VM
a test creates is terminated in a cleanup (registered after the driver's,
so it runs before the driver is closed).

Hooks besides L{makeTestDriver}, with defaults:
  - L{contractContext}: the context of a node spec.
  - L{unknownVmId}: an id of this service that names no VM.
  - C{runningTimeout}: seconds a created VM may take to be RUNNING.
  - C{pollInterval}: seconds between two C{list()} calls while waiting.
"""

from __future__ import annotations

import secrets
from typing import Any

from twisted.internet.defer import Deferred

from conpaassql.iaas.base import (
    VM_STATES,
    CloudFailure,
    IaaSDriver,
    NodeSpec,
    VMInfo,
    vmName,
    vmNamePrefix,
)

__all__ = ["DriverContractMixin"]


class DriverContractMixin:
    """
    Tests of the driver contract; mix into a trial C{TestCase} and define
    L{makeTestDriver}.
    """

    #: The service tag of the driver under test, and of another service.
    contractTag = "contract"
    foreignTag = "foreign"
    runningTimeout = 180.0
    pollInterval = 0.05

    # Provided by the TestCase this is mixed into.
    addCleanup: Any
    assertEqual: Any
    assertIn: Any
    assertNotIn: Any
    assertIsInstance: Any
    assertIsNotNone: Any
    assertFalse: Any
    assertTrue: Any
    fail: Any

    # -- hooks

    def makeTestDriver(self, serviceTag: str) -> IaaSDriver:
        """
        A driver of C{serviceTag} on this test's cloud; register its
        cleanup (C{close}) yourself.
        """
        raise NotImplementedError("define makeTestDriver(serviceTag)")

    def contractContext(self, serviceTag: str, nodeId: int) -> dict[str, str]:
        return {
            "MANAGER_URL": "http://127.0.0.1:9/",
            "NODE_ID": str(nodeId),
            "AGENT_TOKEN": secrets.token_urlsafe(24),
            "AGENT_PORT": "0",
            "SERVICE_TAG": serviceTag,
        }

    def unknownVmId(self, serviceTag: str) -> str:
        """An id that is this service's by form but names no VM."""
        return vmName(serviceTag, 987654)

    # -- helpers

    def contractSpec(self, serviceTag: str, nodeId: int) -> NodeSpec:
        return NodeSpec(
            nodeId, vmName(serviceTag, nodeId), self.contractContext(serviceTag, nodeId)
        )

    async def contractCreate(self, driver: IaaSDriver, spec: NodeSpec) -> VMInfo:
        """
        Create a VM and register its termination as a cleanup.
        """
        info = await driver.create(spec)
        self.addCleanup(lambda: Deferred.fromCoroutine(driver.terminate(info.vmId)))
        return info

    async def contractFind(self, driver: IaaSDriver, vmId: str) -> VMInfo | None:
        for info in await driver.list():
            if info.vmId == vmId:
                return info
        return None

    async def contractWaitFor(
        self, driver: IaaSDriver, vmId: str, states: tuple[str, ...]
    ) -> VMInfo:
        """
        Poll C{list()} until the VM is in one of C{states}; fail the test
        after C{runningTimeout} seconds.
        """
        from twisted.internet import reactor as _reactor
        from twisted.internet.task import deferLater

        reactor: Any = _reactor

        deadline = reactor.seconds() + self.runningTimeout
        last: VMInfo | None = None
        while reactor.seconds() < deadline:
            last = await self.contractFind(driver, vmId)
            if last is not None and last.state in states:
                return last
            await deferLater(reactor, self.pollInterval, lambda: None)
        self.fail(f"{vmId} not in {states} after {self.runningTimeout:g} s; last seen: {last}")
        raise AssertionError("unreachable")

    # -- the contract

    async def test_contract_is_a_driver(self) -> None:
        driver = self.makeTestDriver(self.contractTag)
        self.assertIsInstance(driver, IaaSDriver)
        self.assertIsInstance(driver.name, str)
        self.assertTrue(driver.name)

    async def test_contract_list_empty(self) -> None:
        driver = self.makeTestDriver(self.contractTag)
        self.assertEqual(await driver.list(), [])

    async def test_contract_create_pending_or_later(self) -> None:
        driver = self.makeTestDriver(self.contractTag)
        spec = self.contractSpec(self.contractTag, 1)
        info = await self.contractCreate(driver, spec)
        self.assertIsInstance(info, VMInfo)
        self.assertEqual(info.name, spec.name)
        self.assertIsInstance(info.vmId, str)
        self.assertTrue(info.vmId)
        self.assertIn(info.state, ("PENDING", "BOOTING", "RUNNING"))

    async def test_contract_created_vm_listed(self) -> None:
        driver = self.makeTestDriver(self.contractTag)
        spec = self.contractSpec(self.contractTag, 2)
        info = await self.contractCreate(driver, spec)
        listed = await self.contractFind(driver, info.vmId)
        self.assertIsNotNone(listed)
        assert listed is not None
        self.assertEqual(listed.name, spec.name)
        self.assertIn(listed.state, VM_STATES)
        self.assertNotIn(listed.state, ("GONE",))

    async def test_contract_eventually_running(self) -> None:
        driver = self.makeTestDriver(self.contractTag)
        info = await self.contractCreate(driver, self.contractSpec(self.contractTag, 3))
        running = await self.contractWaitFor(driver, info.vmId, ("RUNNING", "FAILED"))
        self.assertEqual(running.state, "RUNNING", running.detail)
        self.assertIsNotNone(running.ip)

    async def test_contract_list_only_own(self) -> None:
        ours = self.makeTestDriver(self.contractTag)
        theirs = self.makeTestDriver(self.foreignTag)
        mine = await self.contractCreate(ours, self.contractSpec(self.contractTag, 4))
        other = await self.contractCreate(theirs, self.contractSpec(self.foreignTag, 4))
        listed = await ours.list()
        self.assertEqual([i.vmId for i in listed], [mine.vmId])
        for info in listed:
            self.assertTrue(info.name.startswith(vmNamePrefix(self.contractTag)), info)
        self.assertEqual([i.vmId for i in await theirs.list()], [other.vmId])

    async def test_contract_terminate_unknown(self) -> None:
        driver = self.makeTestDriver(self.contractTag)
        await driver.terminate(self.unknownVmId(self.contractTag))

    async def test_contract_terminate_twice(self) -> None:
        driver = self.makeTestDriver(self.contractTag)
        info = await self.contractCreate(driver, self.contractSpec(self.contractTag, 5))
        await driver.terminate(info.vmId)
        await driver.terminate(info.vmId)
        after = await self.contractFind(driver, info.vmId)
        self.assertTrue(after is None or after.state == "GONE", after)

    async def test_contract_terminate_refuses_foreign(self) -> None:
        ours = self.makeTestDriver(self.contractTag)
        theirs = self.makeTestDriver(self.foreignTag)
        other = await self.contractCreate(theirs, self.contractSpec(self.foreignTag, 6))
        try:
            await ours.terminate(other.vmId)
        except CloudFailure as e:
            self.assertFalse(e.transient)
        else:
            self.fail("terminate of another service's VM did not fail")
        still = await self.contractFind(theirs, other.vmId)
        self.assertIsNotNone(still)
        assert still is not None
        self.assertNotIn(still.state, ("GONE",))

    async def test_contract_create_refuses_foreign_name(self) -> None:
        driver = self.makeTestDriver(self.contractTag)
        spec = self.contractSpec(self.foreignTag, 7)
        try:
            info = await driver.create(spec)
        except CloudFailure as e:
            self.assertFalse(e.transient)
        else:
            self.addCleanup(lambda: Deferred.fromCoroutine(driver.terminate(info.vmId)))
            self.fail("a VM was created with another service's name")
        self.assertEqual(await driver.list(), [])
