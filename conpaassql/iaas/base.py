"""
The interface every cloud driver implements, and the values it speaks in.

A driver makes and ends the VMs (or local stand-ins) of one service; it does
not run MySQL.  The manager knows its VMs by name: every VM a driver creates
is named from L{NodeSpec.name}, which starts with the service's tag
(L{vmNamePrefix}), and L{IaaSDriver.list} returns only the VMs whose names
carry that tag.  A driver never lists, changes or ends a VM that is not the
service's own.

Drivers are built from the C{[iaas]} section of the manager's configuration
by a module-level C{makeDriver(settings, *, stateDir, reactor, serviceTag)}
in each driver module; it raises L{DriverConfigError} with every problem of
the section at once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

#: VM states as the manager sees them, whatever the cloud calls them.
#: PENDING: asked of the cloud, not yet booting (e.g. OpenNebula PENDING, HOLD, PROLOG).
#: BOOTING: the cloud is starting it (OpenNebula BOOT).
#: RUNNING: the cloud says it runs; its agent may or may not answer yet.
#: FAILED:  the cloud reports a failure; L{VMInfo.detail} says which.
#: GONE:    it ended, or is ending (terminated, done, deleted).
VM_STATES = ("PENDING", "BOOTING", "RUNNING", "FAILED", "GONE")

#: Context keys every driver passes to the node (OpenNebula CONTEXT variables,
#: libcloud user data, or the local agent's files and options).
#: MANAGER_URL: the manager's API URL.  NODE_ID: the manager's node id.
#: AGENT_TOKEN: the only token the node's agent accepts (a secret).
#: AGENT_PORT: the port the agent listens on.
#: SERVICE_TAG: the service's tag.
CONTEXT_KEYS = ("MANAGER_URL", "NODE_ID", "AGENT_TOKEN", "AGENT_PORT", "SERVICE_TAG")

_TAG = re.compile(r"[a-z0-9]{4,32}")


def vmNamePrefix(serviceTag: str) -> str:
    """The prefix of the names of every VM of the service tagged C{serviceTag}."""
    if not _TAG.fullmatch(serviceTag):
        raise ValueError(f"a service tag is 4-32 lowercase letters and digits: {serviceTag!r}")
    return f"conpaassql-{serviceTag}-"


def vmName(serviceTag: str, nodeId: int) -> str:
    """The name of node C{nodeId}'s VM, e.g. C{conpaassql-3f9a1c-node-7}."""
    return f"{vmNamePrefix(serviceTag)}node-{int(nodeId)}"


def nodeIdOfName(serviceTag: str, name: str) -> int | None:
    """The node id in a VM name of this service, or L{None} if it is not one of ours."""
    m = re.fullmatch(re.escape(vmNamePrefix(serviceTag)) + r"node-([0-9]{1,18})", name)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class NodeSpec:
    """
    What the manager asks of a driver for one node.

    @ivar nodeId: the manager's id of the node.
    @ivar name: the VM's name (L{vmName}); the driver uses it as given.
    @ivar context: what the node needs to join (L{CONTEXT_KEYS}); values are
        strings, some secret: a driver never logs them or puts them on a
        command line.
    """

    nodeId: int
    name: str
    context: Mapping[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:  # never show the context: it holds the agent token
        return f"NodeSpec(nodeId={self.nodeId!r}, name={self.name!r})"


@dataclass(frozen=True)
class VMInfo:
    """
    One VM as the cloud reports it.

    @ivar vmId: the cloud's id of the VM (a string whatever the cloud uses).
    @ivar name: its name (L{vmName} for ours).
    @ivar state: one of L{VM_STATES}.
    @ivar ip: its address, once known.
    @ivar agentPort: the port its agent listens on, where the driver knows
        it (the local driver); L{None} means the C{AGENT_PORT} of its context.
    @ivar detail: the cloud's own word for the state, or the failure reason.
    """

    vmId: str
    name: str
    state: str
    ip: str | None = None
    agentPort: int | None = None
    detail: str = ""


class DriverConfigError(Exception):
    """The C{[iaas]} settings are wrong; C{problems} lists every one."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class CloudFailure(Exception):
    """
    A cloud call failed (an error reply, a fault, no answer in time, refused
    connection).  The message says what was asked and what the cloud said;
    it holds no secret.  C{transient} is true when trying again later may work.
    """

    def __init__(self, message: str, *, transient: bool = True) -> None:
        super().__init__(message)
        self.transient = transient


@runtime_checkable
class IaaSDriver(Protocol):
    """
    A cloud driver.  Every method is a coroutine that fails with
    L{CloudFailure}; none blocks the reactor and every cloud call has a
    timeout.
    """

    #: The C{DRIVER} name this driver is chosen by (e.g. C{"LOCAL"}).
    name: str

    async def create(self, spec: NodeSpec) -> VMInfo:
        """
        Ask the cloud for a VM for C{spec}; return as soon as the cloud has
        accepted it (state PENDING or later), without waiting for it to boot.
        """

    async def list(self) -> list[VMInfo]:
        """
        Every VM of this service (by name tag) that the cloud knows, in one
        cloud call whatever their number.  VMs of others are never returned.
        """

    async def terminate(self, vmId: str) -> None:
        """
        End the VM C{vmId} and free what it holds.  Ending a VM that is
        already gone is not an error.  Refuses (L{CloudFailure}) a VM that is
        not the service's own.
        """

    async def close(self) -> None:
        """Release the driver's connections, threads and timers (on manager stop)."""


__all__ = [
    "CONTEXT_KEYS",
    "CloudFailure",
    "DriverConfigError",
    "IaaSDriver",
    "NodeSpec",
    "VMInfo",
    "VM_STATES",
    "nodeIdOfName",
    "vmName",
    "vmNamePrefix",
]
