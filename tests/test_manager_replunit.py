"""
The manager's replication coordinator and performance sampler, on a Clock,
with fake agents that play the agents' replication methods: refusals,
failures, restarts and what the API shows.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from conpaassql.rpc.errors import Conflict, NotFound, OperationFailed, Timeout, WrongState
from tests.support.fakeagents import FakeAgents
from tests.support.fakedriver import FakeDriver
from tests.test_manager_node import Harness

BASE_PORT = 61000


class FakeCluster:
    """The agents' replication side, in memory, keyed by agent port (= 61000 + node id)."""

    def __init__(self, agents: FakeAgents) -> None:
        agents.handler = self
        self.nodes: dict[int, dict[str, Any]] = {}
        self.gtid = 0
        #: method -> exception to raise (once per call) for every node.
        self.failures: dict[str, Exception] = {}
        self.calls: list[tuple[int, str, dict[str, Any]]] = []
        #: Node ids whose seed stays in progress.
        self.holdSeed: set[int] = set()
        self.performance: dict[int, dict[str, int]] = {}

    def of(self, nodeId: int) -> dict[str, Any]:
        return self.nodes.setdefault(nodeId, {"role": None, "read_only": False})

    def __call__(self, url: str, method: str, params: dict[str, Any]) -> Any:
        nodeId = int(url.rsplit(":", 1)[1].strip("/")) - BASE_PORT
        node = self.of(nodeId)
        if method in self.failures:
            self.calls.append((nodeId, method, params))
            raise self.failures[method]
        if method == "get_server_state":
            return {"return": {"state": "RUNNING", "isRunningMySQL": True, "mysqld_port": 3400 +
                               nodeId, "port": url, "error": None,
                               "replication": self.status(nodeId)}}
        self.calls.append((nodeId, method, params))
        if method == "set_up_replica_master":
            node.update(role="master", server_id=params["server_id"])
            return {"return": {"role": "master", "changed": True, "gtid_binlog_pos": "0-1-5",
                               "master_log_file": "mysql-bin.000001", "master_log_pos": 4}}
        if method == "set_up_replica_slave":
            if "master_agent_url" in params:
                node.update(phase="copying", bytes=10)
                if nodeId not in self.holdSeed:
                    self.finishSeed(nodeId)
                return {"return": "OK", "state": "SEEDING", "phase": "configuring"}
            node.update(role="slave", phase="replicating")
            return {"return": self.status(nodeId)}
        if method == "get_replication_status":
            return {"return": self.status(nodeId)}
        if method == "set_read_only":
            node["read_only"] = params["value"]
            return {"return": {"read_only": params["value"]}}
        if method == "wait_for_gtid":
            return {"return": {"reached": True}}
        if method == "promote":
            node.update(role="master", phase=None, read_only=False)
            return {"return": {"role": "master", "changed": True}}
        if method == "get_performance":
            return {"return": {"timestamp": 1000.0 + self.gtid,
                               "status": self.performance.get(nodeId, {})}}
        return None

    def finishSeed(self, nodeId: int, error: str | None = None) -> None:
        node = self.of(nodeId)
        if error:
            node.update(phase="failed", error=error, role=None)
        else:
            node.update(phase="replicating", role="slave", bytes=None,
                        last_setup={"kind": "seed", "bytes": 12345})

    def status(self, nodeId: int) -> dict[str, Any]:
        node = self.of(nodeId)
        status = {"role": node["role"], "gtid_binlog_pos": "0-1-5", "gtid_current_pos": "0-1-5"}
        for key in ("phase", "error", "bytes", "last_setup"):
            if node.get(key) is not None:
                status[key] = node[key]
        if node["role"] == "slave":
            status.update(io_running=True, sql_running=True, seconds_behind=3)
        return status

    def methods(self, nodeId: int) -> list[str]:
        return [m for n, m, _ in self.calls if n == nodeId]


def driver(clock: Clock) -> FakeDriver:
    return FakeDriver(clock, agentPort=lambda spec: BASE_PORT + spec.nodeId)


class CoordinatorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.agents = FakeAgents()
        self.cluster = FakeCluster(self.agents)
        self.h = self.harness()
        self.ids = self.h.add(3)
        self.h.poll()

    def harness(self, path: str | None = None) -> Harness:
        h = Harness(self, path=path, clock=self.clock,
                    fakeDriver=getattr(self, "fake", None) or driver(self.clock),
                    agents=self.agents, metrics_interval=5).start()
        self.fake = h.driver
        self.addCleanup(lambda: h.stop() if h.manager.running else None)
        return h

    def ok(self, coroutine: Any) -> Any:
        return self.successResultOf(Deferred.fromCoroutine(coroutine))

    def fails(self, coroutine: Any, error: type) -> Any:
        return self.failureResultOf(Deferred.fromCoroutine(coroutine), error).value

    @property
    def r(self) -> Any:
        return self.h.manager.replication

    def settle(self, seconds: float = 2.0) -> None:
        for _ in range(int(seconds / 0.5)):
            self.clock.advance(0.5)

    def makeMasterAndSlaves(self) -> None:
        self.ok(self.r.setUpMaster(1))
        for nodeId in (2, 3):
            self.ok(self.r.attachSlave(nodeId))
        self.settle()
        self.assertEqual([self.h.info(i)["role"] for i in (1, 2, 3)],
                         ["MASTER", "SLAVE", "SLAVE"])

    def test_refusals(self) -> None:
        e = self.fails(self.r.attachSlave(2), WrongState)
        self.assertIn("no replication master yet", e.message)
        self.fails(self.r.setUpMaster(9), NotFound)
        made = self.ok(self.r.setUpMaster(1))
        self.assertEqual((made["role"], made["changed"]), ("MASTER", True))
        self.assertEqual(self.cluster.calls[0][2]["server_id"], 1)
        again = self.ok(self.r.setUpMaster(1))
        self.assertEqual(again["changed"], False)
        self.assertEqual(self.cluster.methods(1), ["set_up_replica_master"])
        self.assertIn("is the master", self.fails(self.r.attachSlave(1), Conflict).message)
        # A switchover needs a slave.
        self.assertIn("not a slave", self.fails(self.r.setUpMaster(2), WrongState).message)
        # A node that is not RUNNING.
        self.h.manager.nodes[3].core.record.unreachable_since = self.clock.seconds()
        self.assertIn("unreachable", self.fails(self.r.attachSlave(3), WrongState).message)
        self.h.manager.nodes[3].core.record.unreachable_since = None
        # Already being set up, then already a slave.
        self.cluster.holdSeed.add(2)
        self.assertEqual(self.ok(self.r.attachSlave(2))["state"], "SEEDING")
        self.assertEqual(self.h.manager.serviceState(), "ADAPTING")
        self.assertIn("already being set up", self.fails(self.r.attachSlave(2), Conflict).message)
        self.assertIn("being set up", self.fails(self.r.setUpMaster(2), Conflict).message)
        self.cluster.finishSeed(2)
        self.settle()
        self.assertEqual(self.h.manager.serviceState(), "RUNNING")
        self.assertEqual(self.ok(self.r.attachSlave(2))["changed"], False)

    def test_seed_progress_then_slave(self) -> None:
        self.ok(self.r.setUpMaster(1))
        self.cluster.holdSeed.add(2)
        self.ok(self.r.attachSlave(2))
        [(_, _, params)] = [c for c in self.cluster.calls if c[1] == "set_up_replica_slave"]
        master = self.h.manager.nodes[1].core.record
        self.assertEqual(params["master_agent_url"], f"http://127.0.0.1:{BASE_PORT + 1}/")
        self.assertEqual(params["master_agent_token"], master.token)
        self.assertEqual((params["master_host"], params["master_port"]), ("127.0.0.1", 3401))
        self.assertEqual(params["slave_server_id"], 2)
        self.assertEqual(params["repl_password"], self.ok(self.r.password()))
        self.settle()
        info = self.h.info(2)
        self.assertIsNone(info["role"])
        self.assertEqual(info["replication"]["setup"]["phase"], "copying")
        self.assertEqual(info["replication"]["setup"]["bytes"], 10)
        self.cluster.finishSeed(2)
        self.settle()
        info = self.h.info(2)
        self.assertEqual(info["role"], "SLAVE")
        self.assertEqual(info["replication"]["setup"]["bytes"], 12345)
        self.assertEqual(info["replication"]["seconds_behind"], 3)
        self.assertTrue(info["replication"]["io_running"])
        self.assertNotIn("error", info)

    def test_seed_fails(self) -> None:
        self.ok(self.r.setUpMaster(1))
        self.cluster.holdSeed.add(2)
        self.ok(self.r.attachSlave(2))
        self.cluster.finishSeed(2, error="the master's dump failed: disk full")
        self.settle()
        info = self.h.info(2)
        self.assertEqual((info["state"], info["role"]), ("RUNNING", None))
        self.assertIn("disk full", info["error"])
        self.assertEqual(info["replication"]["setup"]["phase"], "failed")
        # It stays known after a restart, and a new try is allowed.
        self.h.stop()
        self.h = self.harness(self.h.path)
        self.assertIn("disk full", self.h.info(2)["error"])
        self.cluster.holdSeed.discard(2)
        self.cluster.of(2).update(phase=None, error=None)
        self.ok(self.h.manager.replication.attachSlave(2))
        self.settle()
        self.assertEqual(self.h.info(2)["role"], "SLAVE")

    def test_seed_refused_by_agent(self) -> None:
        self.ok(self.r.setUpMaster(1))
        self.cluster.failures["set_up_replica_slave"] = Conflict("a dump is being loaded")
        e = self.fails(self.r.attachSlave(2), Conflict)
        self.assertIn("node 2: set_up_replica_slave: a dump is being loaded", e.message)
        self.assertEqual(self.h.info(2)["state"], "RUNNING")
        self.assertIn("a dump is being loaded", self.h.info(2)["error"])
        self.assertFalse(self.r.busy)

    def test_interrupted_seed_reported_after_restart(self) -> None:
        """The manager dies during a seed, and the agent (restarted too) knows nothing of it."""
        self.ok(self.r.setUpMaster(1))
        self.cluster.holdSeed.update({2, 3})
        self.ok(self.r.attachSlave(2))
        self.ok(self.r.attachSlave(3))
        self.h.stop()
        # Node 2's agent lost its seed; node 3's finished meanwhile.
        self.cluster.of(2).update(phase=None, bytes=None)
        self.cluster.finishSeed(3)
        self.h = self.harness(self.h.path)
        self.assertTrue(self.h.info(2)["replication"]["setup"]["resumed"])
        self.settle()
        info = self.h.info(2)
        self.assertEqual((info["state"], info["role"]), ("RUNNING", None))
        self.assertIn("interrupted", info["error"])
        self.assertEqual(self.h.info(3)["role"], "SLAVE")
        self.assertEqual(self.h.manager.serviceInfo()["master"], 1)

    def test_switchover(self) -> None:
        self.makeMasterAndSlaves()
        self.cluster.calls.clear()
        result = self.ok(self.r.setUpMaster(2))
        self.assertEqual((result["previous_master"], result["following"], result["gtid_pos"]),
                         (1, [1, 3], "0-1-5"))
        self.assertEqual(self.cluster.methods(1)[:2], ["set_read_only", "get_replication_status"])
        self.assertIn("wait_for_gtid", self.cluster.methods(2))
        self.assertIn("wait_for_gtid", self.cluster.methods(3))
        self.assertIn("promote", self.cluster.methods(2))
        self.settle()
        self.assertEqual([self.h.info(i)["role"] for i in (1, 2, 3)],
                         ["SLAVE", "MASTER", "SLAVE"])
        follow = [p for n, m, p in self.cluster.calls if n == 1 and m == "set_up_replica_slave"]
        self.assertEqual(follow[0]["master_gtid_pos"], "0-1-5")
        self.assertEqual(follow[0]["master_port"], 3402)
        self.assertEqual(self.h.manager.serviceInfo()["master"], 2)

    def test_switchover_abandoned_when_a_slave_lags(self) -> None:
        self.makeMasterAndSlaves()
        self.cluster.failures["wait_for_gtid"] = Timeout("GTID position not reached")
        e = self.fails(self.r.setUpMaster(3), OperationFailed)
        self.assertIn("switchover abandoned", e.message)
        self.assertEqual(self.cluster.of(1)["read_only"], False)
        self.assertNotIn("promote", self.cluster.methods(3))
        self.assertEqual([self.h.info(i)["role"] for i in (1, 2, 3)],
                         ["MASTER", "SLAVE", "SLAVE"])
        self.assertFalse(self.r.busy)
        self.assertNotIn("replication_error", self.h.manager.serviceInfo())

    def test_interrupted_switchover_reported_and_finished(self) -> None:
        self.makeMasterAndSlaves()
        hold: Deferred[Any] = Deferred()
        original = self.cluster.__call__

        def holdPromote(url: str, method: str, params: dict[str, Any]) -> Any:
            if method == "promote":
                return hold
            return original(url, method, params)

        self.agents.handler = holdPromote
        d = Deferred.fromCoroutine(self.r.setUpMaster(2))
        self.assertNoResult(d)
        self.assertEqual(self.h.manager.serviceInfo()["switchover"]["step"], "promote")
        writes = Deferred.fromCoroutine(self.h.manager.writeTargets("all"))
        self.assertIn("change of the replication master",
                      self.failureResultOf(writes, Conflict).value.message)
        # The manager dies here (its work in flight is dropped).
        self.h.manager._inflight.clear()
        self.agents.handler = self.cluster
        self.h.stop()
        self.h = self.harness(self.h.path)
        error = self.h.manager.serviceInfo()["replication_error"]
        self.assertIn("switchover from node 1 to node 2 was interrupted", error)
        self.assertEqual(self.h.manager.serviceInfo()["master"], 1)
        result = self.ok(self.h.manager.replication.setUpMaster(2))
        self.assertEqual(result["following"], [1, 3])
        self.settle()
        self.assertEqual([self.h.info(i)["role"] for i in (1, 2, 3)],
                         ["SLAVE", "MASTER", "SLAVE"])
        self.assertNotIn("replication_error", self.h.manager.serviceInfo())
        # The first manager's switchover died with it: never resumed.
        self.assertFalse(d.called)

    def test_promote_refused_old_master_writable_again(self) -> None:
        self.makeMasterAndSlaves()
        self.cluster.failures["promote"] = OperationFailed("cannot write my.cnf")
        e = self.fails(self.r.setUpMaster(2), OperationFailed)
        self.assertIn("cannot write my.cnf", e.message)
        self.assertEqual(self.cluster.of(1)["read_only"], False)
        self.assertEqual([self.h.info(i)["role"] for i in (1, 2, 3)],
                         ["MASTER", "SLAVE", "SLAVE"])
        self.assertNotIn("replication_error", self.h.manager.serviceInfo())

    def test_no_switchover_while_seeding(self) -> None:
        self.ok(self.r.setUpMaster(1))
        self.ok(self.r.attachSlave(2))
        self.settle()
        self.cluster.holdSeed.add(3)
        self.ok(self.r.attachSlave(3))
        e = self.fails(self.r.setUpMaster(2), Conflict)
        self.assertIn("nodes 3 are being set up", e.message)
        self.assertNotIn("set_read_only", self.cluster.methods(1))

    def test_writes_go_to_the_master(self) -> None:
        nodes, notes = self.ok(self.h.manager.writeTargets("all"))
        self.assertEqual(([n.id for n in nodes], notes), ([1, 2, 3], {}))
        self.ok(self.r.setUpMaster(1))
        self.ok(self.r.attachSlave(2))
        self.settle()
        nodes, notes = self.ok(self.h.manager.writeTargets("all"))
        self.assertEqual([n.id for n in nodes], [1, 3])  # node 3 is outside replication
        self.assertEqual(notes, {"2": "by replication from node 1"})
        nodes, notes = self.ok(self.h.manager.writeTargets(2))
        self.assertEqual(([n.id for n in nodes], notes),
                         ([1], {"2": "by replication from node 1"}))
        nodes, notes = self.ok(self.h.manager.writeTargets(3))
        self.assertEqual([n.id for n in nodes], [3])

    def test_master_not_removed_while_seeding(self) -> None:
        self.ok(self.r.setUpMaster(1))
        self.cluster.holdSeed.add(2)
        self.ok(self.r.attachSlave(2))
        e = self.fails(self.h.manager.removeNode(1), Conflict)
        self.assertIn("nodes 2 replicate from it", e.message)
        self.h.remove(2)
        self.assertNotIn(2, self.r.setups)
        self.h.remove(1)

    def test_password_kept_and_never_logged(self) -> None:
        logged: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            from twisted.logger import formatEvent

            logged.append(formatEvent(event) + repr(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        self.makeMasterAndSlaves()
        password = self.ok(self.r.password())
        self.assertGreaterEqual(len(password), 24)
        self.h.stop()
        self.h = self.harness(self.h.path)
        self.assertEqual(self.ok(self.h.manager.replication.password()), password)
        self.assertEqual([self.h.info(i)["role"] for i in (1, 2, 3)],
                         ["MASTER", "SLAVE", "SLAVE"])
        self.assertTrue(logged)
        self.assertFalse([line for line in logged if password in line])


class SamplerTests(SynchronousTestCase):
    def test_samples_and_forget(self) -> None:
        clock = Clock()
        agents = FakeAgents()
        cluster = FakeCluster(agents)
        h = Harness(self, clock=clock, fakeDriver=driver(clock), agents=agents,
                    metrics_interval=5).start()
        self.addCleanup(h.stop)
        h.add(2)
        h.poll()
        cluster.performance[1] = {"Questions": 100, "Threads_connected": 3, "Uptime": 10}
        cluster.performance[2] = {"Questions": 10, "Threads_connected": 1, "Uptime": 10}
        clock.advance(5)
        cluster.gtid = 10  # the fake's timestamps advance by 10 s
        cluster.performance[1] = {"Questions": 600, "Threads_connected": 4, "Uptime": 20}
        clock.advance(5)
        report = h.manager.performance.report()
        self.assertEqual(report["nodes"]["1"]["queries_per_second"], 50.0)
        self.assertEqual(report["service"]["connections"], 5)
        self.assertIsNotNone(report["nodes"]["1"]["response_time"])
        h.remove(2)
        self.assertEqual(sorted(h.manager.performance.report()["nodes"]), ["1"])

    def test_unanswered_sample_skipped(self) -> None:
        clock = Clock()
        agents = FakeAgents()
        h = Harness(self, clock=clock, fakeDriver=driver(clock), agents=agents,
                    metrics_interval=5).start()
        self.addCleanup(h.stop)
        h.add(1)
        h.poll()
        clock.advance(5)  # the default fake answers "OK": not a sample
        self.assertEqual(h.manager.performance.report()["nodes"], {})




