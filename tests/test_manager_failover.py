"""
Unit tests of the master-loss decision and the failover's order of steps
(L{conpaassql.manager.failover}), with fakes of the manager, its nodes and
the replication coordinator, on a Clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from conpaassql.manager.config import ManagerConfig
from conpaassql.manager.failover import FENCE_STEP, MasterWatch, gtidAhead, parseGtid
from conpaassql.rpc.errors import Conflict, NotFound


@dataclass
class _Record:
    id: int
    role: str | None = None
    state_since: float = 0.0
    unreachable_since: float | None = None
    error: str | None = None


class _Core:
    def __init__(self, record: _Record) -> None:
        self.record = record
        self.lastProbeError: str | None = None

    @property
    def unreachable(self) -> bool:
        return self.record.unreachable_since is not None

    def flush(self) -> Deferred[None]:
        return succeed(None)


class _Node:
    def __init__(self, nodeId: int, role: str | None, events: list[Any]) -> None:
        self.id = nodeId
        self.state = "RUNNING"
        self.core = _Core(_Record(nodeId, role))
        self.machine = self
        self.events = events

    def remove(self) -> None:
        self.events.append(("remove", self.id))
        self.state = "TERMINATING"


@dataclass
class _Registry:
    meta: dict[str, str] = field(default_factory=dict)

    async def getMeta(self, key: str) -> str | None:
        return self.meta.get(key)

    async def setMeta(self, key: str, value: str | None) -> None:
        if value is None:
            self.meta.pop(key, None)
        else:
            self.meta[key] = value


class _Coordinator:
    def __init__(self, manager: _Manager) -> None:
        self.manager = manager
        self.busy = False
        self.positions: dict[int, str] = {}
        self.setups: dict[int, dict[str, Any]] = {}

    def master(self) -> _Node | None:
        return next((n for n in self.manager.nodes.values()
                     if n.core.record.role == "MASTER" and n.state != "TERMINATING"), None)

    def _requireRunning(self, node: _Node, what: str) -> None:
        pass

    async def _call(self, node: _Node, method: str, params: Any = None,
                    timeout: float | None = None) -> Any:
        self.manager.events.append((method, node.id))
        if method == "get_replication_status":
            return {"gtid_current_pos": self.positions[node.id]}
        return {}

    async def _setRole(self, node: _Node, role: str | None) -> None:
        node.core.record.role = role

    async def _follow(self, node: _Node, master: _Node, position: str) -> None:
        self.manager.events.append(("follow", node.id, master.id, position))


class _Manager:
    def __init__(self, failover: str) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.config = ManagerConfig(failover=failover, master_lost_timeout=5)
        self.events: list[Any] = []
        self.nodes = {1: _Node(1, "MASTER", self.events), 2: _Node(2, "SLAVE", self.events),
                      3: _Node(3, "SLAVE", self.events)}
        self.registry = _Registry()
        self.replication = _Coordinator(self)
        self.replication.positions = {2: "0-1-10", 3: "0-1-12"}
        self.tracked: list[Deferred[Any]] = []

    def node(self, nodeId: int) -> _Node:
        if nodeId not in self.nodes:
            raise NotFound(f"no node {nodeId}")
        return self.nodes[nodeId]

    async def _probe(self, node: _Node) -> None:
        self.events.append(("probe", node.id))

    def _track(self, d: Deferred[Any]) -> Deferred[Any]:
        self.tracked.append(d)
        return d


class GtidTests(SynchronousTestCase):
    def test_parse(self) -> None:
        self.assertEqual(parseGtid("0-1-42,1-3-7"), {0: 42, 1: 7})
        self.assertEqual(parseGtid(""), {})
        self.assertRaises(ValueError, parseGtid, "0-1")
        self.assertRaises(ValueError, parseGtid, "a-b-c")

    def test_order(self) -> None:
        self.assertGreater(gtidAhead("0-1-12"), gtidAhead("0-1-10"))
        self.assertGreater(gtidAhead("0-2-3,1-1-9"), gtidAhead("0-1-11"))
        self.assertGreater(gtidAhead("0-1-1"), gtidAhead(""))


class MasterWatchTests(SynchronousTestCase):
    def watch(self, failover: str) -> tuple[_Manager, MasterWatch]:
        manager = _Manager(failover)
        return manager, MasterWatch(manager)  # type: ignore[arg-type]

    def unreachable(self, manager: _Manager) -> None:
        master = manager.nodes[1]
        master.core.record.unreachable_since = manager.clock.seconds()
        master.core.lastProbeError = "no answer in time"

    def test_lost_only_after_the_timeout(self) -> None:
        manager, watch = self.watch("manual")
        self.unreachable(manager)
        manager.clock.advance(4.9)
        watch.check()
        self.assertFalse(watch.lost)
        self.assertEqual(watch.serviceInfo(), {})
        manager.clock.advance(0.1)
        watch.check()
        self.assertTrue(watch.lost)
        shown = watch.serviceInfo()["master_lost"]
        self.assertEqual((shown["id"], shown["reason"], shown["failover"]),
                         (1, "no answer in time", "manual"))

    def test_a_break_starts_over(self) -> None:
        manager, watch = self.watch("auto")
        self.unreachable(manager)
        manager.clock.advance(4)
        watch.check()
        manager.nodes[1].core.record.unreachable_since = None
        watch.check()
        self.assertIsNone(watch.loss)
        self.unreachable(manager)
        manager.clock.advance(4)
        watch.check()
        self.assertFalse(watch.lost)
        self.assertEqual(manager.events, [])

    def test_error_node_is_down_since_its_state(self) -> None:
        manager, watch = self.watch("manual")
        master = manager.nodes[1]
        master.state = "ERROR"
        master.core.record.state_since = manager.clock.seconds() - 5
        master.core.record.error = "the cloud reports the VM failed"
        watch.check()
        self.assertEqual(watch.serviceInfo()["master_lost"]["reason"],
                         "the cloud reports the VM failed")

    def test_manual_promotes_nothing(self) -> None:
        manager, watch = self.watch("manual")
        self.unreachable(manager)
        for _ in range(20):
            manager.clock.advance(1)
            watch.check()
        self.assertTrue(watch.lost)
        self.assertEqual(manager.events, [])

    def test_auto_fences_before_it_promotes(self) -> None:
        """
        Nothing is read or promoted until the old master's node is gone (its
        VM ended); then the most advanced slave is promoted, the other
        follows it from its own position.
        """
        manager, watch = self.watch("auto")
        self.unreachable(manager)
        manager.clock.advance(5)
        watch.check()
        self.assertTrue(watch.busy)
        self.assertEqual(manager.events, [("remove", 1)])
        self.assertEqual(watch.serviceInfo()["master_lost"]["step"], "fencing")
        for _ in range(30):
            manager.clock.advance(FENCE_STEP)
        self.assertEqual(manager.events, [("remove", 1)])
        del manager.nodes[1]  # the cloud ended its VM
        manager.clock.advance(FENCE_STEP)
        self.assertEqual(manager.events[1:], [
            ("get_replication_status", 2), ("get_replication_status", 3), ("promote", 3),
            ("probe", 3), ("follow", 2, 3, "0-1-10"),
        ])
        self.assertFalse(watch.busy)
        self.assertIsNone(watch.loss)
        self.assertEqual(manager.nodes[3].core.record.role, "MASTER")
        last = watch.serviceInfo()["last_failover"]
        self.assertEqual((last["from"], last["to"], last["following"]), (1, 3, [2]))
        self.assertEqual(manager.registry.meta, {})

    def test_manual_recover_refuses_a_less_advanced_slave(self) -> None:
        manager, watch = self.watch("manual")
        manager.nodes[1].state = "ERROR"
        manager.nodes[1].core.record.state_since = manager.clock.seconds() - 10
        watch.check()
        d = Deferred.fromCoroutine(watch.recover(2))
        del manager.nodes[1]
        manager.clock.advance(FENCE_STEP)
        failure = self.failureResultOf(d, Conflict)
        self.assertIn("node 3 is more advanced than node 2", failure.value.message)
        self.assertNotIn(("promote", 2), manager.events)
        self.assertTrue(watch.lost)
        self.assertIn("more advanced", watch.serviceInfo()["master_lost"]["error"])
        result = self.successResultOf(Deferred.fromCoroutine(watch.recover(3)))
        self.assertEqual((result["id"], result["following"]), (3, [2]))
        self.assertFalse(watch.lost)

    def test_restart_during_a_failover_resumes_it(self) -> None:
        manager, watch = self.watch("auto")
        manager.registry.meta["replication.failover"] = '{"from": 1}'
        del manager.nodes[1]
        self.successResultOf(Deferred.fromCoroutine(watch.restore()))
        watch.check()
        self.assertEqual(manager.nodes[3].core.record.role, "MASTER")
        self.assertEqual(watch.serviceInfo()["last_failover"]["from"], 1)
