"""
The manager's core: the live nodes, the poller that watches them, and the
actions on them (create, terminate, calls to their agents).

L{Manager} is a service.  Starting it (PROLOGUE) opens the registry, reads
or makes the service tag, builds the cloud driver and restores every live
node's state machine; then one poller (a L{TimerService} on the injected
clock) runs a cycle every C{poll_interval} seconds:

  1. one C{driver.list()} for all the service's VMs (after a failure, the
     next calls back off, up to a minute, while agent probes go on);
  2. each live node is told what the cloud says of its VM; VMs of our tag
     that belong to no live node (or a node's second VM) are terminated
     (never leaked); nodes left PENDING without a VM (by a crash, or a
     create that got no answer) are created again;
  3. the agents of nodes with an address are probed (C{get_server_state})
     concurrently, at most C{probe_concurrency} at once, each with a timeout;
     the cycle waits for them at most half the poller's interval (slower
     probes finish in the background; their nodes are not probed again
     meanwhile);
  4. deadlines are checked and failed terminations retried (not while
     cloud calls back off);
  5. every change is written to the registry before the cycle ends.

The loop body catches and logs everything, so one bad cycle never stops
polling.  While nodes are PENDING or BOOTING, cycles run every
C{boot_poll_interval} instead, so that a new node is seen RUNNING soon after
it is.  Request handlers never wait for provisioning: L{Manager.addNodes}
records the nodes and starts their creation in the background.
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any, Protocol, TypeVar

from twisted.application import service
from twisted.application.internet import TimerService
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    DeferredSemaphore,
    gatherResults,
)
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.error import TimeoutError as ConnectionTimeout
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from conpaassql.common.tls import ServiceTLS
from conpaassql.iaas.base import CloudFailure, IaaSDriver, NodeSpec, VMInfo, nodeIdOfName
from conpaassql.manager.config import ManagerConfig
from conpaassql.manager.errors import describe
from conpaassql.manager.failover import MasterWatch
from conpaassql.manager.lifecycle import Lifecycle, LifecycleMachine, PhaseCore
from conpaassql.manager.node import ADAPTING_STATES, Node, NodeCore, NodeHooks
from conpaassql.manager.performance import PerformanceTracker, Sample
from conpaassql.manager.registry import NodeRecord, Registry
from conpaassql.manager.replication import ReplicationCoordinator
from conpaassql.rpc.errors import (
    Conflict,
    NotFound,
    OperationFailed,
    RPCError,
    TransportError,
    WrongState,
)

__all__ = ["PHASES", "AgentClient", "Manager"]

log = Logger()

_T = TypeVar("_T")

#: The manager's own states, as get_service_info reports them.
PHASES = ("INIT", "PROLOGUE", "RUNNING", "ADAPTING", "EPILOGUE", "STOPPED", "ERROR")

#: The registry's meta key that says a shutdown was asked for and is not finished.
SHUTDOWN_KEY = "shutdown"

#: The longest wait between cloud list calls after failures.
MAX_LIST_BACKOFF = 60.0

#: How often a booting node's agent is asked to start its server again after
#: the server failed to start (e.g. a failed data directory initialisation),
#: before the node is ERROR.
MAX_START_ATTEMPTS = 2


class AgentClient(Protocol):
    """What the manager needs of an agent's client (L{conpaassql.rpc.client.RPCClient})."""

    async def call(
        self, method: str, params: Mapping[str, Any] | None = None, *,
        timeout: float | None = None,
    ) -> Any: ...

    async def upload(
        self, method: str, params: Mapping[str, str], files: Mapping[str, Any], *,
        timeout: float | None = None,
    ) -> Any: ...

    async def close(self) -> None: ...


#: C{(url, token)} (and C{name=} the node's name with TLS) -> a client.
AgentClientFactory = Callable[..., AgentClient]
DriverFactory = Callable[[str], IaaSDriver]


def _transient(e: BaseException) -> bool:
    """Whether a failed cloud call may have worked, or may work if asked again."""
    if isinstance(e, CloudFailure):
        return e.transient
    return isinstance(e, (DeferredTimeout, ConnectionTimeout, CancelledError))


class _ClosingClient:
    """
    An agent client that, once closed, closes its connections again when its
    last call in flight ends (a connection in use when the pool is closed
    would otherwise go back to the pool and stay open).
    """

    def __init__(self, client: AgentClient) -> None:
        self._client = client
        self._calls = 0
        self._closed = False

    async def _counted(self, work: Awaitable[Any]) -> Any:
        self._calls += 1
        try:
            return await work
        finally:
            self._calls -= 1
            if self._closed and self._calls == 0:
                await self._client.close()

    async def call(self, method: str, params: Mapping[str, Any] | None = None, *,
                   timeout: float | None = None) -> Any:
        return await self._counted(self._client.call(method, params, timeout=timeout))

    async def upload(self, method: str, params: Mapping[str, str], files: Mapping[str, Any],
                     *, timeout: float | None = None) -> Any:
        return await self._counted(self._client.upload(method, params, files, timeout=timeout))

    async def close(self) -> None:
        self._closed = True
        await self._client.close()


class Manager(service.Service):
    """
    @param registry: the node registry (opened on start, closed on stop).
    @param driverFactory: builds the cloud driver from the service tag.
    @param agentClientFactory: C{(url, token)} -> a client for one agent.
    @param clock: the clock of the poller, deadlines and timeouts.
    @param stopProcess: called once the manager is STOPPED after a shutdown.
    @param tls: with it, each new node gets a certificate in its context,
        agents are called over https, and the client factory is called with
        a C{name} keyword (the node's name, which the agent's certificate
        must carry).
    """

    def __init__(
        self,
        config: ManagerConfig,
        registry: Registry,
        driverFactory: DriverFactory,
        agentClientFactory: AgentClientFactory,
        clock: Any,
        *,
        stopProcess: Callable[[], None] = lambda: None,
        tls: ServiceTLS | None = None,
    ) -> None:
        self.config = config
        self.tls = tls
        self.registry = registry
        self._driverFactory = driverFactory
        self._agentClientFactory = agentClientFactory
        self.clock = clock
        self._stopProcess = stopProcess
        self._phase = PhaseCore()
        self.lifecycle: Lifecycle = LifecycleMachine(self._phase)
        self.serviceTag: str | None = None
        self.driver: IaaSDriver | None = None
        self.managerUrl: str | None = None
        self.nodes: dict[int, Node] = {}
        self._clients: dict[int, tuple[str, AgentClient]] = {}
        #: Node ids whose create, node ids whose terminate, and VM ids of
        #: orphans whose terminate is under way.
        self._creating: set[int] = set()
        self._ending: set[int] = set()
        self._orphans: set[str] = set()
        #: Node id -> (creates that got no answer, when to ask again).
        self._createRetry: dict[int, tuple[int, float]] = {}
        #: How many create calls have ended, and node id -> the count when
        #: its last one ended: a list asked for before then may not show it.
        self._createsEnded = 0
        self._createEnded: dict[int, int] = {}
        self._inflight: set[Deferred[Any]] = set()
        #: Node ids whose agent probe is queued or under way.
        self._probing: set[int] = set()
        self._listBackoff = 0.0
        self._listRetryAt = 0.0
        #: Why the last cloud list failed, until one succeeds.
        self.cloudError: str | None = None
        self._semaphore = DeferredSemaphore(config.probe_concurrency)
        self.cycles = 0
        self.ready: Deferred[None] = Deferred()
        self._urlKnown: Deferred[None] = Deferred()
        self._nextCycle = 0.0
        self._poller = TimerService(
            min(config.poll_interval, config.bootPollInterval), self._cycle
        )
        self._poller.clock = clock
        self._epilogue: Deferred[None] | None = None
        #: Replication roles and operations (L{ReplicationCoordinator}).
        self.replication = ReplicationCoordinator(self)
        #: The master's loss, and failover (L{MasterWatch}).
        self.failover = MasterWatch(self)
        #: The performance figures, fed by the sampler every C{metrics_interval}.
        self.performance = PerformanceTracker()
        self._sampler = TimerService(config.metrics_interval, self._sampleCycle)
        self._sampler.clock = clock

    # Phases.

    @property
    def phase(self) -> str:
        """The lifecycle's state (L{conpaassql.manager.lifecycle})."""
        return self._phase.phase

    @property
    def error(self) -> str | None:
        return self._phase.error

    def serviceState(self) -> str:
        """The state get_service_info reports; RUNNING becomes ADAPTING while nodes move."""
        if self.phase == "RUNNING" and (self.replication.busy or self.failover.busy or any(
            n.state in ADAPTING_STATES for n in self.nodes.values()
        )):
            return "ADAPTING"
        return self.phase

    # Starting and stopping.

    def setManagerUrl(self, url: str) -> None:
        """The manager's API URL (for the nodes' context); polling waits for it."""
        self.managerUrl = url
        if not self._urlKnown.called:
            self._urlKnown.callback(None)

    def startService(self) -> None:
        super().startService()
        self.lifecycle.start()
        self._track(Deferred.fromCoroutine(self._prologue()))

    async def _prologue(self) -> None:
        try:
            await self.registry.open()
            self.serviceTag = await self.registry.serviceTag()
            self.driver = self._driverFactory(self.serviceTag)
            for record in await self.registry.liveNodes():
                self._add(record)
            resumeShutdown = await self.registry.getMeta(SHUTDOWN_KEY) is not None
            await self.replication.restore()
            await self.failover.restore()
        except Exception as e:
            log.failure("manager: cannot start")
            self.lifecycle.startFailed(f"cannot start: {describe(e)}")
            self.ready.callback(None)
            return
        log.info(
            "manager: service tag {tag}, driver {driver}, {count} live node(s) in the registry",
            tag=self.serviceTag, driver=self.config.driver, count=len(self.nodes),
        )
        if resumeShutdown:
            # A shutdown was under way when the manager stopped (or was
            # killed): it goes on, and get_service_info says EPILOGUE.
            log.info("manager: a shutdown was under way; finishing it")
            self._beginEpilogue()
        self.ready.callback(None)
        await self._urlKnown
        if self.running and self.phase in ("PROLOGUE", "EPILOGUE"):
            self._poller.startService()
            self._sampler.startService()

    def stopService(self) -> Deferred[None]:
        """
        Stop polling, wait for work in flight, close the agent clients, the
        driver and the registry.  The nodes keep running.
        """
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if not self._urlKnown.called:
            self._urlKnown.callback(None)
        if self._poller.running:
            await self._poller.stopService()
        if self._sampler.running:
            await self._sampler.stopService()
        self.replication.stop()
        self.failover.stop()
        if self._epilogue is not None:
            # Stopped during a shutdown: the nodes left TERMINATING are ended
            # after the next start.
            self._epilogue.cancel()
        while self._inflight:
            await DeferredList(list(self._inflight))
        for nodeId in list(self._clients):
            await self._closeClient(nodeId)
        if self.driver is not None:
            try:
                await self.driver.close()
            except Exception:
                log.failure("manager: closing the driver failed")
        self.registry.close()

    def _track(self, d: Deferred[_T]) -> Deferred[_T]:
        """Keep C{d} until it fires (stop waits for it); log its failure."""
        self._inflight.add(d)

        def done(result: Any) -> None:
            self._inflight.discard(d)
            if isinstance(result, Failure) and not result.check(CancelledError):
                log.failure("manager: background work failed", result)

        d.addBoth(done)
        return d

    # Nodes.

    def _add(self, record: NodeRecord) -> Node:
        core = NodeCore(
            record,
            self.registry,
            self.clock,
            NodeHooks(terminate=self._terminate, gone=self._gone),
            bootTimeout=self.config.boot_timeout,
            unreachableTimeout=self.config.unreachable_timeout,
        )
        node = Node(core)
        self.nodes[record.id] = node
        return node

    def node(self, nodeId: int) -> Node:
        """The live node C{nodeId}, or L{NotFound}."""
        node = self.nodes.get(nodeId)
        if node is None:
            raise NotFound(f"no node {nodeId} in this service (list_nodes lists them)",
                           {"serviceNodeId": nodeId})
        return node

    def _agentPort(self) -> str:
        return "0" if self.config.driver == "LOCAL" else str(self.config.agent_port)

    def _spec(self, record: NodeRecord) -> NodeSpec:
        assert self.serviceTag is not None
        return NodeSpec(
            nodeId=record.id,
            name=record.name,
            context={
                "MANAGER_URL": self.managerUrl or "",
                "NODE_ID": str(record.id),
                "AGENT_TOKEN": record.token,
                "AGENT_PORT": self._agentPort(),
                "SERVICE_TAG": self.serviceTag,
                **(self.tls.nodeContext(record.name) if self.tls is not None else {}),
            },
        )

    async def _ensureUsable(self) -> None:
        await self.ready
        if self.phase in ("EPILOGUE", "STOPPED"):
            raise WrongState(f"the service is {self.phase}: it is shutting down",
                             {"state": self.phase})
        if self.phase == "ERROR":
            raise WrongState(f"the service is in ERROR: {self.error}", {"state": "ERROR"})

    async def addNodes(self, function: str, count: int) -> list[NodeRecord]:
        """
        Record C{count} new PENDING nodes (durably) and start creating their
        VMs in the background.

        @return: copies of the new nodes' records as recorded (PENDING).
        @raise WrongState: the service is shutting down or failed.
        """
        await self._ensureUsable()
        assert self.serviceTag is not None
        records = await self.registry.addNodes(function, count, self.serviceTag,
                                               self.clock.seconds())
        shown = [replace(record) for record in records]
        nodes = [self._add(record) for record in records]
        for node in nodes:
            log.info("node {node}: PENDING (asked for, as {name})", node=node.id,
                     name=node.core.record.name)
            self._startCreate(node)
        return shown

    def _startCreate(self, node: Node) -> None:
        if node.id in self._creating:
            return
        self._creating.add(node.id)
        self._track(Deferred.fromCoroutine(self._create(node)))

    async def _create(self, node: Node) -> None:
        assert self.driver is not None
        try:
            vm = await self._timed(self.driver.create(self._spec(node.core.record)),
                                   self.config.list_timeout)
        except Exception as e:
            self._createDone(node)
            if _transient(e):
                attempts = self._createRetry.get(node.id, (0, 0.0))[0] + 1
                delay = min(MAX_LIST_BACKOFF, self.config.poll_interval * 2 ** (attempts - 1))
                self._createRetry[node.id] = (attempts, self.clock.seconds() + delay)
                log.warn("node {node}: create failed ({why}); a cloud list finds its VM, "
                         "or it is asked for again in {delay:g} s", node=node.id,
                         why=describe(e), delay=delay)
                node.machine.createDelayed(describe(e))
            else:
                log.warn("node {node}: create failed: {why}", node=node.id, why=describe(e))
                node.machine.createFailed(describe(e))
        else:
            self._createDone(node)
            self._createRetry.pop(node.id, None)
            node.machine.created(vm)
            node.observe(vm)
        if node.state == "TERMINATING":
            self._terminate(node.core)
        await node.core.flush()

    def _createDone(self, node: Node) -> None:
        self._creating.discard(node.id)
        self._createsEnded += 1
        self._createEnded[node.id] = self._createsEnded

    async def removeNode(self, nodeId: int) -> Node:
        """
        Start ending node C{nodeId}: it is TERMINATING (durably) when this
        returns, and TERMINATED once its VM is ended.

        @raise NotFound: no such live node.
        @raise Conflict: it is the master and slaves depend on it.
        """
        await self._ensureUsable()
        node = self.node(nodeId)
        if node.core.record.role == "MASTER":
            slaves = self.replication.dependents(nodeId)
            if slaves:
                raise Conflict(
                    f"node {nodeId} is the replication master and nodes "
                    f"{', '.join(map(str, slaves))} replicate from it; remove them first",
                    {"slaves": slaves},
                )
        node.machine.remove()
        await node.core.flush()
        return node

    def _terminate(self, core: NodeCore) -> None:
        """End the node's VM, unless that is under way or its creation still runs."""
        if core.id in self._ending or core.id in self._creating:
            return
        node = self.nodes.get(core.id)
        if node is None:
            return
        if core.record.vm_id is None:
            node.machine.terminated()
            return
        self._ending.add(core.id)
        self._track(Deferred.fromCoroutine(self._end(node, core.record.vm_id)))

    async def _end(self, node: Node, vmId: str) -> None:
        assert self.driver is not None
        try:
            await self._timed(self.driver.terminate(vmId), self.config.list_timeout)
        except Exception as e:
            log.warn("node {node}: terminate of VM {vm} failed: {why}", node=node.id, vm=vmId,
                     why=describe(e))
            self._ending.discard(node.id)
            node.machine.terminateFailed(describe(e))
        else:
            self._ending.discard(node.id)
            node.machine.terminated()
        await node.core.flush()

    def _gone(self, core: NodeCore) -> None:
        self.nodes.pop(core.id, None)
        self._createRetry.pop(core.id, None)
        self._createEnded.pop(core.id, None)
        self.replication.forget(core.id)
        self.performance.forget(core.id)
        self._track(Deferred.fromCoroutine(self._closeClient(core.id)))

    def _terminateOrphan(
        self, vm: VMInfo, why: str = "it carries this service's tag but is no live node"
    ) -> None:
        if vm.vmId in self._orphans:
            return
        log.warn("VM {vm} ({name}): {why}: terminating it", vm=vm.vmId, name=vm.name, why=why)

        async def end() -> None:
            assert self.driver is not None
            try:
                await self._timed(self.driver.terminate(vm.vmId), self.config.list_timeout)
            except Exception as e:
                log.warn("terminating VM {vm} failed (tried again): {why}", vm=vm.vmId,
                         why=describe(e))
            finally:
                self._orphans.discard(vm.vmId)

        self._orphans.add(vm.vmId)
        self._track(Deferred.fromCoroutine(end()))

    # Shutting down the service.

    async def shutdown(self) -> None:
        """
        Start the EPILOGUE: every node is removed; once all are TERMINATED
        the manager is STOPPED and C{stopProcess} is called.
        """
        await self.ready
        if self.phase == "ERROR":
            raise WrongState(f"the service is in ERROR: {self.error}", {"state": "ERROR"})
        if self.phase not in ("PROLOGUE", "RUNNING"):
            return
        # Kept first: a manager restarted before the end finishes the shutdown.
        await self.registry.setMeta(SHUTDOWN_KEY, "requested")
        if self._beginEpilogue():
            await gatherResults([n.core.flush() for n in self.nodes.values()])

    def _beginEpilogue(self) -> bool:
        """Enter EPILOGUE and remove every node; false if it was entered already."""
        if not self.lifecycle.shutdown():
            return False
        for node in list(self.nodes.values()):
            node.machine.remove()
        self._epilogue = self._track(Deferred.fromCoroutine(self._finish()))
        return True

    async def _finish(self) -> None:
        while self.nodes or self._orphans:
            await deferLater(self.clock, min(self.config.poll_interval, 0.5))
        await self.registry.setMeta(SHUTDOWN_KEY, None)
        self.lifecycle.nodesGone()
        log.info("manager: every node is terminated; stopping")
        self.clock.callLater(0.2, self._stopProcess)

    # Polling.

    async def _timed(self, work: Awaitable[_T], seconds: float) -> _T:
        d: Deferred[_T] = Deferred.fromCoroutine(work) if not isinstance(work, Deferred) \
            else work  # type: ignore[arg-type]
        d.addTimeout(seconds, self.clock)
        return await d

    def _cycle(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._safeCycle())

    async def _safeCycle(self) -> None:
        """
        The timer ticks every C{boot_poll_interval}; a cycle runs on a tick
        while nodes are PENDING or BOOTING (so they are seen RUNNING soon),
        and otherwise every C{poll_interval}.
        """
        now = self.clock.seconds()
        booting = any(n.state in ("PENDING", "BOOTING") for n in self.nodes.values())
        if not booting and now < self._nextCycle:
            return
        self._nextCycle = now + self.config.poll_interval
        try:
            await self.pollOnce()
        except Exception:
            log.failure("manager: a poll cycle failed")

    async def pollOnce(self) -> None:
        """One poll cycle (see the module's docstring)."""
        if self.driver is None or self.phase in ("ERROR", "STOPPED"):
            return
        await self.pollCloud()
        await self._probeAll()
        # Failed terminations are tried again, unless cloud calls back off.
        cloudCalls = self.clock.seconds() >= self._listRetryAt
        for node in list(self.nodes.values()):
            node.checkDeadline()
            if node.state == "TERMINATING" and cloudCalls:
                self._terminate(node.core)
        await self._flushAll()
        if self.phase in ("PROLOGUE", "RUNNING"):
            self.failover.check()
        self.cycles += 1
        self.lifecycle.polled()

    async def pollCloud(self) -> None:
        """
        The cloud part of a poll cycle: one C{driver.list()} (unless list
        calls back off after failures), and what it says fed to the nodes.
        """
        assert self.driver is not None
        if self.clock.seconds() < self._listRetryAt:
            return
        createsEnded = self._createsEnded
        try:
            vms = await self._timed(self.driver.list(), self.config.list_timeout)
        except Exception as e:
            self._listBackoff = min(
                MAX_LIST_BACKOFF, max(self.config.poll_interval, self._listBackoff * 2)
            )
            self._listRetryAt = self.clock.seconds() + self._listBackoff
            self.cloudError = describe(e)
            log.warn("cloud list failed ({why}); next try in {delay:g} s",
                     why=self.cloudError, delay=self._listBackoff)
            return
        self._listBackoff = 0.0
        self._listRetryAt = 0.0
        self.cloudError = None
        self._reconcile(vms, createsEnded)

    def _reconcile(self, vms: Iterable[VMInfo], createsEnded: int) -> None:
        """
        Feed the listed VMs to their nodes.  C{createsEnded}: how many
        create calls had ended when the list was asked for; a node whose
        create ended later may be missing from the list without being gone.
        """
        assert self.serviceTag is not None
        listed: dict[int, VMInfo] = {}
        for vm in vms:
            nodeId = nodeIdOfName(self.serviceTag, vm.name)
            if nodeId is None:
                log.warn("the driver listed VM {vm} ({name}), which is not this service's: "
                         "ignored", vm=vm.vmId, name=vm.name)
                continue
            if nodeId not in self.nodes:
                if vm.state != "GONE":
                    self._terminateOrphan(vm)
                continue
            other = listed.get(nodeId)
            if other is None:
                listed[nodeId] = vm
                continue
            # Two VMs for one node (a create that timed out was made after
            # all, and asked for again): keep the node's, end the other.
            known = self.nodes[nodeId].core.record.vm_id
            keepOther = other.vmId == known or (vm.vmId != known and other.state != "GONE")
            keep, extra = (other, vm) if keepOther else (vm, other)
            listed[nodeId] = keep
            if extra.state != "GONE":
                self._terminateOrphan(extra, f"a second VM of node {nodeId}")
        for node in list(self.nodes.values()):
            seen = listed.get(node.id)
            if seen is not None:
                node.observe(seen)
            elif node.id in self._creating or \
                    self._createEnded.get(node.id, 0) > createsEnded:
                continue  # not listed yet
            elif node.state == "PENDING" and node.core.record.vm_id is None:
                if self.clock.seconds() < self._createRetry.get(node.id, (0, 0.0))[1]:
                    continue
                log.info("node {node}: the cloud has no VM for it (its creation was "
                         "interrupted or failed); asking for one again", node=node.id)
                self._startCreate(node)
            elif node.state != "TERMINATING":
                node.observe(None)

    def _address(self, node: Node) -> str | None:
        record = node.core.record
        if not record.ip:
            return None
        port = record.agent_port or self.config.agent_port
        host = f"[{record.ip}]" if ":" in record.ip else record.ip
        return f"{'https' if self.tls is not None else 'http'}://{host}:{port}/"

    def client(self, node: Node) -> AgentClient | None:
        """The client of the node's agent (made, or remade when its address changed)."""
        url = self._address(node)
        if url is None:
            return None
        known = self._clients.get(node.id)
        if known is not None and known[0] == url:
            return known[1]
        if known is not None:
            self._track(Deferred.fromCoroutine(known[1].close()))
        record = node.core.record
        client = _ClosingClient(
            self._agentClientFactory(url, record.token, name=record.name)
            if self.tls is not None else self._agentClientFactory(url, record.token)
        )
        self._clients[node.id] = (url, client)
        return client

    async def _closeClient(self, nodeId: int) -> None:
        known = self._clients.pop(nodeId, None)
        if known is not None:
            await known[1].close()

    async def _probeAll(self) -> None:
        """
        Probe the agents of the nodes with an address, C{probe_concurrency}
        at once.  A node whose probe of an earlier cycle still waits (for its
        turn or its answer) is not probed again.  The cycle waits for its
        probes at most half the poller's interval: the rest go on in the
        background, so that slow or silent agents never hold up the cloud list.
        """
        started = []
        for node in list(self.nodes.values()):
            if node.state not in ("BOOTING", "RUNNING") or node.id in self._probing \
                    or not self._address(node):
                continue
            self._probing.add(node.id)
            d = self._semaphore.run(lambda n=node: Deferred.fromCoroutine(self._probe(n)))
            d.addBoth(self._probed, node.id)
            started.append(self._track(d))
        if not started:
            return
        enough: Deferred[None] = Deferred()

        def fire(_: object = None) -> None:
            if not enough.called:
                enough.callback(None)

        timer = self.clock.callLater(self._poller.step / 2, fire)
        DeferredList(started).addBoth(fire)
        await enough
        if timer.active():
            timer.cancel()

    def _probed(self, result: _T, nodeId: int) -> _T:
        self._probing.discard(nodeId)
        return result

    async def _probe(self, node: Node) -> None:
        client = self.client(node)
        if client is None:
            return
        started = self.clock.seconds()
        try:
            result = await self._timed(
                client.call("get_server_state", {}, timeout=self.config.probe_timeout),
                self.config.probe_timeout + 1,
            )
        except Exception as e:
            node.core.agentAnswered = False
            node.machine.agentDown(describe(e))
            return
        node.core.probeMs = (self.clock.seconds() - started) * 1000.0
        info = result.get("return") if isinstance(result, dict) else None
        node.core.agentAnswered = isinstance(info, dict)
        if not isinstance(info, dict):
            node.machine.agentDown(f"the agent sent an unexpected reply: {result!r:.100}")
        elif info.get("isRunningMySQL") is True:
            node.machine.agentUp(info)
        elif node.state == "BOOTING" and info.get("state") == "STOPPED" and info.get("error"):
            reason = f"its database server did not start: {info['error']}"
            if node.core.startAttempts >= MAX_START_ATTEMPTS:
                node.machine.agentFailed(
                    f"{reason} (after {MAX_START_ATTEMPTS} more attempts)")
                return
            node.core.startAttempts += 1
            log.warn("node {node}: {reason}; asking its agent to start it again",
                     node=node.id, reason=reason)
            node.machine.agentDown(reason)
            self._track(Deferred.fromCoroutine(self._startServer(node, client)))
        else:
            node.core.agentInfo = dict(info)
            node.machine.agentDown(
                f"the agent answers but its database server is {info.get('state')}"
                + (f" ({info['error']})" if info.get("error") else "")
            )

    async def _startServer(self, node: Node, client: AgentClient) -> None:
        try:
            await self._timed(
                client.call("start_server", {}, timeout=self.config.agent_call_timeout),
                self.config.agent_call_timeout + 1,
            )
        except Exception as e:
            log.warn("node {node}: start_server failed: {why}", node=node.id, why=describe(e))

    async def _flushAll(self) -> None:
        for node in list(self.nodes.values()):
            try:
                await node.core.flush()
            except Exception:
                log.failure("node {node}: writing to the registry failed", node=node.id)

    # What the API shows.

    def nodeInfo(self, node: Node) -> dict[str, Any]:
        record = node.core.record
        reachable = node.state == "RUNNING" and not node.core.unreachable
        info: dict[str, Any] = {
            "id": record.id,
            "ip": record.ip,
            "isRunningMySQL": bool(reachable and node.core.agentInfo.get("isRunningMySQL")),
            "state": record.state,
            "role": record.role,
            "name": record.name,
            "port": record.agent_port or (self.config.agent_port if record.ip else None),
            "mysqld_port": record.mysqld_port,
            "vm_id": record.vm_id,
        }
        agent = node.core.agentInfo
        if node.core.unreachable:
            info["unreachable"] = True
            if node.core.agentAnswered:
                info["server_state"] = agent.get("state")
        if agent.get("restarts"):
            # The agent restarted its database server after it died.
            info["server_restarts"] = agent["restarts"]
        replication = self.replication.nodeReplication(node)
        if replication is not None:
            info["replication"] = replication
        error = record.error or (
            (node.core.lastProbeError if node.core.agentAnswered
             else f"agent unreachable: {node.core.lastProbeError}")
            if node.core.unreachable else None
        ) or self.replication.setupError(node.id)
        if error:
            info["error"] = error
        return info

    def serviceInfo(self) -> dict[str, Any]:
        counts = collections.Counter(n.state for n in self.nodes.values())
        master = next(
            (n.id for n in self.nodes.values() if n.core.record.role == "MASTER"), None
        )
        info: dict[str, Any] = {
            "state": self.serviceState(),
            "type": "conpaassql",
            "nodes": dict(sorted(counts.items())),
            "master": master,
        }
        if self.phase == "ERROR" and self.error:
            info["error"] = self.error
        if self.cloudError:
            info["cloud_error"] = self.cloudError
        info.update(self.replication.serviceInfo())
        info.update(self.failover.serviceInfo())
        return info

    # Performance.

    def _sampleCycle(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._safeSample())

    async def _safeSample(self) -> None:
        try:
            await self.sampleOnce()
        except Exception:
            log.failure("manager: a performance sample failed")

    async def sampleOnce(self) -> None:
        """
        Read every RUNNING, reachable node's status counters (the agent's
        get_performance), concurrently (at most C{probe_concurrency} at
        once, each within C{probe_timeout}), into L{performance}.
        """
        nodes = [n for n in list(self.nodes.values())
                 if n.state == "RUNNING" and not n.core.unreachable and self._address(n)]
        await DeferredList([
            self._semaphore.run(lambda n=node: Deferred.fromCoroutine(self._sample(n)))
            for node in nodes
        ])

    async def _sample(self, node: Node) -> None:
        client = self.client(node)
        if client is None:
            return
        try:
            result = await self._timed(
                client.call("get_performance", {}, timeout=self.config.probe_timeout),
                self.config.probe_timeout + 1,
            )
            figures = result["return"]
            status = {str(k): int(v) for k, v in figures["status"].items()}
            timestamp = float(figures["timestamp"])
        except Exception as e:
            log.debug("node {node}: no performance sample: {why}", node=node.id,
                      why=describe(e))
            return
        if node.id not in self.nodes:
            return
        replication = node.core.agentInfo.get("replication")
        lag = None
        if isinstance(replication, dict) and node.core.record.role == "SLAVE":
            behind = replication.get("seconds_behind")
            lag = float(behind) if isinstance(behind, (int, float)) else None
        self.performance.record(
            node.id, Sample(timestamp, status, lag=lag, probeMs=node.core.probeMs),
            role=node.core.record.role,
        )

    # Calls to agents on the user's behalf.

    async def targets(self, target: int | str) -> tuple[list[Node], dict[str, str]]:
        """
        The nodes a user operation goes to: one node, or C{"all"} (every
        live node; those in ERROR are skipped and named).

        @return: the nodes, and C{{node id: why skipped}}.
        @raise WrongState: a target node is not RUNNING and reachable, or
            there is none.
        @raise NotFound: no such node.
        """
        await self._ensureUsable()
        skipped: dict[str, str] = {}
        if target == "all":
            nodes = []
            for node in sorted(self.nodes.values(), key=lambda n: n.id):
                if node.state == "ERROR":
                    skipped[str(node.id)] = f"skipped: node is in ERROR ({node.core.record.error})"
                elif node.state != "TERMINATING":
                    nodes.append(node)
            if not nodes:
                raise WrongState("the service has no running node (add_nodes adds some)")
        else:
            assert isinstance(target, int)
            nodes = [self.node(target)]
        self.checkRunning(nodes)
        return nodes, skipped

    async def writeTargets(self, target: int | str) -> tuple[list[Node], dict[str, str]]:
        """
        The nodes a write (users, dumps) aimed at C{target} goes to: once
        there is a replication master, the master (and, for C{"all"}, the
        nodes outside replication); the slaves get it by replication and
        are named with a note.  Without a master, L{targets}.

        @raise Conflict: the master is changing.
        """
        await self._ensureUsable()
        routed = self.replication.writeTargets(target)
        if routed is None:
            return await self.targets(target)
        ids, notes = routed
        nodes = [self.node(i) for i in ids]
        self.checkRunning(nodes)
        return nodes, notes

    def checkRunning(self, nodes: list[Node]) -> None:
        """
        @raise WrongState: one of C{nodes} is not RUNNING and reachable.
        """
        for node in nodes:
            if node.state != "RUNNING" or node.core.unreachable:
                what = "unreachable" if node.core.unreachable else node.state
                raise WrongState(
                    f"node {node.id} is {what}; this call needs it RUNNING "
                    "(wait_nodes waits for that)",
                    {"serviceNodeId": node.id, "state": node.state},
                )

    async def onAgents(
        self,
        nodes: list[Node],
        action: Callable[[AgentClient], Awaitable[Any]],
        what: str,
    ) -> dict[str, Any]:
        """
        Run C{action} on each node's agent, concurrently.

        @return: C{{node id: result}} when every call succeeded.
        @raise RPCError: the agent's error (for one node) or
            L{OperationFailed} naming each failure (for several).
        """

        async def one(node: Node) -> Any:
            client = self.client(node)
            if client is None:
                raise OperationFailed(f"node {node.id} has no address yet")
            return await action(client)

        outcomes = await DeferredList(
            [Deferred.fromCoroutine(one(n)) for n in nodes], consumeErrors=True
        )
        results: dict[str, Any] = {}
        failures: dict[str, BaseException] = {}
        for node, (ok, value) in zip(nodes, outcomes):
            if ok:
                results[str(node.id)] = value
            else:
                failures[str(node.id)] = value.value
        if not failures:
            return results
        if len(nodes) == 1:
            error = next(iter(failures.values()))
            if isinstance(error, RPCError):
                raise RPCError(f"node {nodes[0].id}: {error.message}", error.data,
                               code=error.code)
            if isinstance(error, TransportError):
                raise OperationFailed(f"node {nodes[0].id}: {error}")
            raise error
        summary = "; ".join(f"node {n}: {describe(e)}" for n, e in failures.items())
        done = ", ".join(results) or "none"
        raise OperationFailed(
            f"{what} failed on {len(failures)} of {len(nodes)} nodes ({summary}); "
            f"done on: {done}",
            {"failed": {n: describe(e) for n, e in failures.items()}, "done": results},
        )
