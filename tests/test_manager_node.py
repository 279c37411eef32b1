"""
The manager's node lifecycle and poller, on a Clock, with the fake driver
and fake agents, and the registry's real SQL run synchronously on a file.
"""

from __future__ import annotations

import os
import re
import sqlite3
import stat
from dataclasses import replace
from typing import Any

from automat._core import NoTransition
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from conpaassql.iaas.base import CONTEXT_KEYS, CloudFailure, vmName
from conpaassql.manager import lifecycle
from conpaassql.manager import node as nodemodule
from conpaassql.manager.config import ManagerConfig
from conpaassql.manager.registry import Registry, SynchronousPool
from conpaassql.manager.service import Manager
from conpaassql.rpc.errors import Conflict, NotFound, WrongState
from tests.support.fakeagents import FakeAgents
from tests.support.fakedriver import FakeDriver

POLL = 2.0


class Harness:
    """A manager on a Clock over a registry file, a fake driver and fake agents."""

    def __init__(self, testcase: SynchronousTestCase, path: str | None = None,
                 clock: Clock | None = None, fakeDriver: FakeDriver | None = None,
                 agents: FakeAgents | None = None, **config: Any) -> None:
        self.testcase = testcase
        self.clock = clock or Clock()
        if path is None:
            directory = testcase.mktemp()
            os.makedirs(directory)
            path = os.path.join(directory, "registry.sqlite")
        self.path = path
        self.driver = fakeDriver or FakeDriver(self.clock)
        self.agents = agents or FakeAgents()
        settings: dict[str, Any] = dict(poll_interval=POLL, boot_poll_interval=POLL,
                                        boot_timeout=60,
                                        unreachable_timeout=30, probe_timeout=5)
        settings.update(config)
        self.config = ManagerConfig(**settings)
        self.stopped = 0
        self.manager = Manager(
            self.config,
            Registry(SynchronousPool(path)),
            self.driver.bind,
            self.agents.factory,
            self.clock,
            stopProcess=self._stopProcess,
        )

    def _stopProcess(self) -> None:
        self.stopped += 1

    def start(self) -> Harness:
        self.manager.setManagerUrl("http://127.0.0.1:50000/")
        self.manager.startService()
        return self

    def stop(self) -> None:
        """Stop the manager; it waits for probes in flight (they time out)."""
        d = self.manager.stopService()
        for _ in range(100):
            if d.called:
                break
            self.clock.advance(1)
        self.testcase.successResultOf(d)

    def add(self, count: int = 1) -> list[int]:
        records = self.testcase.successResultOf(
            Deferred.fromCoroutine(self.manager.addNodes("agent", count))
        )
        self.testcase.assertEqual({r.state for r in records}, {"PENDING"})
        return [r.id for r in records]

    def remove(self, nodeId: int) -> None:
        self.testcase.successResultOf(Deferred.fromCoroutine(self.manager.removeNode(nodeId)))

    def poll(self, cycles: int = 1) -> None:
        for _ in range(cycles):
            self.clock.advance(POLL)

    def state(self, nodeId: int) -> str:
        node = self.manager.nodes.get(nodeId)
        return node.state if node is not None else "TERMINATED"

    def info(self, nodeId: int) -> dict[str, Any]:
        return self.manager.nodeInfo(self.manager.node(nodeId))

    def stored(self) -> dict[int, tuple[str, str | None]]:
        """What a fresh read of the registry file says: id -> (state, vm_id)."""
        registry = Registry(SynchronousPool(self.path))
        records = self.testcase.successResultOf(Deferred.fromCoroutine(registry.liveNodes()))
        registry.close()
        return {r.id: (r.state, r.vm_id) for r in records}

    def vmOf(self, nodeId: int) -> str:
        vm_id = self.manager.nodes[nodeId].core.record.vm_id
        assert vm_id is not None
        return vm_id

    def portOf(self, nodeId: int) -> int | None:
        return self.manager.nodes[nodeId].core.record.agent_port


def undefined(machine: Any, inputs: type, states: Any) -> list[tuple[str, str]]:
    """The (state, input) pairs of a machine with no transition: none, please."""
    automaton = machine.__automat_automaton__
    missing = []
    for state in states:
        for name in [m for m in dir(inputs) if not m.startswith("_")]:
            try:
                automaton.outputForInput(state, name)
            except NoTransition:
                missing.append((state.name, name))
    return missing


class MachineTests(SynchronousTestCase):
    def test_lifecycle_complete(self) -> None:
        self.assertEqual(undefined(lifecycle.LifecycleMachine, lifecycle.Lifecycle, (
            lifecycle.init, lifecycle.prologue, lifecycle.running, lifecycle.epilogue,
            lifecycle.stopped, lifecycle.error)), [])

    def test_lifecycle(self) -> None:
        core = lifecycle.PhaseCore()
        machine = lifecycle.LifecycleMachine(core)
        self.assertFalse(machine.shutdown())
        self.assertEqual(core.phase, "INIT")
        machine.start()
        self.assertEqual(core.phase, "PROLOGUE")
        machine.polled()
        self.assertEqual(core.phase, "RUNNING")
        self.assertTrue(machine.shutdown())
        self.assertFalse(machine.shutdown())
        self.assertEqual(core.phase, "EPILOGUE")
        machine.polled()
        machine.nodesGone()
        self.assertEqual(core.phase, "STOPPED")
        failing = lifecycle.PhaseCore()
        other = lifecycle.LifecycleMachine(failing)
        other.start()
        other.startFailed("no registry")
        self.assertEqual((failing.phase, failing.error), ("ERROR", "no registry"))
        self.assertFalse(other.shutdown())

    def test_every_input_defined_in_every_state(self) -> None:
        self.assertEqual(undefined(nodemodule.NodeMachine, nodemodule.NodeInputs, (
            nodemodule.pending, nodemodule.booting, nodemodule.running,
            nodemodule.unreachable, nodemodule.error, nodemodule.terminating,
            nodemodule.terminated)), [])


class LifecycleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(self).start()
        self.addCleanup(self.h.stop)

    def test_phases(self) -> None:
        h = Harness(self)
        self.assertEqual(h.manager.serviceState(), "INIT")
        h.manager.startService()
        self.addCleanup(h.stop)
        self.assertEqual(h.manager.serviceState(), "PROLOGUE")
        h.manager.setManagerUrl("http://127.0.0.1:1/")
        self.assertEqual(h.manager.serviceState(), "RUNNING")
        h.driver.bootDelay = 10
        h.add()
        self.assertEqual(h.manager.serviceState(), "ADAPTING")
        h.poll(6)
        self.assertEqual(h.manager.serviceState(), "RUNNING")

    def test_add_records_pending_and_creates_with_context(self) -> None:
        self.h.driver.holdCreate = True
        [nodeId] = self.h.add()
        self.assertEqual(self.h.state(nodeId), "PENDING")
        self.assertEqual(self.h.stored(), {nodeId: ("PENDING", None)})
        [spec] = self.h.driver.callsOf("create")
        tag = self.h.manager.serviceTag
        assert tag is not None
        self.assertTrue(re.fullmatch(r"[0-9a-f]{8}", tag))
        self.assertEqual(spec.name, vmName(tag, nodeId))
        self.assertEqual(set(spec.context), set(CONTEXT_KEYS))
        record = self.h.manager.nodes[nodeId].core.record
        self.assertEqual(spec.context["AGENT_TOKEN"], record.token)
        self.assertGreaterEqual(len(record.token), 40)
        self.assertEqual(
            {k: v for k, v in spec.context.items() if k != "AGENT_TOKEN"},
            {"MANAGER_URL": "http://127.0.0.1:50000/", "NODE_ID": str(nodeId),
             "AGENT_PORT": "0", "SERVICE_TAG": tag},
        )
        self.assertNotIn(record.token, repr(spec))
        self.h.driver.releaseCreates()
        self.assertEqual(self.h.state(nodeId), "BOOTING")

    def test_agent_port_for_clouds(self) -> None:
        h = Harness(self, driver="OPENNEBULA_XMLRPC", agent_port=60123).start()
        self.addCleanup(h.stop)
        h.add()
        self.assertEqual(h.driver.callsOf("create")[0].context["AGENT_PORT"], "60123")

    def test_pending_booting_running(self) -> None:
        self.h.driver.bootDelay = 5
        [nodeId] = self.h.add()
        self.assertEqual(self.h.state(nodeId), "PENDING")
        self.h.poll()
        self.assertEqual(self.h.state(nodeId), "PENDING")
        self.h.agents.set(None, "starting")
        self.h.agents.default = "starting"
        self.h.poll(2)
        self.assertEqual(self.h.state(nodeId), "BOOTING")
        self.assertEqual(self.h.stored()[nodeId][0], "BOOTING")
        self.assertFalse(self.h.info(nodeId)["isRunningMySQL"])
        self.h.agents.default = "up"
        self.h.poll()
        self.assertEqual(self.h.state(nodeId), "RUNNING")
        self.assertEqual(self.h.stored()[nodeId], ("RUNNING", self.h.vmOf(nodeId)))
        info = self.h.info(nodeId)
        self.assertEqual(
            {k: info[k] for k in ("id", "ip", "isRunningMySQL", "state", "role", "mysqld_port")},
            {"id": nodeId, "ip": "127.0.0.1", "isRunningMySQL": True, "state": "RUNNING",
             "role": None, "mysqld_port": 3400},
        )
        self.assertNotIn("error", info)

    def test_running_at_first_probe_when_vm_runs_at_once(self) -> None:
        [nodeId] = self.h.add()
        self.assertEqual(self.h.state(nodeId), "BOOTING")
        self.h.poll()
        self.assertEqual(self.h.state(nodeId), "RUNNING")

    def test_boot_deadline(self) -> None:
        self.h.agents.default = "down"
        [nodeId] = self.h.add()
        self.h.poll(29)
        self.assertEqual(self.h.state(nodeId), "BOOTING")
        self.h.poll(1)
        self.assertEqual(self.h.state(nodeId), "ERROR")
        error = self.h.info(nodeId)["error"]
        self.assertIn("not RUNNING 60 s after it was asked for (still BOOTING", error)
        self.assertIn("cannot connect", error)
        self.assertEqual(self.h.stored()[nodeId][0], "ERROR")

    def test_server_start_retried_then_error(self) -> None:
        self.h.agents.default = "failed"
        [nodeId] = self.h.add()
        self.h.poll()
        starts = [c for c in self.h.agents.calls if c[1] == "start_server"]
        self.assertEqual(len(starts), 1)
        self.assertEqual(self.h.state(nodeId), "BOOTING")
        self.h.poll()
        self.assertEqual(self.h.state(nodeId), "BOOTING")
        self.h.poll()
        self.assertEqual(len([c for c in self.h.agents.calls if c[1] == "start_server"]), 2)
        self.assertEqual(self.h.state(nodeId), "ERROR")
        self.assertIn("database server did not start: initialising the data directory failed "
                      "(after 2 more attempts)", self.h.info(nodeId)["error"])

    def test_server_start_retried_then_running(self) -> None:
        self.h.agents.default = "failed"
        [nodeId] = self.h.add()
        self.h.poll()
        self.h.agents.default = "up"
        self.h.poll()
        self.assertEqual(self.h.state(nodeId), "RUNNING")

    def test_pending_deadline(self) -> None:
        self.h.driver.bootDelay = 1000
        [nodeId] = self.h.add()
        self.h.poll(30)
        self.assertEqual(self.h.state(nodeId), "ERROR")
        self.assertIn("still PENDING", self.h.info(nodeId)["error"])

    def test_cloud_failed(self) -> None:
        self.h.driver.bootDelay = 100
        [nodeId] = self.h.add()
        self.h.driver.setState(self.h.vmOf(nodeId), "FAILED", "no host has room")
        self.h.poll()
        self.assertEqual(self.h.state(nodeId), "ERROR")
        self.assertEqual(self.h.info(nodeId)["error"],
                         "the cloud reports the VM failed: no host has room")

    def test_cloud_failed_while_running(self) -> None:
        [nodeId] = self.h.add()
        self.h.poll()
        self.h.driver.setState(self.h.vmOf(nodeId), "FAILED", "host down")
        self.h.poll()
        self.assertEqual(self.h.state(nodeId), "ERROR")

    def test_create_failed(self) -> None:
        self.h.driver.failCreate = CloudFailure("quota exceeded", transient=False)
        [nodeId] = self.h.add()
        self.assertEqual(self.h.state(nodeId), "ERROR")
        self.assertEqual(self.h.info(nodeId)["error"], "the cloud refused the VM: quota exceeded")
        self.assertEqual(self.h.stored()[nodeId][0], "ERROR")

    def test_vm_vanishes(self) -> None:
        [nodeId] = self.h.add()
        self.h.poll()
        self.h.driver.vanish(self.h.vmOf(nodeId))
        self.h.poll()
        self.assertEqual(self.h.state(nodeId), "ERROR")
        self.assertIn("no longer has VM", self.h.info(nodeId)["error"])

    def test_flapping_agent(self) -> None:
        [nodeId] = self.h.add()
        self.h.poll()
        url = f"http://127.0.0.1:{self.h.portOf(nodeId) or 60000}/"
        self.h.agents.modes[url] = "down"
        self.h.poll()
        self.assertEqual(self.h.state(nodeId), "RUNNING")
        info = self.h.info(nodeId)
        self.assertTrue(info["unreachable"])
        self.assertFalse(info["isRunningMySQL"])
        self.assertIn("agent unreachable", info["error"])
        self.h.poll(5)
        self.assertEqual(self.h.state(nodeId), "RUNNING")
        self.h.agents.modes[url] = "up"
        self.h.poll()
        info = self.h.info(nodeId)
        self.assertNotIn("unreachable", info)
        self.assertTrue(info["isRunningMySQL"])
        self.assertNotIn("error", info)
        # Silent past the deadline: ERROR.
        self.h.agents.modes[url] = "down"
        self.h.poll(15)
        self.assertEqual(self.h.state(nodeId), "RUNNING")
        self.h.poll(1)
        self.assertEqual(self.h.state(nodeId), "ERROR")
        self.assertIn("agent unreachable for 30 s", self.h.info(nodeId)["error"])

    def test_database_down_counts_as_unreachable(self) -> None:
        [nodeId] = self.h.add()
        self.h.poll()
        self.h.agents.default = "starting"
        self.h.poll()
        info = self.h.info(nodeId)
        self.assertTrue(info["unreachable"])
        self.assertIn("database server is STARTING", info["error"])

    def test_hanging_agent_times_out(self) -> None:
        self.h.agents.default = "hang"
        [nodeId] = self.h.add()
        self.h.clock.advance(POLL)
        self.assertEqual(len(self.h.agents.hanging), 1)
        # The probe times out (probe_timeout + 1 s) and the cycle goes on.
        self.h.clock.advance(6)
        self.assertEqual(self.h.state(nodeId), "BOOTING")
        self.assertIn("no answer in time", self.h.manager.nodes[nodeId].core.lastProbeError)
        self.h.agents.default = "up"
        self.h.poll(2)
        self.assertEqual(self.h.state(nodeId), "RUNNING")

    def test_silent_agents_do_not_hold_up_the_cloud_list(self) -> None:
        self.h.agents.default = "hang"
        [nodeId] = self.h.add()
        lists = len(self.h.driver.callsOf("list"))
        self.h.clock.pump([1] * 6)  # t = 6 s: the probe sent at 2 s still waits
        self.assertEqual(len(self.h.driver.callsOf("list")) - lists, 3)
        self.assertEqual(len(self.h.agents.hanging), 1)  # not probed again meanwhile
        self.h.clock.pump([1] * 2)  # t = 8 s: it timed out (probe_timeout 5 s + 1)
        self.assertIn("no answer in time", self.h.manager.nodes[nodeId].core.lastProbeError)
        self.h.clock.pump([1] * 2)
        self.assertEqual(len(self.h.agents.hanging), 2)
        self.assertEqual(len(self.h.driver.callsOf("list")) - lists, 5)

    def test_faster_polls_while_booting(self) -> None:
        h = Harness(self, boot_poll_interval=0.5).start()
        self.addCleanup(h.stop)
        h.driver.bootDelay = 1.2
        [nodeId] = h.add()
        lists = len(h.driver.callsOf("list"))
        h.clock.pump([0.5] * 3)
        self.assertEqual(h.state(nodeId), "RUNNING")
        self.assertEqual(len(h.driver.callsOf("list")) - lists, 3)
        # Once no node boots, every poll_interval only.
        h.clock.pump([0.5] * 8)
        self.assertEqual(len(h.driver.callsOf("list")) - lists, 5)

    def test_probes_bounded(self) -> None:
        h = Harness(self, probe_concurrency=3).start()
        self.addCleanup(h.stop)
        h.agents.default = "hang"
        h.add(7)
        h.clock.advance(POLL)
        self.assertEqual(len(h.agents.hanging), 3)
        h.clock.advance(6)
        self.assertEqual(len(h.agents.hanging), 6)

    def test_remove_running(self) -> None:
        [nodeId] = self.h.add()
        self.h.poll()
        vmId = self.h.vmOf(nodeId)
        self.h.driver.holdCreate = False
        self.h.remove(nodeId)
        self.assertEqual(self.h.driver.callsOf("terminate"), [vmId])
        self.assertEqual(self.h.state(nodeId), "TERMINATED")
        self.assertEqual(self.h.stored(), {})
        self.assertEqual(self.h.driver.ours(), [])
        self.assertTrue(self.h.agents.clients[0].closed)
        self.assertRaises(NotFound, self.h.manager.node, nodeId)
        self.failureResultOf(
            Deferred.fromCoroutine(self.h.manager.removeNode(nodeId)), NotFound
        )

    def test_remove_while_creating(self) -> None:
        self.h.driver.holdCreate = True
        [nodeId] = self.h.add()
        self.h.remove(nodeId)
        self.assertEqual(self.h.state(nodeId), "TERMINATING")
        self.assertEqual(self.h.stored()[nodeId][0], "TERMINATING")
        self.h.poll()
        self.assertEqual(self.h.state(nodeId), "TERMINATING")
        self.h.driver.releaseCreates()
        self.assertEqual(self.h.state(nodeId), "TERMINATED")
        self.assertEqual(self.h.driver.ours(), [])

    def test_remove_when_create_fails(self) -> None:
        self.h.driver.holdCreate = True
        self.h.driver.failCreate = CloudFailure("no")
        [nodeId] = self.h.add()
        self.h.remove(nodeId)
        self.h.driver.releaseCreates()
        self.assertEqual(self.h.state(nodeId), "TERMINATED")

    def test_create_timed_out_but_vm_made(self) -> None:
        h = Harness(self, boot_timeout=600).start()
        self.addCleanup(h.stop)
        h.driver.holdCreate = True
        [nodeId] = h.add()
        h.clock.advance(60)  # list_timeout: the create is given up
        # The cloud may have made the VM: the node is not failed for it.
        self.assertEqual(h.state(nodeId), "PENDING")
        self.assertIn("no answer in time", h.info(nodeId)["error"])
        self.assertIn("tried again", h.info(nodeId)["error"])
        # It did: the node learns its VM (no second create) and runs.
        tag = h.manager.serviceTag
        assert tag is not None
        vmId = h.driver.addVM(vmName(tag, nodeId))
        h.poll(2)
        self.assertEqual(h.info(nodeId)["vm_id"], vmId)
        self.assertEqual(h.state(nodeId), "RUNNING")
        self.assertNotIn("error", h.info(nodeId))
        self.assertEqual(len(h.driver.callsOf("create")), 1)
        h.remove(nodeId)
        self.assertEqual(h.driver.callsOf("terminate"), [vmId])
        self.assertEqual(h.driver.ours(), [])

    def test_create_unanswered_asked_again(self) -> None:
        self.h.driver.failCreate = CloudFailure("cannot reach the cloud")  # transient
        [nodeId] = self.h.add()
        self.assertEqual(self.h.state(nodeId), "PENDING")
        # The cloud has no VM for it: it is asked for again, less and less
        # often (after 2, 4, 8 s...), while lists go on every cycle.
        self.h.poll(7)  # 14 s: creates at 0, 2, 6 and 14 s
        self.assertEqual(len(self.h.driver.callsOf("create")), 4)
        self.assertEqual(len(self.h.driver.callsOf("list")), 8)
        self.assertEqual(self.h.state(nodeId), "PENDING")
        self.h.driver.failCreate = None
        self.h.poll(10)
        self.assertEqual(self.h.state(nodeId), "RUNNING")
        self.assertEqual(len(self.h.driver.callsOf("create")), 5)
        self.assertEqual(len(self.h.driver.ours()), 1)

    def test_create_unanswered_until_deadline(self) -> None:
        self.h.driver.failCreate = CloudFailure("cannot reach the cloud")
        [nodeId] = self.h.add()
        self.h.poll(31)  # boot_timeout 60 s
        self.assertEqual(self.h.state(nodeId), "ERROR")
        error = self.h.info(nodeId)["error"]
        self.assertIn("not RUNNING 60 s after it was asked for", error)
        self.assertIn("cannot reach the cloud", error)

    def test_list_older_than_a_create(self) -> None:
        self.h.driver.holdList = True
        self.h.poll()  # a list is asked for; its answer is on its way
        [nodeId] = self.h.add()  # the VM is made before that answer comes
        self.h.driver.holdList = False
        self.h.driver.releaseCreates()  # the answer, without the new VM: not "gone"
        self.assertEqual(self.h.state(nodeId), "RUNNING")
        self.h.poll(2)
        self.assertEqual(self.h.state(nodeId), "RUNNING")

    def test_second_vm_of_a_node_ended(self) -> None:
        h = Harness(self, boot_timeout=600).start()
        self.addCleanup(h.stop)
        h.driver.holdCreate = True
        [nodeId] = h.add()
        h.clock.advance(60)  # the create is given up...
        tag = h.manager.serviceTag
        assert tag is not None
        first = h.driver.addVM(vmName(tag, nodeId))  # ...but was made,
        second = h.driver.addVM(vmName(tag, nodeId))  # and so was a retry
        h.poll(2)
        self.assertEqual(h.driver.callsOf("terminate"), [second])
        self.assertEqual([vm.vmId for vm in h.driver.ours()], [first])
        self.assertEqual((h.state(nodeId), h.info(nodeId)["vm_id"]), ("RUNNING", first))

    def test_remove_error_node(self) -> None:
        self.h.driver.failCreate = CloudFailure("no", transient=False)
        [nodeId] = self.h.add()
        self.assertEqual(self.h.state(nodeId), "ERROR")
        self.h.remove(nodeId)
        self.assertEqual(self.h.state(nodeId), "TERMINATED")

    def test_terminate_retried(self) -> None:
        [nodeId] = self.h.add()
        self.h.driver.failTerminate = CloudFailure("cloud busy")
        self.h.remove(nodeId)
        self.assertEqual(self.h.state(nodeId), "TERMINATING")
        self.assertIn("cloud busy", self.h.info(nodeId)["error"])
        self.h.poll()
        self.assertEqual(len(self.h.driver.callsOf("terminate")), 2)
        self.h.driver.failTerminate = None
        self.h.poll()
        self.assertEqual(self.h.state(nodeId), "TERMINATED")

    def test_master_with_slaves_not_removed(self) -> None:
        master, slave = self.h.add(2)
        self.h.manager.nodes[master].core.record.role = "MASTER"
        self.h.manager.nodes[slave].core.record.role = "SLAVE"
        f = self.failureResultOf(
            Deferred.fromCoroutine(self.h.manager.removeNode(master)), Conflict
        )
        self.assertIn("replicate from it", f.value.message)
        self.h.remove(slave)
        self.h.remove(master)
        self.assertEqual(self.h.manager.nodes, {})

    def test_cloud_list_failures_back_off(self) -> None:
        [nodeId] = self.h.add()
        self.h.poll()
        self.h.driver.failList = CloudFailure("cloud down")
        before = len(self.h.driver.callsOf("list"))
        probes = self.h.agents.probes()
        self.h.poll(30)  # 60 s: lists at 0, +2, +4, +8, +16, +32 s
        self.assertEqual(len(self.h.driver.callsOf("list")) - before, 5)
        self.assertEqual(self.h.agents.probes() - probes, 30)
        self.assertEqual(self.h.state(nodeId), "RUNNING")
        self.assertEqual(self.h.manager.serviceInfo()["cloud_error"], "cloud down")
        self.h.driver.failList = None
        self.h.poll(20)
        self.assertNotIn("cloud_error", self.h.manager.serviceInfo())
        self.h.driver.bootDelay = 0
        self.h.add()
        self.h.poll(2)
        self.assertEqual(self.h.manager.serviceState(), "RUNNING")
        calls = len(self.h.driver.callsOf("list"))
        self.h.poll(3)
        self.assertEqual(len(self.h.driver.callsOf("list")), calls + 3)

    def test_cloud_list_hangs(self) -> None:
        [nodeId] = self.h.add()
        self.h.driver.holdList = True
        self.h.clock.advance(POLL)
        self.h.clock.advance(60)
        self.assertEqual(self.h.manager.cycles, 2)
        self.h.driver.holdList = False
        self.h.poll(40)
        self.assertEqual(self.h.state(nodeId), "RUNNING")

    def test_orphans_terminated_foreign_untouched(self) -> None:
        tag = self.h.manager.serviceTag
        assert tag is not None
        foreign = self.h.driver.addForeign("conpaassql-other999-node-1")
        also = self.h.driver.addForeign("webserver")
        orphan = self.h.driver.addVM(vmName(tag, 77))
        self.h.poll()
        self.assertEqual(self.h.driver.callsOf("terminate"), [orphan])
        self.assertIn(foreign, self.h.driver.vms)
        self.assertIn(also, self.h.driver.vms)
        self.assertNotIn(orphan, self.h.driver.vms)

    def test_shutdown(self) -> None:
        ids = self.h.add(3)
        self.h.poll()
        self.h.driver.failTerminate = CloudFailure("busy")
        self.successResultOf(Deferred.fromCoroutine(self.h.manager.shutdown()))
        self.assertEqual(self.h.manager.serviceState(), "EPILOGUE")
        self.assertEqual([self.h.state(i) for i in ids], ["TERMINATING"] * 3)
        self.failureResultOf(Deferred.fromCoroutine(self.h.manager.addNodes("agent", 1)),
                             WrongState)
        self.h.driver.failTerminate = None
        self.h.poll()
        self.h.clock.advance(1)
        self.assertEqual(self.h.manager.serviceState(), "STOPPED")
        self.assertEqual(self.h.driver.ours(), [])
        self.assertEqual(self.h.stopped, 0)
        self.h.clock.advance(1)
        self.assertEqual(self.h.stopped, 1)

    def test_stop_during_shutdown(self) -> None:
        h = Harness(self).start()
        [nodeId] = h.add()
        h.driver.failTerminate = CloudFailure("busy")
        self.successResultOf(Deferred.fromCoroutine(h.manager.shutdown()))
        h.poll()
        h.stop()
        self.assertEqual(h.stored()[nodeId][0], "TERMINATING")
        h.driver.failTerminate = None
        again = Harness(self, path=h.path, clock=h.clock, fakeDriver=h.driver,
                        agents=h.agents).start()
        self.addCleanup(again.stop)
        self.assertEqual(again.state(nodeId), "TERMINATED")

    def test_service_info(self) -> None:
        self.h.driver.failCreate = CloudFailure("no", transient=False)
        self.h.add()
        self.h.driver.failCreate = None
        self.h.add(2)
        self.h.poll()
        self.assertEqual(
            self.h.manager.serviceInfo(),
            {"state": "RUNNING", "type": "conpaassql", "nodes": {"ERROR": 1, "RUNNING": 2},
             "master": None},
        )


class PersistenceTests(SynchronousTestCase):
    def restart(self, h: Harness) -> Harness:
        h.stop()
        again = Harness(self, path=h.path, clock=h.clock, fakeDriver=h.driver, agents=h.agents)
        return again

    def test_registry_file_private(self) -> None:
        h = Harness(self).start()
        self.addCleanup(h.stop)
        self.assertEqual(stat.S_IMODE(os.stat(h.path).st_mode), 0o600)

    def test_same_nodes_after_restart(self) -> None:
        h = Harness(self).start()
        h.driver.bootDelay = 0
        running = h.add(2)
        h.poll()
        h.driver.bootDelay = 5
        h.agents.default = "starting"
        [booting] = h.add()
        h.poll(3)
        self.assertEqual(h.state(booting), "BOOTING")
        h.remove(running[1])
        tag = h.manager.serviceTag
        creates = len(h.driver.callsOf("create"))
        again = self.restart(h).start()
        self.addCleanup(again.stop)
        self.assertEqual(again.manager.serviceTag, tag)
        self.assertEqual(sorted(again.manager.nodes), [running[0], booting])
        self.assertEqual(again.state(running[0]), "RUNNING")
        self.assertEqual(again.state(booting), "BOOTING")
        self.assertEqual(len(h.driver.callsOf("create")), creates)
        again.agents.default = "up"
        again.poll()
        self.assertEqual(again.state(booting), "RUNNING")
        self.assertEqual(again.info(running[0])["mysqld_port"], 3400)

    def test_unreachable_survives_restart(self) -> None:
        h = Harness(self).start()
        [nodeId] = h.add()
        h.poll()
        h.agents.default = "down"
        h.poll(5)
        again = self.restart(h).start()
        self.addCleanup(again.stop)
        self.assertTrue(again.info(nodeId)["unreachable"])
        again.poll(5)
        self.assertEqual(again.state(nodeId), "RUNNING")
        again.poll(6)
        self.assertEqual(again.state(nodeId), "ERROR")

    def test_interrupted_create_resumed_or_adopted(self) -> None:
        h = Harness(self).start()
        h.driver.holdCreate = True
        lost, made = h.add(2)
        # The manager dies while both creates are in flight; the cloud made
        # the second VM, not the first.
        h.driver.holdCreate = False
        h.driver._held.clear()
        h.manager._creating.clear()
        h.manager._inflight.clear()
        tag = h.manager.serviceTag
        assert tag is not None
        madeVM = h.driver.addVM(vmName(tag, made), state="RUNNING")
        h.agents.default = "starting"
        again = self.restart(h).start()
        self.addCleanup(again.stop)
        self.assertEqual(again.manager.nodes[made].core.record.vm_id, madeVM)
        self.assertEqual(again.state(made), "BOOTING")
        self.assertEqual(len(again.driver.callsOf("create")), 3)
        self.assertIsNotNone(again.driver.byName(vmName(tag, lost)))
        again.agents.default = "up"
        again.poll()
        self.assertEqual((again.state(lost), again.state(made)), ("RUNNING", "RUNNING"))
        self.assertEqual(len(again.driver.ours()), 2)

    def test_unknown_vm_of_our_tag_after_restart(self) -> None:
        h = Harness(self).start()
        [nodeId] = h.add()
        h.poll()
        h.remove(nodeId)
        tag = h.manager.serviceTag
        assert tag is not None
        # A VM of a removed node came back (say a terminate the cloud lost).
        ghost = h.driver.addVM(vmName(tag, nodeId))
        again = self.restart(h).start()
        self.addCleanup(again.stop)
        self.assertNotIn(ghost, again.driver.vms)
        self.assertEqual(again.manager.nodes, {})

    def test_terminating_finishes_after_restart(self) -> None:
        h = Harness(self).start()
        [nodeId] = h.add()
        h.driver.failTerminate = CloudFailure("busy")
        h.remove(nodeId)
        h.driver.failTerminate = None
        again = self.restart(h).start()
        self.addCleanup(again.stop)
        self.assertEqual(again.state(nodeId), "TERMINATED")
        self.assertEqual(again.driver.ours(), [])

    def test_registry_broken_is_error(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "r.sqlite")
        with open(path, "wb") as f:
            f.write(b"this is not a database" * 100)
        h = Harness(self, path=path).start()
        self.addCleanup(h.stop)
        info = h.manager.serviceInfo()
        self.assertEqual(len(self.flushLoggedErrors(sqlite3.DatabaseError)), 1)
        self.assertEqual(info["state"], "ERROR")
        self.assertIn("cannot start", info["error"])
        self.failureResultOf(Deferred.fromCoroutine(h.manager.addNodes("agent", 1)),
                             WrongState)
        self.failureResultOf(Deferred.fromCoroutine(h.manager.shutdown()), WrongState)

    def test_record_copy_written(self) -> None:
        h = Harness(self).start()
        self.addCleanup(h.stop)
        [nodeId] = h.add()
        record = h.manager.nodes[nodeId].core.record
        self.assertEqual(replace(record).token, record.token)
