"""
An in-memory cloud driver for unit tests, implementing
L{conpaassql.iaas.base.IaaSDriver}, with controllable VM states and
failure injection.

    driver = FakeDriver(clock, serviceTag="abcd1234")
    vm = await driver.create(spec)          # PENDING, RUNNING after bootDelay
    driver.setState(vm.vmId, "FAILED", "disk full")
    driver.failList = CloudFailure("down")  # the next list() calls fail
    driver.holdCreate = True                # create() waits for releaseCreates()

Like a real cloud it holds VMs of other services too (L{addForeign}), and
never lists, changes or ends them.  It is tested against the same contract
as the real drivers (tests/test_manager_fakedriver.py).
"""

from __future__ import annotations

import builtins
import itertools
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from twisted.internet.defer import Deferred

from conpaassql.iaas.base import CloudFailure, NodeSpec, VMInfo, vmNamePrefix

__all__ = ["FakeCloud", "FakeDriver", "FakeVM"]


@dataclass
class FakeVM:
    info: VMInfo
    spec: NodeSpec | None
    bootAt: float | None = None


class FakeCloud:
    """The VMs of one cloud account, which several drivers (services) may share."""

    def __init__(self) -> None:
        self.vms: dict[str, FakeVM] = {}
        self.ids = itertools.count(100)


class FakeDriver:
    name = "FAKE"

    def __init__(
        self,
        clock: Any,
        serviceTag: str = "fake0001",
        *,
        bootDelay: float = 0.0,
        ip: str = "127.0.0.1",
        agentPort: Callable[[NodeSpec], int | None] | None = None,
        cloud: FakeCloud | None = None,
    ) -> None:
        self.clock = clock
        self.serviceTag = serviceTag
        self.prefix = vmNamePrefix(serviceTag)
        #: Seconds from create to RUNNING (0: RUNNING at once).
        self.bootDelay = bootDelay
        self.ip = ip
        #: Called on create: the port the node's agent will listen on.
        self.agentPort = agentPort
        self.cloud = cloud or FakeCloud()
        self.vms = self.cloud.vms
        self._ids = self.cloud.ids
        self.calls: list[tuple[str, Any]] = []
        self.failCreate: Exception | None = None
        self.failList: Exception | None = None
        self.failTerminate: Exception | None = None
        self.holdCreate = False
        self.holdList = False
        self._held: list[Deferred[None]] = []
        self.closed = False

    # Test controls.

    def bind(self, serviceTag: str) -> FakeDriver:
        """Adopt the manager's tag (the driverFactory of a Manager)."""
        self.serviceTag = serviceTag
        self.prefix = vmNamePrefix(serviceTag)
        return self

    def addForeign(self, name: str, state: str = "RUNNING") -> str:
        """A VM of somebody else in the same cloud account."""
        vmId = str(next(self._ids))
        self.vms[vmId] = FakeVM(VMInfo(vmId, name, state, self.ip), None)
        return vmId

    def addVM(self, name: str, state: str = "RUNNING", agentPort: int | None = None) -> str:
        """A VM that exists without a create call (e.g. left by a crash)."""
        vmId = str(next(self._ids))
        self.vms[vmId] = FakeVM(VMInfo(vmId, name, state, self.ip, agentPort), None)
        return vmId

    def setState(self, vmId: str, state: str, detail: str = "") -> None:
        vm = self.vms[vmId]
        vm.info = replace(vm.info, state=state, detail=detail)
        vm.bootAt = None

    def vanish(self, vmId: str) -> None:
        del self.vms[vmId]

    def releaseCreates(self) -> None:
        held, self._held = self._held, []
        for d in held:
            d.callback(None)

    def ours(self) -> builtins.list[VMInfo]:
        """Every VM of the service that is not GONE, without recording a call."""
        self._boot()
        return [vm.info for vm in self.vms.values()
                if vm.info.name.startswith(self.prefix) and vm.info.state != "GONE"]

    def byName(self, name: str) -> VMInfo | None:
        return next((vm.info for vm in self.vms.values() if vm.info.name == name), None)

    def _boot(self) -> None:
        now = self.clock.seconds()
        for vm in self.vms.values():
            if vm.bootAt is not None and now >= vm.bootAt:
                vm.info = replace(vm.info, state="RUNNING")
                vm.bootAt = None

    # The driver interface.

    async def create(self, spec: NodeSpec) -> VMInfo:
        self.calls.append(("create", spec))
        if not spec.name.startswith(self.prefix):
            raise CloudFailure(f"{spec.name} does not carry the tag {self.serviceTag}",
                               transient=False)
        if self.holdCreate:
            d: Deferred[None] = Deferred()
            self._held.append(d)
            await d
        if self.failCreate is not None:
            raise self.failCreate
        if self.byName(spec.name) is not None:
            raise CloudFailure(f"a VM named {spec.name} exists", transient=False)
        vmId = str(next(self._ids))
        port = self.agentPort(spec) if self.agentPort else None
        state = "RUNNING" if self.bootDelay == 0 else "PENDING"
        info = VMInfo(vmId, spec.name, state, self.ip, port)
        bootAt = None if self.bootDelay == 0 else self.clock.seconds() + self.bootDelay
        self.vms[vmId] = FakeVM(info, spec, bootAt)
        return info

    async def list(self) -> builtins.list[VMInfo]:
        self.calls.append(("list", None))
        # A held reply says what the cloud had when it answered.
        answer = self.ours()
        if self.holdList:
            d: Deferred[None] = Deferred()
            self._held.append(d)
            await d
        if self.failList is not None:
            raise self.failList
        return answer

    async def terminate(self, vmId: str) -> None:
        self.calls.append(("terminate", vmId))
        if self.failTerminate is not None:
            raise self.failTerminate
        vm = self.vms.get(vmId)
        if vm is None:
            return
        if not vm.info.name.startswith(self.prefix):
            raise CloudFailure(f"VM {vmId} is not this service's", transient=False)
        del self.vms[vmId]

    async def close(self) -> None:
        self.closed = True

    def callsOf(self, name: str) -> builtins.list[Any]:
        return [arg for method, arg in self.calls if method == name]
