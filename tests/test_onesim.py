"""
Tests of the OpenNebula simulator (conpaassql.iaas.onesim) and of the XML-RPC
wire format it shares with the driver: byte-for-byte against the recordings
of a real OpenNebula 6.10 server (tests/data/opennebula), the version
profiles, the state machine on a Clock, fault injection, real HTTP, and the
VM booter.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from conpaassql.iaas.onesim import (
    BOOT_FAILURE,
    PROLOG_FAILURE,
    Delays,
    OneSimulator,
    SimNetwork,
    VMBooter,
)
from conpaassql.iaas.xmlrpcwire import (
    I8,
    Fault,
    WireError,
    decodeCall,
    decodeResponse,
    encodeCall,
    encodeFault,
    encodeResponse,
)
from tests.support.onesim import start_simulator

DATA = Path(__file__).parent / "data" / "opennebula"
RUN7 = DATA / "run7_fresh_db_scheduler_with_nic"
ADMIN = "oneadmin:opennebula"


def recorded(name: str) -> bytes:
    return (RUN7 / name).read_bytes()


class WireTests(SynchronousTestCase):
    """The codec writes replies exactly as xmlrpc-c does and reads what it sends."""

    def test_success_reply_bytes(self) -> None:
        self.assertEqual(
            encodeResponse([True, "6.10.0", 0]), recorded("01_one.system.version.response.xml")
        )

    def test_failure_reply_bytes(self) -> None:
        reply = [False, "[one.vm.info] Error getting virtual machine [999999].", 1024, 999999, I8(-1)]
        self.assertEqual(encodeResponse(reply), recorded("04_one.vm.info_nonexistent.response.xml"))

    def test_fault_bytes(self) -> None:
        self.assertEqual(
            encodeFault(-506, "Method 'one.no.such.method' not defined"),
            recorded("05_fault_unknown_method.response.xml"),
        )

    def test_every_recorded_reply_round_trips(self) -> None:
        for path in sorted(RUN7.glob("*.response.xml")):
            body = path.read_bytes()
            try:
                value = decodeResponse(body)
            except Fault as f:
                self.assertEqual(encodeFault(f.code, f.string), body)
                continue
            self.assertEqual(encodeResponse(value), body, path.name)
            self.assertIsInstance(value[0], bool)

    def test_i8_is_read(self) -> None:
        value = decodeResponse(recorded("03_one.system.version_badauth.response.xml"))
        self.assertEqual(value[2:], [256, -1, -1])
        self.assertIsInstance(value[4], I8)

    def test_call_round_trip(self) -> None:
        body = encodeCall("one.vm.allocate", ["u:p", 'NAME = "a<b&c"', False, -1])
        self.assertEqual(decodeCall(body), ("one.vm.allocate", ["u:p", 'NAME = "a<b&c"', False, -1]))
        self.assertEqual(decodeCall(recorded("18_one.vm.action_terminate-hard.request.xml")),
                         ("one.vm.action", [ADMIN, "terminate-hard", 1]))

    def test_entities_are_refused(self) -> None:
        bomb = (
            b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa">'
            b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
            b"<methodResponse><params><param><value><string>&b;</string></value></param></params></methodResponse>"
        )
        self.assertRaises(WireError, decodeResponse, bomb)
        self.assertRaises(WireError, decodeCall, bomb.replace(b"methodResponse", b"methodCall"))

    def test_large_strings(self) -> None:
        # Large strings are unescaped outside the parser (a fast path): the
        # value must be the same as the parser's, whatever the references.
        from conpaassql.iaas.xmlrpcwire import _decodeResponse

        text = "<VM_POOL>" + "<VM><NAME>a&amp;b \"q\" 'x'</NAME></VM>" * 4000 + "</VM_POOL>"
        body = encodeResponse([True, text, 0])
        self.assertEqual(decodeResponse(body), [True, text, 0])
        for variant in (body.replace(b"&amp;amp;", b"&#x26;amp;", 1), body.replace(b"q", b"&quot;", 1),
                        body.replace(b"x'", b"x&apos;", 1)):
            self.assertEqual(decodeResponse(variant), _decodeResponse(variant))
        self.assertRaises(WireError, decodeResponse, body.replace(b"&amp;amp;", b"&bogus;", 1))
        self.assertRaises(WireError, decodeResponse, body.replace(b"</data>", b"", 1))

    def test_garbage(self) -> None:
        self.assertRaises(WireError, decodeResponse, b"<html>502 Bad Gateway</html>")
        self.assertRaises(WireError, decodeResponse, b"not xml")
        self.assertRaises(WireError, decodeCall, b"<methodCall><params/></methodCall>")


def _simForRun7(clock: Clock, **kwargs: Any) -> OneSimulator:
    network = SimNetwork(id=0, name="dummy-net", addresses="192.168.150.0/24", firstHost=10, bridge="br-dummy")
    return OneSimulator(
        clock=clock, network=network, uuids=lambda: "748d6a03-02f9-414e-ac79-4f6b103f464d",
        delays=Delays(pending=5, prolog=0, boot=0, shutdown=0, epilog=0), **kwargs,
    )


class RecordingReplayTests(SynchronousTestCase):
    """
    The simulator, given the calls of the recorded 6.10 session, answers
    byte for byte as the real server did (except what it does not simulate:
    monitoring data and the user's TEMPLATE).
    """

    def test_run7(self) -> None:
        clock = Clock()
        clock.advance(1795551368)
        sim = _simForRun7(clock)
        sim.requestIds = iter([3568] * 3)
        sim.nextId = 1
        identical, differing = [], []
        skip = {"06_one.host.info_monitored"}  # hosts are not simulated
        names = sorted({p.name.rsplit(".", 2)[0] for p in RUN7.glob("*.request.xml")} - skip)
        for name in names:
            method, params = decodeCall(recorded(name + ".request.xml"))
            expected = recorded(name + ".response.xml")
            if method == "one.vm.allocate":
                sim.nextId = 1  # the failed allocate of the recording used id 0... of another run
            try:
                document = str(decodeResponse(expected)[1])
            except Fault:
                document = ""
            times = [int(t) for t in re.findall(r"<[A-Z]*TIME>(\d+)<", document)]
            if times and max(times) > clock.seconds():
                clock.advance(max(times) - clock.seconds())
            try:
                body = encodeResponse(sim.handle(method, params))
            except Fault as f:
                body = encodeFault(f.code, f.string)
            (identical if body == expected else differing).append(name)
        # Monitoring (MONITORING, LAST_POLL) is not simulated; the recorded
        # user has a TOKEN_PASSWORD the simulated one lacks.
        self.assertEqual(
            differing,
            ["02_one.user.info_self", "12_one.vm.info_state3_lcm3", "13_one.vm.info_running",
             "19_one.vm.info_state3_lcm12", "20_one.vm.info_state6_lcm0", "21_one.vm.info_done"],
        )
        self.assertEqual(len(identical), 16)
        self.assertIn("10_one.vmpool.info_pending", identical)
        self.assertIn("14_one.vmpool.info_running", identical)
        self.assertIn("16_one.vmpool.infoextended_running", identical)
        self.assertIn("23_one.vmpool.info_any_state_after_done", identical)

    def test_running_documents_differ_only_in_monitoring(self) -> None:
        clock = Clock()
        clock.advance(1795551368)
        sim = _simForRun7(clock)
        sim.nextId = 1
        method, params = decodeCall(recorded("08_one.vm.allocate.request.xml"))
        sim.handle(method, params)
        clock.advance(5)
        clock.advance(0)
        clock.advance(0)
        ours = sim.handle("one.vm.info", [ADMIN, 1])[1]
        theirs = decodeResponse(recorded("13_one.vm.info_running.response.xml"))[1]
        strip = lambda doc: re.sub(r"<MONITORING>.*?</MONITORING>", "", re.sub(r"<LAST_POLL>\d+", "", doc))
        self.assertEqual(strip(ours), strip(theirs))


def call(sim: OneSimulator, method: str, *params: Any, session: str = ADMIN) -> list[Any]:
    return sim.handle(method, [session, *params])


class ProfileTests(SynchronousTestCase):
    """What differs between 4.14, 5.12 and 6.10."""

    def sim(self, version: str) -> OneSimulator:
        return OneSimulator(version=version, clock=Clock())

    def test_failure_arrays(self) -> None:
        self.assertEqual(
            call(self.sim("4.14"), "one.vm.info", 7),
            [False, "[VirtualMachineInfo] Error getting virtual machine [7].", 1024],
        )
        self.assertEqual(
            call(self.sim("5.12"), "one.vm.info", 7),
            [False, "[one.vm.info] Error getting virtual machine [7].", 1024, 7, -1],
        )
        self.assertEqual(len(call(self.sim("6.10"), "one.vm.info", 7)), 5)

    def test_versions(self) -> None:
        for version, text in (("4.14", "4.14.2"), ("5.12", "5.12.0"), ("6.10", "6.10.0")):
            self.assertEqual(call(self.sim(version), "one.system.version"), [True, text, 0])

    def test_action_names(self) -> None:
        for version, name, ok in (
            ("4.14", "shutdown-hard", True), ("4.14", "terminate-hard", False),
            ("5.12", "terminate-hard", True), ("5.12", "shutdown-hard", True), ("5.12", "delete", True),
            ("6.10", "terminate-hard", True), ("6.10", "shutdown", False), ("6.10", "delete", False),
        ):
            sim = self.sim(version)
            vmId = call(sim, "one.vm.allocate", "CPU=1\nMEMORY=64", True)[1]  # on hold
            reply = call(sim, "one.vm.action", name, vmId)
            self.assertEqual(reply[0], ok, (version, name, reply))
            if not ok:
                self.assertEqual(reply[2], 0x800)
                self.assertIn(f'Action "{name}" is not supported', reply[1])

    def test_infoextended_only_from_5_10(self) -> None:
        with self.assertRaises(Fault) as e:
            call(self.sim("4.14"), "one.vmpool.infoextended", -2, -1, -1, -1)
        self.assertEqual(e.exception.code, -506)
        self.assertTrue(call(self.sim("5.12"), "one.vmpool.infoextended", -2, -1, -1, -1)[0])

    def test_pool_bodies(self) -> None:
        for version, short in (("4.14", False), ("5.12", True), ("6.10", True)):
            sim = self.sim(version)
            call(sim, "one.vm.allocate", 'NAME="x"\nCPU=1\nMEMORY=64\nCONTEXT=[A="1"]', False)
            pool = call(sim, "one.vmpool.info", -2, -1, -1, -1)[1]
            self.assertEqual("<CONTEXT>" not in pool, short, version)
            self.assertEqual("<PERMISSIONS>" not in pool, short, version)

    def test_history_element_names(self) -> None:
        for version, name in (("4.14", "<VMMMAD>"), ("5.12", "<VM_MAD>")):
            clock = Clock()
            sim = OneSimulator(version=version, clock=clock, delays=Delays(pending=1))
            vmId = call(sim, "one.vm.allocate", "CPU=1\nMEMORY=64", False)[1]
            clock.advance(1)
            self.assertIn(name, call(sim, "one.vm.info", vmId)[1])

    def test_filter_limits(self) -> None:
        reply = call(self.sim("4.14"), "one.vmpool.info", -4, -1, -1, -1)
        self.assertEqual(reply[:3], [False, "[VirtualMachinePoolInfo] Incorrect filter_flag", 0x1000])
        self.assertTrue(call(self.sim("6.10"), "one.vmpool.info", -4, -1, -1, -1)[0])
        reply = call(self.sim("6.10"), "one.vmpool.info", -2, -1, -1, 12)
        self.assertEqual(reply[1], "[one.vmpool.info] Incorrect filter_flag, state")


class ProtocolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.sim = OneSimulator(
            clock=self.clock, users=(("oneadmin", "opennebula", 0), ("bob", "pw", 1)),
            delays=Delays(pending=1, prolog=2, boot=3, shutdown=1, epilog=1),
        )

    def test_every_method_authenticates(self) -> None:
        for method, params in (
            ("one.system.version", []), ("one.user.info", [-1]), ("one.vm.allocate", ["CPU=1", False]),
            ("one.vm.info", [0]), ("one.vmpool.info", [-2, -1, -1, -1]),
            ("one.vmpool.infoextended", [-2, -1, -1, -1]), ("one.vm.action", ["terminate", 0]),
            ("one.vm.recover", [0, 3]), ("one.vm.deploy", [0, 0]),
        ):
            reply = self.sim.handle(method, ["oneadmin:wrong", *params])
            self.assertEqual(
                reply, [False, f"[{method}] User couldn't be authenticated, aborting call.", 256, -1, -1]
            )

    def test_faults(self) -> None:
        with self.assertRaises(Fault) as e:
            self.sim.handle("one.no.such.method", [ADMIN])
        self.assertEqual((e.exception.code, e.exception.string), (-506, "Method 'one.no.such.method' not defined"))
        with self.assertRaises(Fault) as e:
            call(self.sim, "one.vmpool.info", -2, -1, -1)
        self.assertEqual((e.exception.code, e.exception.string), (-501, "Not enough parameters"))
        with self.assertRaises(Fault) as e:
            call(self.sim, "one.vm.info", "7")
        self.assertEqual(e.exception.code, -501)

    def test_allocate_checks_and_uses_ids(self) -> None:
        self.assertEqual(
            call(self.sim, "one.vm.allocate", 'NAME="bad"\nCPU=0.1\n', False),
            [False, "[one.vm.allocate] MEMORY attribute must be a positive integer value.", 8192, -1, -1],
        )
        self.assertEqual(call(self.sim, "one.vm.allocate", "CPU=x\nMEMORY=1", False)[1],
                         "[one.vm.allocate] CPU attribute must be a positive float or integer value.")
        self.assertEqual(call(self.sim, "one.vm.allocate", "CPU=1\nMEMORY=1", False), [True, 2, 0])
        self.assertIn("<NAME>one-2</NAME>", call(self.sim, "one.vm.info", 2)[1])

    def test_life_cycle_and_terminate_rules(self) -> None:
        vmId = call(self.sim, "one.vm.allocate", 'NAME="a"\nCPU=1\nMEMORY=64\nNIC=[NETWORK_ID=0]', False)[1]

        def state() -> tuple[int, int]:
            vm = self.sim.vms[vmId]
            return vm.state, vm.lcm

        self.assertEqual(state(), (1, 0))
        self.clock.advance(1)
        self.assertEqual(state(), (3, 1))  # PROLOG
        refused = call(self.sim, "one.vm.action", "terminate-hard", vmId)
        self.assertEqual(refused[:3], [
            False,
            f'[one.vm.action] Error performing action "terminate-hard": Could not terminate VM {vmId}, wrong state PROLOG.',
            0x800,
        ])
        self.clock.advance(2)
        self.assertEqual(state(), (3, 2))  # BOOT
        self.assertIn("wrong state BOOT", call(self.sim, "one.vm.action", "terminate", vmId)[1])
        self.clock.advance(3)
        self.assertEqual(state(), (3, 3))  # RUNNING
        self.assertTrue(self.sim.vms[vmId].deployId)
        self.assertEqual(call(self.sim, "one.vm.action", "terminate-hard", vmId), [True, vmId, 0])
        self.assertEqual(state(), (3, 12))  # SHUTDOWN
        self.clock.advance(1)
        self.assertEqual(state(), (3, 11))  # EPILOG
        self.clock.advance(1)
        self.assertEqual(state(), (6, 0))  # DONE
        self.assertIn("<ACTION>28</ACTION>", call(self.sim, "one.vm.info", vmId)[1])
        self.assertEqual(call(self.sim, "one.vmpool.info", -2, -1, -1, -1)[1], "<VM_POOL></VM_POOL>")
        self.assertNotEqual(self.sim.network.leases, None)
        self.assertEqual(self.sim.network.leases, set())

    def test_recover_delete_in_prolog(self) -> None:
        vmId = call(self.sim, "one.vm.allocate", "CPU=1\nMEMORY=64", False)[1]
        self.clock.advance(1)
        self.assertEqual(call(self.sim, "one.vm.recover", vmId, 3), [True, vmId, 0])
        self.assertEqual(self.sim.vms[vmId].state, 6)
        self.assertEqual(call(self.sim, "one.vm.recover", vmId, 9)[1], "[one.vm.recover] Wrong recovery operation code")

    def test_recover_needs_admin(self) -> None:
        vmId = call(self.sim, "one.vm.allocate", "CPU=1\nMEMORY=64", False, session="bob:pw")[1]
        reply = call(self.sim, "one.vm.recover", vmId, 3, session="bob:pw")
        self.assertEqual(reply[1], f"[one.vm.recover] User [1] : Not authorized to perform ADMIN VM [{vmId}].")
        self.assertEqual(reply[2], 0x200)

    def test_terminate_pending_is_immediate(self) -> None:
        vmId = call(self.sim, "one.vm.allocate", "CPU=1\nMEMORY=64", False)[1]
        call(self.sim, "one.vm.action", "terminate-hard", vmId)
        self.assertEqual(self.sim.vms[vmId].state, 6)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_boot_failure_and_lost_vm(self) -> None:
        self.sim.failNextBoots(1)
        self.sim.failNextBoots(1, PROLOG_FAILURE)
        a = call(self.sim, "one.vm.allocate", 'NAME="a"\nCPU=1\nMEMORY=64', False)[1]
        self.clock.pump([1, 2, 3])
        self.assertEqual((self.sim.vms[a].state, self.sim.vms[a].lcm), (3, BOOT_FAILURE))
        pool = call(self.sim, "one.vmpool.info", -2, -1, -1, -1)[1]
        self.assertIn("<LCM_STATE>36</LCM_STATE>", pool)
        self.assertIn("<ERROR><![CDATA[", pool)
        b = call(self.sim, "one.vm.allocate", 'NAME="b"\nCPU=1\nMEMORY=64', False)[1]
        self.clock.pump([1, 2])
        self.assertEqual(self.sim.vms[b].lcm, PROLOG_FAILURE)
        self.assertTrue(call(self.sim, "one.vm.action", "terminate-hard", b)[0])  # *_FAILURE: deleted
        self.sim.loseVM(a)
        self.assertEqual(call(self.sim, "one.vm.info", a)[2], 0x400)

    def test_others_vms(self) -> None:
        ids = self.sim.addForeignVMs(3, user="bob")
        mine = call(self.sim, "one.vmpool.info", -3, -1, -1, -1)[1]
        self.assertEqual(mine, "<VM_POOL></VM_POOL>")
        every = call(self.sim, "one.vmpool.info", -2, -1, -1, -1)[1]
        self.assertEqual(every.count("<VM>"), 3)
        self.assertIn("<UNAME>bob</UNAME>", every)
        own = call(self.sim, "one.vm.allocate", "CPU=1\nMEMORY=64", False)[1]
        reply = call(self.sim, "one.vm.info", own, session="bob:pw")
        self.assertEqual(reply[1], f"[one.vm.info] User [1] : Not authorized to perform USE VM [{own}].")
        self.assertEqual(call(self.sim, "one.vmpool.info", -2, -1, -1, -1, session="bob:pw")[1].count("<VM>"), 3)
        self.assertTrue(call(self.sim, "one.vm.info", ids[0], session="bob:pw")[0])

    def test_injected_errors(self) -> None:
        self.sim.failNext("one.vmpool.info", 0x8000, "The resource virtual machine is locked.")
        self.assertEqual(call(self.sim, "one.vmpool.info", -2, -1, -1, -1)[:3],
                         [False, "[one.vmpool.info] The resource virtual machine is locked.", 0x8000])
        self.assertTrue(call(self.sim, "one.vmpool.info", -2, -1, -1, -1)[0])
        self.sim.faultNext("one.system.version", -500, "boom")
        self.assertRaises(Fault, call, self.sim, "one.system.version")

    def test_context_network_variables(self) -> None:
        vmId = call(self.sim, "one.vm.allocate",
                    'CPU=1\nMEMORY=64\nNIC=[NETWORK_ID="0"]\nCONTEXT=[NETWORK="YES",X="y"]', False)[1]
        ctx = self.sim.vms[vmId].context
        self.assertEqual(ctx["ETH0_IP"], self.sim.vms[vmId].ip)
        self.assertTrue(ctx["ETH0_IP"].startswith("127.42."))
        self.assertEqual(ctx["X"], "y")


class HTTPTests(TestCase):
    """The simulator over real HTTP."""

    async def post(self, url: str, body: bytes) -> tuple[int, bytes]:
        response = await treq.post(url, data=body, persistent=False)
        return response.code, await response.content()

    async def test_http(self) -> None:
        _sim, svc = await start_simulator(self)
        code, body = await self.post(svc.url, encodeCall("one.system.version", ["conpaassql:s3cret-pass"]))
        self.assertEqual((code, decodeResponse(body)), (200, [True, "6.10.0", 0]))
        code, body = await self.post(svc.url, b"<methodCall><oops")
        self.assertRaises(Fault, decodeResponse, body)
        code, _ = await self.post(svc.url.replace("/RPC2", "/other"), b"")
        self.assertEqual(code, 404)
        response = await treq.get(svc.url, persistent=False)
        await response.content()
        self.assertEqual(response.code, 405)

    async def test_slow_reply_and_refused(self) -> None:
        sim, svc = await start_simulator(self)
        sim.replyDelay = 0.3
        start = reactor.seconds()
        code, _body = await self.post(svc.url, encodeCall("one.system.version", ["conpaassql:s3cret-pass"]))
        self.assertGreaterEqual(reactor.seconds() - start, 0.25)
        sim.replyDelay = 0
        await svc.stopListening()
        with self.assertRaises(ConnectionRefusedError):
            await self.post(svc.url, b"")
        await svc.listen()
        code, _ = await self.post(svc.url, encodeCall("one.system.version", ["conpaassql:s3cret-pass"]))
        self.assertEqual(code, 200)


class BooterTests(TestCase):
    """VMBooter runs a VM's start script as one-context does, and halts it."""

    async def test_boot_and_halt(self) -> None:
        clock = Clock()
        booter = VMBooter(self.mktemp(), reactor=reactor, grace=5)
        sim = OneSimulator(clock=clock, booter=booter, delays=Delays(pending=0, prolog=0, boot=0))
        script = (
            "#!/bin/sh\n"
            'echo "$PWD|$MY_VAR|$ETH0_IP|$CONPAASSQL_ROOT" > "$CONPAASSQL_ROOT/out"\n'
            "cp context.sh \"$CONPAASSQL_ROOT/context.copy\"\n"
            "sleep 600 &\n"
            "wait\n"
        )
        import base64

        encoded = base64.b64encode(script.encode()).decode()
        vmId = call(sim, "one.vm.allocate",
                    f'CPU=1\nMEMORY=64\nNIC=[NETWORK_ID=0]\nCONTEXT=[NETWORK="YES",MY_VAR="it\'s",START_SCRIPT_BASE64="{encoded}"]',
                    False)[1]
        for _ in range(3):
            clock.advance(0)
        self.assertIn(vmId, booter.running)
        root = os.path.join(booter.vmDir(vmId), "root")
        out = os.path.join(root, "out")
        for _ in range(100):
            if os.path.exists(out) and os.path.getsize(out):
                break
            await deferLater(reactor, 0.05)
        with open(out) as f:
            pwd, myVar, ip, envRoot = f.read().strip().split("|")
        self.assertEqual((pwd, myVar, ip, envRoot),
                         (os.path.join(booter.vmDir(vmId), "context"), "it's", sim.vms[vmId].ip, root))
        with open(os.path.join(root, "context.copy")) as f:
            context = f.read()
        self.assertTrue(context.startswith("# Context variables generated by OpenNebula\n"))
        self.assertIn("MY_VAR='it'\\''s'\n", context)
        pid = booter.running[vmId].pid
        assert pid is not None
        call(sim, "one.vm.action", "terminate-hard", vmId)  # halts the VM
        done: Deferred[None] = booter.halt(vmId)
        await done
        self.assertEqual(booter.running, {})
        for _ in range(100):  # the group's last member (sleep) is killed, then reaped by init
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                break
            await deferLater(reactor, 0.05)
        self.assertRaises(ProcessLookupError, os.killpg, pid, 0)
