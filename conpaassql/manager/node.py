"""
One node's lifecycle: an explicit state machine (Automat's
C{TypeMachineBuilder}) fed by what the cloud and the node's agent report.

States (the names the registry keeps and the API shows)::

    PENDING ----cloud running----> BOOTING ----agent up----> RUNNING <--agent up--+
       |                              |                        |                  |
       | cloud failed / gone,         | cloud failed / gone,   | agent down       |
       | create failed, timed out     | timed out, server      v                  |
       |                              | cannot start           |                  |
       +--------------> ERROR <-------+-------------- RUNNING (unreachable) ------+
                                                   (timed out, cloud failed/gone)
    any state --remove--> TERMINATING --terminated--> TERMINATED

A node that is briefly unreachable stays RUNNING with the C{unreachable}
flag (its own machine state, kept as C{unreachable_since}) and recovers when
its agent answers; only a silence longer than C{unreachable_timeout} makes
it ERROR.  Inputs that mean nothing in a state are explicit loops.

Behaviours never raise and never wait: they change the node's record and
queue its write to the registry (L{NodeCore.flush} waits for the writes),
and ask the manager to act (terminate a VM) through L{NodeHooks}.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from automat import TypeMachineBuilder
from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger

from conpaassql.iaas.base import VMInfo
from conpaassql.manager.registry import NodeRecord, Registry

__all__ = [
    "LIVE_STATES",
    "Node",
    "NodeCore",
    "NodeHooks",
    "NodeInputs",
    "NodeMachine",
]

log = Logger()

#: The states of nodes that list_nodes shows.
LIVE_STATES = ("PENDING", "BOOTING", "RUNNING", "ERROR", "TERMINATING")
#: States in which the service is adapting (nodes coming or going).
ADAPTING_STATES = ("PENDING", "BOOTING", "TERMINATING")


class NodeInputs(Protocol):
    """What can happen to a node."""

    def created(self, vm: VMInfo) -> None:
        "The driver's create call returned this VM."

    def createFailed(self, reason: str) -> None:
        "The driver's create call failed."

    def createDelayed(self, reason: str) -> None:
        """
        The driver's create call failed in a way that may pass (no answer in
        time, no connection): the cloud may or may not have made the VM.
        """

    def cloudPending(self, vm: VMInfo) -> None:
        "The cloud lists the VM as PENDING or BOOTING."

    def cloudRunning(self, vm: VMInfo) -> None:
        "The cloud lists the VM as RUNNING."

    def cloudFailed(self, vm: VMInfo) -> None:
        "The cloud lists the VM as FAILED."

    def cloudGone(self, reason: str) -> None:
        "The cloud no longer has the VM (or lists it GONE)."

    def agentUp(self, info: Mapping[str, Any]) -> None:
        "The agent answered and its database server runs."

    def agentDown(self, reason: str) -> None:
        "The agent did not answer, or its database server does not run."

    def timedOut(self, reason: str) -> None:
        "A deadline of the current state passed."

    def agentFailed(self, reason: str) -> None:
        "The agent answers, but its database server cannot be started."

    def remove(self) -> None:
        "Someone asked for the node to go."

    def terminated(self) -> None:
        "The VM is ended (or there was none to end)."

    def terminateFailed(self, reason: str) -> None:
        "Ending the VM failed; it is tried again."


@dataclass
class NodeHooks:
    """What the node asks of the manager."""

    #: Called on entering TERMINATING, and when a VM id is learnt there.
    terminate: Callable[[NodeCore], None]
    #: Called on entering TERMINATED.
    gone: Callable[[NodeCore], None]
    #: Called on every state change (old state, new state).
    changed: Callable[[NodeCore, str, str], None] = lambda core, old, new: None


class NodeCore:
    """
    A node's data and side effects: its registry record, the queue of its
    writes, and the clock its deadlines are read on.
    """

    def __init__(
        self,
        record: NodeRecord,
        registry: Registry,
        clock: Any,
        hooks: NodeHooks,
        *,
        bootTimeout: float,
        unreachableTimeout: float,
    ) -> None:
        self.record = record
        self.registry = registry
        self.clock = clock
        self.hooks = hooks
        self.bootTimeout = bootTimeout
        self.unreachableTimeout = unreachableTimeout
        #: The agent's last get_server_state answer.
        self.agentInfo: Mapping[str, Any] = {}
        #: Why the last probe failed (while booting or unreachable).
        self.lastProbeError: str | None = None
        #: How often the manager asked the agent to start its server again.
        self.startAttempts = 0
        #: Whether the last failed probe had an answer (the agent runs, its
        #: database server does not).
        self.agentAnswered = False
        #: Milliseconds the last successful probe took.
        self.probeMs: float | None = None
        self._writes: list[Deferred[None]] = []

    @property
    def id(self) -> int:
        return self.record.id

    @property
    def state(self) -> str:
        return self.record.state

    @property
    def unreachable(self) -> bool:
        return self.record.unreachable_since is not None

    # Writes.

    def save(self) -> None:
        """Queue a write of the record as it is now."""
        d = Deferred.fromCoroutine(self.registry.save(replace(self.record)))
        self._writes.append(d)

        def done(result: Any) -> Any:
            self._writes.remove(d)
            return result

        d.addBoth(done)

    def flush(self) -> Deferred[None]:
        """
        A Deferred that fires when every write queued so far is committed,
        or fails with the first error of one.
        """
        pending = list(self._writes)
        d: Deferred[Any] = gatherResults(pending, consumeErrors=True)
        d.addErrback(lambda f: f.value.subFailure if hasattr(f.value, "subFailure") else f)
        d.addCallback(lambda _: None)
        return d

    # Changes.

    def enter(self, state: str, error: str | None = None) -> None:
        old = self.record.state
        self.record.state = state
        self.record.state_since = self.clock.seconds()
        self.record.unreachable_since = None
        self.record.error = error
        if error:
            log.warn("node {node}: {old} -> {new}: {error}", node=self.id, old=old, new=state,
                     error=error)
        else:
            log.info("node {node}: {old} -> {new}", node=self.id, old=old, new=state)
        self.save()
        self.hooks.changed(self, old, state)

    def learn(self, vm: VMInfo) -> None:
        """Record what the cloud says of the VM (id, address, agent port)."""
        record = self.record
        changed = False
        for attr, value in (("vm_id", vm.vmId), ("ip", vm.ip), ("agent_port", vm.agentPort)):
            if value is not None and getattr(record, attr) != value:
                setattr(record, attr, value)
                changed = True
        if changed:
            self.save()

    def noteAgent(self, info: Mapping[str, Any]) -> None:
        self.agentInfo = dict(info)
        self.lastProbeError = None
        port = info.get("mysqld_port")
        if isinstance(port, int) and port != self.record.mysqld_port:
            self.record.mysqld_port = port
            self.save()

    def deadline(self) -> tuple[float, str] | None:
        """When the current state times out, and what to say then."""
        record = self.record
        if record.state in ("PENDING", "BOOTING"):
            why = f"not RUNNING {self.bootTimeout:g} s after it was asked for (still " \
                  f"{record.state}"
            if self.lastProbeError:
                why += f"; last probe: {self.lastProbeError}"
            elif record.state == "PENDING" and record.error:
                why += f"; {record.error}"
            return record.created_at + self.bootTimeout, why + ")"
        if record.state == "RUNNING" and record.unreachable_since is not None:
            return (
                record.unreachable_since + self.unreachableTimeout,
                f"agent unreachable for {self.unreachableTimeout:g} s "
                f"(last probe: {self.lastProbeError})",
            )
        return None


builder = TypeMachineBuilder(NodeInputs, NodeCore)
pending = builder.state("PENDING")
booting = builder.state("BOOTING")
running = builder.state("RUNNING")
unreachable = builder.state("UNREACHABLE")
error = builder.state("ERROR")
terminating = builder.state("TERMINATING")
terminated = builder.state("TERMINATED")


def _ignore(state: Any, *inputs: Callable[..., None]) -> None:
    for i in inputs:
        state.upon(i).loop().returns(None)


# Learning about the VM, in every state but TERMINATED.
for _state in (pending, booting, running, unreachable, error):

    @_state.upon(NodeInputs.created).loop()
    def _created(inputs: NodeInputs, core: NodeCore, vm: VMInfo) -> None:
        core.learn(vm)

    @_state.upon(NodeInputs.cloudPending).loop()
    def _stillPending(inputs: NodeInputs, core: NodeCore, vm: VMInfo) -> None:
        core.learn(vm)

    @_state.upon(NodeInputs.remove).to(terminating)
    def _remove(inputs: NodeInputs, core: NodeCore) -> None:
        core.enter("TERMINATING", core.record.error)
        core.hooks.terminate(core)

    _ignore(_state, NodeInputs.terminated, NodeInputs.terminateFailed)


# Failures that end a node's useful life.
for _state in (pending, booting, running, unreachable):

    @_state.upon(NodeInputs.cloudFailed).to(error)
    def _cloudFailed(inputs: NodeInputs, core: NodeCore, vm: VMInfo) -> None:
        core.learn(vm)
        core.enter("ERROR", f"the cloud reports the VM failed: {vm.detail or vm.state}")

    @_state.upon(NodeInputs.cloudGone).to(error)
    def _cloudGone(inputs: NodeInputs, core: NodeCore, reason: str) -> None:
        core.enter("ERROR", reason)


for _state in (pending, booting, unreachable):

    @_state.upon(NodeInputs.timedOut).to(error)
    def _timedOut(inputs: NodeInputs, core: NodeCore, reason: str) -> None:
        core.enter("ERROR", reason)

for _state in (pending, booting):

    @_state.upon(NodeInputs.agentFailed).to(error)
    def _agentFailed(inputs: NodeInputs, core: NodeCore, reason: str) -> None:
        core.enter("ERROR", reason)

for _state in (running, unreachable, error, terminating, terminated):
    _ignore(_state, NodeInputs.agentFailed)


@pending.upon(NodeInputs.createFailed).to(error)
def _createFailed(inputs: NodeInputs, core: NodeCore, reason: str) -> None:
    core.enter("ERROR", f"the cloud refused the VM: {reason}")


@booting.upon(NodeInputs.createFailed).to(error)
def _createFailedLate(inputs: NodeInputs, core: NodeCore, reason: str) -> None:
    core.enter("ERROR", f"the cloud refused the VM: {reason}")


_ignore(running, NodeInputs.createFailed)
_ignore(unreachable, NodeInputs.createFailed)


@pending.upon(NodeInputs.createDelayed).loop()
def _createDelayed(inputs: NodeInputs, core: NodeCore, reason: str) -> None:
    # Still PENDING: the next cloud list finds the VM if the cloud made it,
    # and the manager asks again if not (until the boot deadline).
    core.record.error = f"asking the cloud for the VM failed (tried again): {reason}"
    core.save()


for _state in (booting, running, unreachable, error, terminating, terminated):
    _ignore(_state, NodeInputs.createDelayed)


# PENDING


@pending.upon(NodeInputs.cloudRunning).to(booting)
def _booting(inputs: NodeInputs, core: NodeCore, vm: VMInfo) -> None:
    core.learn(vm)
    core.enter("BOOTING")


@pending.upon(NodeInputs.agentUp).to(running)
def _upEarly(inputs: NodeInputs, core: NodeCore, info: Mapping[str, Any]) -> None:
    core.noteAgent(info)
    core.enter("RUNNING")


@pending.upon(NodeInputs.agentDown).loop()
def _downPending(inputs: NodeInputs, core: NodeCore, reason: str) -> None:
    core.lastProbeError = reason


# BOOTING


@booting.upon(NodeInputs.cloudRunning).loop()
def _stillBooting(inputs: NodeInputs, core: NodeCore, vm: VMInfo) -> None:
    core.learn(vm)


@booting.upon(NodeInputs.agentUp).to(running)
def _up(inputs: NodeInputs, core: NodeCore, info: Mapping[str, Any]) -> None:
    core.noteAgent(info)
    core.enter("RUNNING")


@booting.upon(NodeInputs.agentDown).loop()
def _downBooting(inputs: NodeInputs, core: NodeCore, reason: str) -> None:
    core.lastProbeError = reason


# RUNNING, reachable or not


for _state in (running, unreachable):

    @_state.upon(NodeInputs.cloudRunning).loop()
    def _stillRunning(inputs: NodeInputs, core: NodeCore, vm: VMInfo) -> None:
        core.learn(vm)


@running.upon(NodeInputs.agentUp).loop()
def _stillUp(inputs: NodeInputs, core: NodeCore, info: Mapping[str, Any]) -> None:
    core.noteAgent(info)


@running.upon(NodeInputs.agentDown).to(unreachable)
def _lost(inputs: NodeInputs, core: NodeCore, reason: str) -> None:
    core.lastProbeError = reason
    core.agentInfo = {**core.agentInfo, "isRunningMySQL": False}
    core.record.unreachable_since = core.clock.seconds()
    log.warn("node {node}: agent unreachable: {reason}", node=core.id, reason=reason)
    core.save()


_ignore(running, NodeInputs.timedOut)


@unreachable.upon(NodeInputs.agentUp).to(running)
def _back(inputs: NodeInputs, core: NodeCore, info: Mapping[str, Any]) -> None:
    core.noteAgent(info)
    core.record.unreachable_since = None
    log.info("node {node}: agent answers again", node=core.id)
    core.save()


@unreachable.upon(NodeInputs.agentDown).loop()
def _stillLost(inputs: NodeInputs, core: NodeCore, reason: str) -> None:
    core.lastProbeError = reason


# ERROR: only removal leaves it; what the cloud says of the VM is still
# recorded, so that removal ends the right VM.

for _input in (NodeInputs.cloudRunning, NodeInputs.cloudFailed):

    @error.upon(_input).loop()
    def _seenInError(inputs: NodeInputs, core: NodeCore, vm: VMInfo) -> None:
        core.learn(vm)


_ignore(
    error,
    NodeInputs.createFailed,
    NodeInputs.cloudGone,
    NodeInputs.agentUp,
    NodeInputs.agentDown,
    NodeInputs.timedOut,
)


# TERMINATING


@terminating.upon(NodeInputs.created).loop()
def _createdLate(inputs: NodeInputs, core: NodeCore, vm: VMInfo) -> None:
    core.learn(vm)
    core.hooks.terminate(core)


for _input in (NodeInputs.cloudPending, NodeInputs.cloudRunning, NodeInputs.cloudFailed):

    @terminating.upon(_input).loop()
    def _seenWhileEnding(inputs: NodeInputs, core: NodeCore, vm: VMInfo) -> None:
        core.learn(vm)


@terminating.upon(NodeInputs.terminated).to(terminated)
def _ended(inputs: NodeInputs, core: NodeCore) -> None:
    core.enter("TERMINATED")
    core.hooks.gone(core)


@terminating.upon(NodeInputs.terminateFailed).loop()
def _endFailed(inputs: NodeInputs, core: NodeCore, reason: str) -> None:
    core.record.error = f"terminating failed (tried again): {reason}"
    core.save()


_ignore(
    terminating,
    NodeInputs.createFailed,
    NodeInputs.cloudGone,
    NodeInputs.agentUp,
    NodeInputs.agentDown,
    NodeInputs.timedOut,
    NodeInputs.remove,
)

# TERMINATED: the end.

_ignore(
    terminated,
    NodeInputs.created,
    NodeInputs.createFailed,
    NodeInputs.cloudPending,
    NodeInputs.cloudRunning,
    NodeInputs.cloudFailed,
    NodeInputs.cloudGone,
    NodeInputs.agentUp,
    NodeInputs.agentDown,
    NodeInputs.timedOut,
    NodeInputs.remove,
    NodeInputs.terminated,
    NodeInputs.terminateFailed,
)

NodeMachine = builder.build()

_STATES = {
    "PENDING": pending,
    "BOOTING": booting,
    "RUNNING": running,
    "ERROR": error,
    "TERMINATING": terminating,
    "TERMINATED": terminated,
}


class Node:
    """
    A node: its core (data) and its machine (inputs), restored into the
    state its record names.
    """

    def __init__(self, core: NodeCore) -> None:
        self.core = core
        record = core.record
        if record.state not in _STATES:
            raise ValueError(f"node {record.id}: unknown state {record.state!r} in the registry")
        state = _STATES[record.state]
        if record.state == "RUNNING" and record.unreachable_since is not None:
            state = unreachable
        self.machine: NodeInputs = NodeMachine(core, state)

    @property
    def id(self) -> int:
        return self.core.id

    @property
    def state(self) -> str:
        return self.core.state

    def observe(self, vm: VMInfo | None) -> None:
        """Feed what the cloud lists for this node (L{None}: not listed)."""
        if vm is None:
            if self.core.record.vm_id is not None:
                self.machine.cloudGone(f"the cloud no longer has VM {self.core.record.vm_id}")
        elif vm.state in ("PENDING", "BOOTING"):
            self.machine.cloudPending(vm)
        elif vm.state == "RUNNING":
            self.machine.cloudRunning(vm)
        elif vm.state == "FAILED":
            self.machine.cloudFailed(vm)
        else:
            self.machine.cloudGone(f"the cloud ended VM {vm.vmId} ({vm.detail or vm.state})")

    def checkDeadline(self) -> None:
        due = self.core.deadline()
        if due is not None and self.core.clock.seconds() >= due[0]:
            self.machine.timedOut(due[1])
