"""
The fake cloud driver of the manager's unit tests keeps the same contract
as the real drivers.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from conpaassql.iaas.base import IaaSDriver
from tests.support.drivercontract import DriverContractMixin
from tests.support.fakedriver import FakeCloud, FakeDriver


class FakeDriverContractTests(DriverContractMixin, TestCase):
    def setUp(self) -> None:
        self.cloud = FakeCloud()

    def makeTestDriver(self, serviceTag: str) -> IaaSDriver:
        driver = FakeDriver(reactor, serviceTag, cloud=self.cloud)
        return driver


class SlowBootContractTests(FakeDriverContractTests):
    """VMs that are PENDING for a while before they run."""

    def makeTestDriver(self, serviceTag: str) -> IaaSDriver:
        return FakeDriver(reactor, serviceTag, cloud=self.cloud, bootDelay=0.2)
