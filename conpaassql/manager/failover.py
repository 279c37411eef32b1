"""
Losing the replication master, and failing over to a slave.

L{MasterWatch.check} runs at the end of every poll cycle.  The master is
I{down} while its node is ERROR (the cloud failed or lost its VM) or RUNNING
but unreachable (its agent does not answer, or its server does not run);
it is declared I{lost} once it has been down for C{master_lost_timeout}
seconds without a break (a server the agent restarts, an agent the cloud
restarts, a short network blip: none of these is a loss).
C{get_service_info} then shows C{master_lost}.

Recovery (L{MasterWatch.failOver}) is the same whether the policy
(C{[manager] failover}) is C{auto}, where it starts as soon as the master is
declared lost, or C{manual}, where C{set_up_replica_master} on a slave starts
it:

  1. B{Fence} the old master: its node is removed and the manager waits
     until the cloud has ended its VM (the driver's terminate succeeded).
     Nothing is promoted before that, so a master that is only cut off from
     the manager (network partition, frozen VM) cannot go on taking writes
     beside a new one: no split brain.  The cloud's API is the fence because
     it does not depend on the node's network; when the cloud cannot end the
     VM, the failover waits (terminate is retried by the poller) and says so.
  2. Read every reachable slave's applied GTID position
     (C{get_replication_status}); the I{most advanced} slave is the one whose
     position is highest (per replication domain; then the lowest node id).
     A slave named by hand must be one of the most advanced: promoting
     another would drop transactions the others have (Conflict, naming it).
  3. Promote it (the agent's C{promote}: replication forgotten, writable);
     its role becomes MASTER.
  4. Point every other slave at it from its own GTID position (in the
     background; each one's progress is in its node's info, as after a
     switchover).

A failover under way is kept in the registry: a manager restarted during it
reports the loss again and (C{auto}) starts over from the fence, which is
then already done.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from conpaassql.manager.errors import describe
from conpaassql.rpc.errors import Conflict, OperationFailed, RPCError, WrongState

if TYPE_CHECKING:
    from conpaassql.manager.node import Node
    from conpaassql.manager.service import Manager

__all__ = ["MasterLoss", "MasterWatch", "gtidAhead", "parseGtid"]

log = Logger()

#: The registry's meta key of a failover under way.
FAILOVER_KEY = "replication.failover"

#: Seconds between checks while waiting for the old master's VM to end.
FENCE_STEP = 0.1


def parseGtid(position: str) -> dict[int, int]:
    """
    A MariaDB GTID position (C{"0-1-42,1-3-7"}) as C{{domain: sequence}};
    the empty position is C{{}}.

    @raise ValueError: it is not a GTID position.
    """
    out: dict[int, int] = {}
    for part in position.replace(" ", "").split(","):
        if not part:
            continue
        domain, _server, seq = part.split("-")
        out[int(domain)] = max(out.get(int(domain), 0), int(seq))
    return out


def gtidAhead(position: str) -> tuple[int, ...]:
    """
    A sort key: the larger, the more advanced (the sum of the sequence
    numbers of every domain, then the domains' own).
    """
    parsed = parseGtid(position)
    return (sum(parsed.values()), *(parsed[d] for d in sorted(parsed)))


@dataclass
class MasterLoss:
    """The master is down (since C{since}), and lost once C{declared}."""

    nodeId: int
    since: float
    reason: str
    declared: float | None = None
    #: What the failover does now (C{fencing}, C{promoting}) or why it failed.
    step: str | None = None
    error: str | None = None


class MasterWatch:
    """
    @param manager: the manager (its nodes, clock, registry, replication
        coordinator and config: C{failover}, C{master_lost_timeout}).
    """

    def __init__(self, manager: Manager) -> None:
        self.manager = manager
        self.clock = manager.clock
        self.loss: MasterLoss | None = None
        #: The last failover done: from, to, followers, seconds.
        self.last: dict[str, Any] | None = None
        self._running: Deferred[Any] | None = None
        self._retryAt = 0.0
        #: A failover cut short by a manager restart: the old master's id.
        self._interrupted: int | None = None

    @property
    def busy(self) -> bool:
        return self._running is not None

    @property
    def lost(self) -> bool:
        """Whether the master is declared lost (and not yet replaced)."""
        return self.loss is not None and self.loss.declared is not None

    @property
    def auto(self) -> bool:
        return self.manager.config.failover == "auto"

    async def restore(self) -> None:
        """After a start: a failover under way before is taken up again."""
        saved = await self.manager.registry.getMeta(FAILOVER_KEY)
        if saved is not None:
            self._interrupted = int(json.loads(saved)["from"])
            log.warn("a failover from node {node} was interrupted by a manager restart",
                     node=self._interrupted)

    def _down(self, master: Node) -> tuple[float, str] | None:
        """Since when, and why, the master is down; L{None} if it is not."""
        record = master.core.record
        if master.state == "ERROR":
            return record.state_since, record.error or "its node is ERROR"
        if master.state == "RUNNING" and record.unreachable_since is not None:
            return record.unreachable_since, master.core.lastProbeError or "unreachable"
        return None

    def check(self) -> None:
        """Look at the master (after each poll cycle); declare it lost, fail over."""
        if self._running is not None:
            return
        coordinator = self.manager.replication
        master = coordinator.master()
        now = self.clock.seconds()
        if master is None:
            if self._interrupted is not None and self.loss is None:
                self.loss = MasterLoss(self._interrupted, now, "a failover was interrupted by a "
                                       "manager restart", declared=now)
            if self.loss is not None and self.auto and now >= self._retryAt:
                self._start(None).addErrback(lambda f: None)  # logged, shown in the loss
            return
        down = self._down(master)
        if down is None:
            if self.loss is not None and self.loss.nodeId == master.id:
                log.info("the master (node {node}) is back", node=master.id)
                self.loss = None
            return
        since, reason = down
        if self.loss is None or self.loss.nodeId != master.id:
            self.loss = MasterLoss(master.id, since, reason)
        self.loss.reason = reason
        if self.loss.declared is None:
            if now - since < self.manager.config.master_lost_timeout or coordinator.busy:
                return
            self.loss.declared = now
            log.error("the replication master (node {node}) is lost: down for {seconds:.1f} s "
                      "({reason}); failover is {mode}", node=master.id, seconds=now - since,
                      reason=reason, mode=self.manager.config.failover)
        if self.auto and now >= self._retryAt:
            self._start(None).addErrback(lambda f: None)  # logged, and shown in the loss

    def serviceInfo(self) -> dict[str, Any]:
        """What get_service_info shows: C{master_lost}, C{last_failover}."""
        info: dict[str, Any] = {}
        loss = self.loss
        if loss is not None and loss.declared is not None:
            shown: dict[str, Any] = {
                "id": loss.nodeId, "reason": loss.reason,
                "down_seconds": round(self.clock.seconds() - loss.since, 1),
                "failover": self.manager.config.failover,
            }
            if loss.step:
                shown["step"] = loss.step
            if loss.error:
                shown["error"] = loss.error
            if not self.auto and not self.busy:
                shown["recover"] = ("call set_up_replica_master on the most advanced slave; "
                                    "the old master's VM is then ended")
            info["master_lost"] = shown
        if self.last is not None:
            info["last_failover"] = dict(self.last)
        return info

    # Failing over.

    def _start(self, chosen: int | None) -> Deferred[Any]:
        """Run L{failOver}; the manager's stop waits for it (or cancels it)."""
        d = Deferred.fromCoroutine(self.failOver(chosen))
        self._running = d
        ended: Deferred[None] = Deferred()

        def done(result: Any) -> Any:
            self._running = None
            ended.callback(None)
            return result

        d.addBoth(done)
        self.manager._track(ended)
        return d

    def stop(self) -> None:
        """The manager stops: a failover under way is cancelled (taken up after a start)."""
        if self._running is not None:
            self._running.cancel()

    async def recover(self, nodeId: int) -> dict[str, Any]:
        """
        C{set_up_replica_master} on slave C{nodeId} while the master is lost:
        the failover, to that slave.

        @raise Conflict: a failover runs, or another slave is more advanced.
        @raise WrongState: C{nodeId} is not a reachable slave.
        """
        if self._running is not None:
            raise Conflict("a failover is in progress; get_service_info shows it")
        return await self._start(nodeId)

    async def failOver(self, chosen: int | None) -> dict[str, Any]:
        """
        Fence the lost master, promote C{chosen} (L{None}: the most advanced
        slave), make the others follow it (see the module's docstring).

        @return: C{{"id", "role": "MASTER", "changed", "previous_master",
            "following", "seconds"}}.
        @raise Conflict, WrongState, OperationFailed: nothing was promoted
            (the loss stays reported, with the error).
        """
        loss = self.loss
        assert loss is not None
        started = self.clock.seconds()
        try:
            result = await self._failOver(loss, chosen)
        except Exception as e:
            why = e.message if isinstance(e, RPCError) else str(e)
            loss.step, loss.error = None, why
            self._retryAt = self.clock.seconds() + self.manager.config.master_lost_timeout
            log.error("failover from node {node} failed: {why}", node=loss.nodeId, why=why)
            raise
        result["seconds"] = round(self.clock.seconds() - started, 3)
        self.last = {"from": loss.nodeId, "to": result["id"], "following": result["following"],
                     "seconds": result["seconds"],
                     "detected_after": round(started - loss.since, 3)}
        self.loss = None
        self._interrupted = None
        return result

    async def _failOver(self, loss: MasterLoss, chosen: int | None) -> dict[str, Any]:
        manager = self.manager
        coordinator = manager.replication
        slaves = self._slaves(loss.nodeId)
        if chosen is not None:
            node = manager.node(chosen)
            if node not in slaves:
                raise WrongState(f"node {chosen} is not a slave of the lost master (slaves: "
                                 f"{', '.join(str(n.id) for n in slaves) or 'none'})")
            coordinator._requireRunning(node, "set_up_replica_master")
        await manager.registry.setMeta(FAILOVER_KEY, json.dumps({"from": loss.nodeId}))
        loss.step, loss.error = "fencing", None
        await self._fence(loss.nodeId)

        loss.step = "choosing"
        positions: dict[int, str] = {}
        for slave in slaves:
            if slave.state != "RUNNING" or slave.core.unreachable:
                continue
            try:
                status = await coordinator._call(slave, "get_replication_status",
                                                 timeout=manager.config.probe_timeout)
                positions[slave.id] = str(status.get("gtid_current_pos") or "")
                parseGtid(positions[slave.id])
            except Exception as e:
                log.warn("failover: node {node} cannot be a candidate: {why}", node=slave.id,
                         why=describe(e))
                positions.pop(slave.id, None)
        if not positions:
            raise OperationFailed("no reachable slave to promote; the master stays lost")
        best = max(positions, key=lambda i: (gtidAhead(positions[i]), -i))
        if chosen is not None and gtidAhead(positions[chosen]) < gtidAhead(positions[best]):
            raise Conflict(
                f"node {best} is more advanced than node {chosen} (GTID {positions[best]} "
                f"against {positions[chosen]}); promote node {best}",
                {"most_advanced": best, "positions": {str(k): v for k, v in positions.items()}})
        target = manager.node(chosen if chosen is not None else best)

        loss.step = "promoting"
        log.info("failover: promoting node {node} (GTID {pos})", node=target.id,
                 pos=positions[target.id])
        await coordinator._call(target, "promote")
        # Its server may have restarted (binary log options): seen up again now.
        await manager._probe(target)
        await coordinator._setRole(target, "MASTER")
        followers = [manager.nodes[i] for i in positions if i != target.id]
        followers += [n for n in slaves if n.id not in positions and n is not target]
        for n in followers:
            await coordinator._setRole(n, None)
            coordinator.setups[n.id] = {"kind": "follow", "phase": "starting",
                                        "master": target.id, "started": self.clock.seconds()}
        await manager.registry.setMeta(FAILOVER_KEY, None)
        for n in followers:
            position = positions.get(n.id)
            if position is None:
                coordinator.setups[n.id].update(
                    phase="failed", ended=self.clock.seconds(),
                    error="unreachable during the failover; call set_up_replica_slave")
                continue
            manager._track(Deferred.fromCoroutine(coordinator._follow(n, target, position)))
        log.info("failover: node {node} is the master (was node {old}); following it: "
                 "{followers}", node=target.id, old=loss.nodeId,
                 followers=sorted(n.id for n in followers))
        return {"id": target.id, "role": "MASTER", "changed": True,
                "previous_master": loss.nodeId, "gtid_pos": positions[target.id],
                "following": sorted(n.id for n in followers)}

    def _slaves(self, masterId: int) -> list[Node]:
        return sorted((n for n in self.manager.nodes.values()
                       if n.id != masterId and n.core.record.role == "SLAVE"
                       and n.state not in ("TERMINATING", "TERMINATED")),
                      key=lambda n: n.id)

    async def _fence(self, nodeId: int) -> None:
        """Remove the old master's node and wait until its VM is ended."""
        node = self.manager.nodes.get(nodeId)
        if node is None:
            return
        log.warn("failover: fencing the lost master, node {node}: ending its VM", node=nodeId)
        node.machine.remove()
        await node.core.flush()
        while nodeId in self.manager.nodes:
            await deferLater(self.clock, FENCE_STEP, lambda: None)
        log.info("failover: the old master's VM (node {node}) is ended", node=nodeId)
