"""
An OpenNebula simulator: a protocol-faithful XML-RPC server for tests and demos.

It answers, over real HTTP at C{/RPC2}, the calls a provisioning client makes
(C{one.system.version}, C{one.user.info}, C{one.vm.allocate}, C{one.vm.info},
C{one.vmpool.info}, C{one.vmpool.infoextended}, C{one.vm.action},
C{one.vm.recover}, C{one.vm.deploy}) the way a real C{oned} of the chosen
version (4.14, 5.12 or 6.10; see L{PROFILES}) does: the same reply arrays
(3, 4 or 5 elements on failure), error codes and messages, XML-RPC faults
(-506 unknown method, -501 missing or mistyped parameter), authentication of
every call, and VM documents with the real element names, order and CDATA
(the 6.10 ones match the recordings of a real 6.10 server byte for byte).

VMs move PENDING -> ACTIVE/PROLOG -> BOOT -> RUNNING after configurable
delays (L{Delays}) on an injectable clock, and terminate is refused in
PROLOG/BOOT as on the real server.  With a L{VMBooter}, a VM reaching RUNNING
is booted for real: its CONTEXT's C{START_SCRIPT_BASE64} runs (as one-context
runs it) in a scratch directory, with the context variables in its
environment and in a C{context.sh}, and the VM's IP is a loopback address of
its own (127.x.y.z), so an agent it starts listens there.

Fault injection: L{OneSimulator.failNext} (error replies),
L{OneSimulator.faultNext} (faults), L{OneSimulator.replyDelay} (slow
replies), L{OneSimService.stopListening} (refused connections),
L{OneSimulator.failNextBoots} / L{OneSimulator.failVM} (C{*_FAILURE}
states), L{OneSimulator.loseVM} (a VM that vanishes), and
L{OneSimulator.addForeignVMs} (thousands of VMs of other users).

Not simulated: ACLs beyond "owner, or member of group 0", quotas, images and
networks beyond one of each, monitoring (LAST_POLL stays 0), and the actions
other than the terminate family, hold and release.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import signal
import sys
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.application import service
from twisted.internet import defer, endpoints, protocol
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from twisted.web import resource, server

from conpaassql.iaas.onetemplate import TemplateSyntaxError, parseTemplate
from conpaassql.iaas.xmlrpcwire import I8, Fault, WireError, decodeCall, encodeFault, encodeResponse

__all__ = [
    "PROFILES",
    "Booter",
    "Delays",
    "OneSimResource",
    "OneSimService",
    "OneSimulator",
    "Profile",
    "SimNetwork",
    "SimUser",
    "SimVM",
    "VMBooter",
]

# Error codes (include/Request.h).
AUTHENTICATION, AUTHORIZATION, NO_EXISTS, ACTION = 0x100, 0x200, 0x400, 0x800
XML_RPC_API, INTERNAL, ALLOCATE, LOCKED = 0x1000, 0x2000, 0x4000, 0x8000

# STATE and LCM_STATE values used here.
INIT, PENDING, HOLD, ACTIVE, STOPPED, SUSPENDED, DONE = 0, 1, 2, 3, 4, 5, 6
POWEROFF, UNDEPLOYED, CLONING, CLONING_FAILURE = 8, 9, 10, 11
LCM_INIT, PROLOG, BOOT, RUNNING, EPILOG, SHUTDOWN, UNKNOWN = 0, 1, 2, 3, 11, 12, 16
BOOT_FAILURE, PROLOG_FAILURE = 36, 39
_FAILURE_LCM = {14, *range(36, 43), 44, 46, 47, 48, 49, 50, 61}
_STATE_NAMES = [
    "INIT", "PENDING", "HOLD", "ACTIVE", "STOPPED", "SUSPENDED", "DONE", "FAILED",
    "POWEROFF", "UNDEPLOYED", "CLONING", "CLONING_FAILURE",
]
_LCM_NAMES = {
    0: "LCM_INIT", 1: "PROLOG", 2: "BOOT", 3: "RUNNING", 11: "EPILOG", 12: "SHUTDOWN",
    16: "UNKNOWN", 36: "BOOT_FAILURE", 39: "PROLOG_FAILURE", 40: "EPILOG_FAILURE",
}

_ACTIONS_4 = {
    "shutdown", "shutdown-hard", "hold", "release", "stop", "suspend", "resume", "delete",
    "delete-recreate", "reboot", "reboot-hard", "resched", "unresched", "poweroff",
    "poweroff-hard", "undeploy", "undeploy-hard",
}
_ALIASES_4 = {
    "cancel": "shutdown-hard", "finalize": "delete", "resubmit": "delete-recreate",
    "reset": "reboot-hard",
}
_ACTIONS_5 = {
    "terminate", "terminate-hard", "undeploy", "undeploy-hard", "poweroff", "poweroff-hard",
    "reboot", "reboot-hard", "hold", "release", "stop", "suspend", "resume", "resched",
    "unresched",
}
_ALIASES_5 = {"shutdown": "terminate", "shutdown-hard": "terminate-hard", "delete": "terminate-hard"}

#: The C++ class names that prefix 4.x messages.
_CLASS_NAMES = {
    "one.system.version": "SystemVersion",
    "one.user.info": "UserInfo",
    "one.vm.allocate": "VirtualMachineAllocate",
    "one.vm.info": "VirtualMachineInfo",
    "one.vmpool.info": "VirtualMachinePoolInfo",
    "one.vmpool.infoextended": "VirtualMachinePoolInfo",
    "one.vm.action": "VirtualMachineAction",
    "one.vm.recover": "VirtualMachineRecover",
    "one.vm.deploy": "VirtualMachineDeploy",
}


@dataclass(frozen=True)
class Profile:
    """What differs between server versions (reference section 2.10)."""

    version: str
    failureLength: int
    classPrefix: bool
    shortPool: bool
    infoExtended: bool
    actions: frozenset[str]
    aliases: dict[str, str]
    recoverOps: frozenset[int]
    minFilter: int
    maxStateFilter: int
    schedActions: bool
    backups: bool
    uuid: bool
    history4: bool

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])


PROFILES: dict[str, Profile] = {
    "4.14": Profile(
        version="4.14.2", failureLength=3, classPrefix=True, shortPool=False, infoExtended=False,
        actions=frozenset(_ACTIONS_4), aliases=_ALIASES_4, recoverOps=frozenset({0, 1, 2}),
        minFilter=-3, maxStateFilter=9, schedActions=False, backups=False, uuid=False,
        history4=True,
    ),
    "5.12": Profile(
        version="5.12.0", failureLength=5, classPrefix=False, shortPool=True, infoExtended=True,
        actions=frozenset(_ACTIONS_5), aliases=_ALIASES_5,
        recoverOps=frozenset({0, 1, 2, 3, 4, 5}), minFilter=-4, maxStateFilter=11,
        schedActions=False, backups=False, uuid=False, history4=False,
    ),
    "6.10": Profile(
        version="6.10.0", failureLength=5, classPrefix=False, shortPool=True, infoExtended=True,
        actions=frozenset(_ACTIONS_5), aliases={}, recoverOps=frozenset({0, 1, 2, 3, 4, 5}),
        minFilter=-4, maxStateFilter=11, schedActions=True, backups=True, uuid=True,
        history4=False,
    ),
}


@dataclass(frozen=True)
class Delays:
    """Seconds spent in each state before the next (on the simulator's clock)."""

    pending: float = 1.0
    prolog: float = 1.0
    boot: float = 1.0
    shutdown: float = 1.0
    epilog: float = 0.5


@dataclass(frozen=True)
class SimUser:
    id: int
    name: str
    password: str = field(repr=False)
    gid: int = 1
    gname: str = "users"

    @property
    def admin(self) -> bool:
        return self.gid == 0


@dataclass
class SimNetwork:
    """
    One virtual network; leases are taken in order from C{first}.

    @ivar addresses: the CIDR the leases come from (loopback by default, so a
        booted VM can listen on its own address).
    """

    id: int = 0
    name: str = "conpaassql-sim"
    addresses: str = "127.42.0.0/16"
    firstHost: int = 2
    bridge: str = "br-sim"
    leases: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.net = ipaddress.ip_network(self.addresses)
        self._next = self.firstHost

    @property
    def gateway(self) -> str:
        return str(self.net.network_address + 1)

    def lease(self) -> str | None:
        size = self.net.num_addresses
        for _ in range(size):
            offset = self._next
            self._next = self._next + 1 if self._next + 1 < size - 1 else self.firstHost
            ip = str(self.net.network_address + offset)
            if ip not in self.leases:
                self.leases.add(ip)
                return ip
        return None

    def release(self, ip: str) -> None:
        self.leases.discard(ip)


def _mac(ip: str) -> str:
    return "02:00:" + ":".join(f"{int(o):02x}" for o in ip.split("."))


@dataclass
class SimVM:
    """One VM of the simulator's database."""

    id: int
    user: SimUser
    name: str
    stime: int
    template: dict[str, Any]
    userTemplate: dict[str, str]
    state: int = PENDING
    lcm: int = LCM_INIT
    etime: int = 0
    deployId: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)
    timer: IDelayedCall | None = None
    ips: list[tuple[SimNetwork, str]] = field(default_factory=list)

    @property
    def context(self) -> dict[str, str]:
        ctx = self.template.get("CONTEXT")
        return dict(ctx) if isinstance(ctx, dict) else {}

    @property
    def ip(self) -> str | None:
        return self.ips[0][1] if self.ips else None

    def stateName(self) -> str:
        if self.state == ACTIVE:
            return _LCM_NAMES.get(self.lcm, f"LCM_{self.lcm}")
        return _STATE_NAMES[self.state] if self.state < len(_STATE_NAMES) else str(self.state)


class Booter(Protocol):
    """What boots simulated VMs (L{VMBooter}, or a test's fake)."""

    def boot(self, vm: SimVM) -> None:
        "VM C{vm} reached RUNNING: start what it runs."

    def halt(self, vmId: int) -> defer.Deferred[None]:
        "VM C{vmId} ended: stop what it runs; fires when that is gone."

    async def stopAll(self) -> None:
        "Halt every booted VM (on the simulator's stop)."


class _RequestError(Exception):
    def __init__(self, code: int, message: str, objectId: int = -1) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.objectId = objectId


def _cdata(value: str) -> str:
    return f"<![CDATA[{value}]]>"


def _esc(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _templateXML(name: str, values: dict[str, Any], out: list[str]) -> None:
    out.append(f"<{name}>")
    for key in sorted(values):
        value = values[key]
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, dict):
                out.append(f"<{key}>")
                for sub in sorted(item):
                    out.append(f"<{sub}>{_cdata(item[sub])}</{sub}>")
                out.append(f"</{key}>")
            else:
                out.append(f"<{key}>{_cdata(item)}</{key}>")
    out.append(f"</{name}>")


_WELL_KNOWN = {
    "DISK", "NIC", "NIC_ALIAS", "CPU", "VCPU", "MEMORY", "CONTEXT", "OS", "GRAPHICS", "VIDEO",
    "INPUT", "FEATURES", "RAW", "TOPOLOGY", "NUMA_NODE", "PCI", "SPICE_OPTIONS",
}
_SHORT_USER_KEYS = (
    "LABELS", "ERROR", "SCHED_MESSAGE", "SCHED_RANK", "SCHED_DS_RANK", "SCHED_REQUIREMENTS",
    "SCHED_DS_REQUIREMENTS", "USER_PRIORITY", "PUBLIC_CLOUD", "SCHED_ACTION",
)
_SHORT_DISK_KEYS = (
    "DISK_ID", "DATASTORE", "DATASTORE_ID", "IMAGE", "IMAGE_ID", "SIZE", "TYPE", "CLONE",
    "CLONE_TARGET", "LN_TARGET", "DISK_SNAPSHOT_TOTAL_SIZE",
)
_SHORT_NIC_KEYS = (
    "IP", "EXTERNAL_IP", "IP6", "IP6_ULA", "IP6_LINK", "IP6_GLOBAL", "NETWORK_MODE",
    "SCHED_REQUIREMENTS", "SCHED_RANK", "MAC", "NETWORK", "NETWORK_ID", "NIC_ID",
    "SECURITY_GROUPS",
)
_ETH_KEYS = (
    "DNS", "EXTERNAL", "GATEWAY", "IP", "IP6", "IP6_GATEWAY", "IP6_METHOD", "IP6_METRIC",
    "IP6_PREFIX_LENGTH", "IP6_ULA", "MAC", "MASK", "METHOD", "METRIC", "MTU", "NETWORK",
    "SEARCH_DOMAIN", "VLAN_ID", "VROUTER_IP", "VROUTER_IP6", "VROUTER_MANAGEMENT",
)
_HISTORY_KEYS = (
    "OID", "SEQ", "HOSTNAME", "HID", "CID", "STIME", "ETIME", "VM_MAD", "TM_MAD", "DS_ID",
    "PSTIME", "PETIME", "RSTIME", "RETIME", "ESTIME", "EETIME", "ACTION", "UID", "GID",
    "REQUEST_ID",
)
_HISTORY_KEYS_4 = (
    "OID", "SEQ", "HOSTNAME", "HID", "CID", "STIME", "ETIME", "VMMMAD", "VNMMAD", "TMMAD",
    "DS_LOCATION", "DS_ID", "PSTIME", "PETIME", "RSTIME", "RETIME", "ESTIME", "EETIME",
    "REASON", "ACTION",
)
_HISTORY_CDATA = {"VM_MAD", "TM_MAD", "VMMMAD", "VNMMAD", "TMMAD", "DS_LOCATION"}
_HOST = "dummy-host"


class OneSimulator:
    """
    The simulated OpenNebula front-end: its database and the XML-RPC methods.

    @param version: a key of L{PROFILES}.
    @param clock: the clock states move on (a L{Clock} in unit tests).
    @param users: C{(name, password, gid)} triples; uid = position.  Users of
        group 0 are administrators (they see every VM and may recover).
    @param autoDeploy: act as the scheduler (PENDING VMs are deployed after
        C{delays.pending}); without it a VM waits for C{one.vm.deploy}.
    @param booter: boots VMs that reach RUNNING (L{VMBooter}), or L{None}.
        A VM that ends (terminated, failed, lost) is halted by it.
    @param uuids: makes OS/UUID values (6.x).

    @ivar calls: calls received, by method name (fault-injected ones included).
    @ivar callLog: the last calls received: C{(time on the clock, method,
        parameters after the session)}, oldest first.
    """

    log = Logger()

    def __init__(
        self,
        *,
        version: str = "6.10",
        clock: IReactorTime,
        users: Iterable[tuple[str, str, int]] = (("oneadmin", "opennebula", 0),),
        delays: Delays = Delays(),
        network: SimNetwork | None = None,
        autoDeploy: bool = True,
        booter: Booter | None = None,
        uuids: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        self.profile = PROFILES[version]
        self.clock = clock
        self.users: dict[str, SimUser] = {}
        for uid, (name, password, gid) in enumerate(users):
            self.users[name] = SimUser(uid, name, password, gid, "oneadmin" if gid == 0 else "users")
        self.delays = delays
        self.network = network or SimNetwork()
        self.foreignNetwork = SimNetwork(id=1, name="public", addresses="10.0.0.0/8", bridge="br0")
        self.autoDeploy = autoDeploy
        self.booter = booter
        self.uuids = uuids
        self.vms: dict[int, SimVM] = {}
        self.nextId = 0
        self.requestIds = iter(range(1000, 10**9))
        self.calls: Counter[str] = Counter()
        self.callLog: deque[tuple[float, str, tuple[Any, ...]]] = deque(maxlen=10000)
        #: Seconds every reply waits before it is sent (slow server).
        self.replyDelay = 0.0
        self._failures: dict[str, list[tuple[str, Any, Any]]] = {}
        self._bootFailures: list[int] = []

    # -- fault injection --------------------------------------------------

    def failNext(self, method: str, code: int, message: str | None = None, times: int = 1) -> None:
        """The next C{times} calls of C{method} fail with error C{code}."""
        self._failures.setdefault(method, []).extend([("error", code, message)] * times)

    def faultNext(self, method: str, code: int, string: str, times: int = 1) -> None:
        """The next C{times} calls of C{method} get an XML-RPC fault."""
        self._failures.setdefault(method, []).extend([("fault", code, string)] * times)

    def failNextBoots(self, count: int = 1, lcm: int = BOOT_FAILURE) -> None:
        """The next C{count} VMs to leave PROLOG (PROLOG_FAILURE) or BOOT fail there."""
        self._bootFailures.extend([lcm] * count)

    def failVM(self, vmId: int, lcm: int = BOOT_FAILURE, message: str = "Error deploying virtual machine") -> None:
        """Put VM C{vmId} in the C{lcm} failure state now (it stops if booted)."""
        vm = self.vms[vmId]
        self._cancel(vm)
        self._stopBoot(vm)
        vm.state, vm.lcm = ACTIVE, lcm
        vm.userTemplate["ERROR"] = f"{self._ctime()}: {message}"
        if vm.history:
            vm.history[-1]["RETIME"] = self._now()

    def loseVM(self, vmId: int) -> None:
        """VM C{vmId} vanishes from the database (as after C{onedb purge-done})."""
        vm = self.vms.pop(vmId)
        self._cancel(vm)
        self._stopBoot(vm)
        self._releaseLeases(vm)

    def addForeignVMs(self, count: int, user: str = "alice", namePrefix: str = "web-") -> list[int]:
        """
        Add C{count} RUNNING VMs owned by C{user} (created if unknown, in
        group 1), named C{namePrefix}N; they never change state.
        """
        if user not in self.users:
            self.users[user] = SimUser(len(self.users), user, os.urandom(8).hex(), 1, "users")
        owner = self.users[user]
        ids = []
        for n in range(count):
            template = f'NAME = "{namePrefix}{n}"\nCPU = 1\nMEMORY = 512\nNIC = [ NETWORK_ID = 1 ]\n'
            vm = self._allocate(owner, template, hold=False, schedule=False)
            self._deploy(vm, schedule=False)
            vm.state, vm.lcm = ACTIVE, RUNNING
            vm.deployId = f"{_HOST}:{vm.name}:dummy"
            ids.append(vm.id)
        return ids

    # -- time ---------------------------------------------------------------

    def _now(self) -> int:
        return int(self.clock.seconds())

    def _ctime(self) -> str:
        return time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(self._now()))

    def _later(self, vm: SimVM, delay: float, f: Callable[[SimVM], None]) -> None:
        self._cancel(vm)
        vm.timer = self.clock.callLater(delay, self._fire, vm, f)

    def _fire(self, vm: SimVM, f: Callable[[SimVM], None]) -> None:
        vm.timer = None
        if self.vms.get(vm.id) is vm:
            f(vm)

    def _cancel(self, vm: SimVM) -> None:
        if vm.timer is not None and vm.timer.active():
            vm.timer.cancel()
        vm.timer = None

    def stop(self) -> None:
        """Cancel every pending state change (on service stop)."""
        for vm in self.vms.values():
            self._cancel(vm)

    # -- the request entry point -----------------------------------------------

    def handle(self, method: str, params: list[Any]) -> list[Any]:
        """
        Run one XML-RPC call; return the reply array.

        @raise Fault: for an unknown method or bad parameters.
        """
        self.calls[method] += 1
        self.callLog.append((self.clock.seconds(), method, tuple(params[1:])))
        queue = self._failures.get(method)
        if queue:
            kind, code, message = queue.pop(0)
            if kind == "fault":
                raise Fault(code, message)
            return self._failure(method, code, message or "Injected failure.", -1)
        handler = _METHODS.get(method)
        if handler is None or (method == "one.vmpool.infoextended" and not self.profile.infoExtended):
            raise Fault(-506, f"Method '{method}' not defined")
        signature, function = handler
        args = _checkParams(params, signature)
        try:
            user = self._authenticate(args[0])
        except _RequestError as e:
            return self._failure(method, e.code, e.message, e.objectId)
        try:
            return [True, function(self, user, *args[1:]), 0]
        except _RequestError as e:
            return self._failure(method, e.code, e.message, e.objectId)

    def _failure(self, method: str, code: int, message: str, objectId: int) -> list[Any]:
        prefix = _CLASS_NAMES.get(method, method) if self.profile.classPrefix else method
        reply: list[Any] = [False, f"[{prefix}] {message}", code]
        if self.profile.failureLength >= 4:
            reply.append(objectId)
        if self.profile.failureLength >= 5:
            reply.append(I8(-1))
        return reply

    def _authenticate(self, session: str) -> SimUser:
        name, _, password = session.partition(":")
        user = self.users.get(name)
        if user is None or password != user.password:
            raise _RequestError(AUTHENTICATION, "User couldn't be authenticated, aborting call.")
        return user

    def _getVM(self, vmId: int, user: SimUser, operation: str) -> SimVM:
        vm = self.vms.get(vmId)
        if vm is None:
            raise _RequestError(NO_EXISTS, f"Error getting virtual machine [{vmId}].", vmId)
        allowed = user.admin or vm.user.id == user.id
        if operation == "ADMIN":
            allowed = user.admin
        if not allowed:
            raise _RequestError(
                AUTHORIZATION, f"User [{user.id}] : Not authorized to perform {operation} VM [{vmId}].", vmId
            )
        return vm

    # -- methods ------------------------------------------------------------------

    def systemVersion(self, user: SimUser) -> str:
        return self.profile.version

    def userInfo(self, user: SimUser, uid: int, decrypt: bool = False) -> str:
        target = user if uid == -1 else next((u for u in self.users.values() if u.id == uid), None)
        if target is None:
            raise _RequestError(NO_EXISTS, f"Error getting user [{uid}].", uid)
        if target is not user and not user.admin:
            raise _RequestError(AUTHORIZATION, f"User [{user.id}] : Not authorized to perform USE USER [{uid}].", uid)
        import hashlib

        digest = hashlib.sha256(target.password.encode()).hexdigest()
        return (
            f"<USER><ID>{target.id}</ID><GID>{target.gid}</GID><GROUPS><ID>{target.gid}</ID></GROUPS>"
            f"<GNAME>{target.gname}</GNAME><NAME>{_esc(target.name)}</NAME>"
            f"<PASSWORD>{_cdata(digest)}</PASSWORD><AUTH_DRIVER>{_cdata('core')}</AUTH_DRIVER>"
            "<ENABLED>1</ENABLED><TEMPLATE></TEMPLATE><DATASTORE_QUOTA></DATASTORE_QUOTA>"
            "<NETWORK_QUOTA></NETWORK_QUOTA><VM_QUOTA></VM_QUOTA><IMAGE_QUOTA></IMAGE_QUOTA>"
            "<DEFAULT_USER_QUOTAS><DATASTORE_QUOTA></DATASTORE_QUOTA><NETWORK_QUOTA></NETWORK_QUOTA>"
            "<VM_QUOTA></VM_QUOTA><IMAGE_QUOTA></IMAGE_QUOTA></DEFAULT_USER_QUOTAS></USER>"
        )

    def vmAllocate(self, user: SimUser, template: str, hold: bool = False) -> int:
        return self._allocate(user, template, hold=hold, schedule=True).id

    def _allocate(self, user: SimUser, text: str, *, hold: bool, schedule: bool) -> SimVM:
        vmId = self.nextId
        self.nextId += 1  # a failed allocate uses up its id too
        try:
            attrs = parseTemplate(text)
        except TemplateSyntaxError as e:
            raise _RequestError(INTERNAL, f"Error parsing template: {e}") from None
        sysT: dict[str, Any] = {}
        userT: dict[str, str] = {}
        name = f"one-{vmId}"
        for key, value in attrs:
            if key == "NAME" and isinstance(value, str):
                name = value
            elif key in ("DISK", "NIC", "NIC_ALIAS") and isinstance(value, dict):
                sysT.setdefault(key, []).append(dict(value))
            elif key in _WELL_KNOWN:
                sysT[key] = value
            elif isinstance(value, str):
                userT[key] = value
        cpu, memory, vcpu = sysT.get("CPU"), sysT.get("MEMORY"), sysT.get("VCPU")
        try:
            if not isinstance(memory, str) or int(memory) <= 0:
                raise ValueError
        except ValueError:
            raise _RequestError(INTERNAL, "MEMORY attribute must be a positive integer value.") from None
        try:
            if not isinstance(cpu, str) or float(cpu) <= 0:
                raise ValueError
        except ValueError:
            raise _RequestError(INTERNAL, "CPU attribute must be a positive float or integer value.") from None
        if vcpu is not None:
            try:
                if not isinstance(vcpu, str) or int(vcpu) <= 0:
                    raise ValueError
            except ValueError:
                raise _RequestError(INTERNAL, "VCPU attribute must be a positive integer value.") from None

        vm = SimVM(id=vmId, user=user, name=name, stime=self._now(), template=sysT, userTemplate=userT)
        for i, disk in enumerate(sysT.get("DISK", [])):
            disk.update(
                {"CLONE": "YES", "DATASTORE": "default", "DATASTORE_ID": "1", "DISK_ID": str(i),
                 "IMAGE": f"image-{disk.get('IMAGE_ID', '0')}", "SIZE": "2048",
                 "TARGET": f"vd{chr(ord('a') + i)}", "TM_MAD": "dummy", "TYPE": "FILE"}
            )
        nics = sysT.get("NIC", [])
        for i, nic in enumerate(nics):
            net = self._networkFor(nic)
            ip = net.lease()
            if ip is None:
                self._releaseLeases(vm)
                raise _RequestError(INTERNAL, f"Cannot get IP/MAC lease from virtual network {net.id}.")
            vm.ips.append((net, ip))
            nic.update(
                {"AR_ID": "0", "BRIDGE": net.bridge, "BRIDGE_TYPE": "linux", "CLUSTER_ID": "0",
                 "DNS": net.gateway, "GATEWAY": net.gateway, "IP": ip, "MAC": _mac(ip),
                 "NAME": f"NIC{i}", "NETWORK": net.name, "NETWORK_ID": str(net.id),
                 "NIC_ID": str(i), "SECURITY_GROUPS": "0", "TARGET": f"one-{vmId}-{i}",
                 "VN_MAD": "dummy"}
            )
            nic.pop("NETWORK_UNAME", None)
        clustered = bool(nics or sysT.get("DISK"))
        requirements = "!(PUBLIC_CLOUD = YES) & !(PIN_POLICY = PINNED)"
        if clustered:
            requirements = "(CLUSTER_ID = 0) & " + requirements
            sysT["AUTOMATIC_DS_REQUIREMENTS"] = '("CLUSTERS/ID" @> 0)'
            sysT["AUTOMATIC_NIC_REQUIREMENTS"] = '("CLUSTERS/ID" @> 0)'
            sysT["SECURITY_GROUP_RULE"] = [
                {"PROTOCOL": "ALL", "RULE_TYPE": t, "SECURITY_GROUP_ID": "0", "SECURITY_GROUP_NAME": "default"}
                for t in ("OUTBOUND", "INBOUND")
            ] if nics else []
            if not nics:
                del sysT["SECURITY_GROUP_RULE"]
        sysT["AUTOMATIC_REQUIREMENTS"] = requirements
        context = sysT.get("CONTEXT")
        if isinstance(context, dict):
            context = dict(context)
            context["DISK_ID"] = str(len(sysT.get("DISK", [])))
            context["TARGET"] = "hda"
            if context.get("NETWORK", "").upper() == "YES":
                for i, nic in enumerate(nics):
                    net = self._networkFor(nic)
                    values = {
                        "DNS": net.gateway, "GATEWAY": net.gateway, "IP": nic["IP"],
                        "MAC": nic["MAC"], "MASK": str(net.net.netmask),
                        "NETWORK": str(net.net.network_address),
                    }
                    for k in _ETH_KEYS:
                        context.setdefault(f"ETH{i}_{k}", values.get(k, ""))
            sysT["CONTEXT"] = context
        if self.profile.uuid:
            os_ = dict(sysT.get("OS", {})) if isinstance(sysT.get("OS"), dict) else {}
            os_["UUID"] = self.uuids()
            sysT["OS"] = os_
        sysT["VMID"] = str(vmId)
        if hold:
            vm.state = HOLD
            vm.userTemplate["SUBMIT_ON_HOLD"] = "YES"
        self.vms[vmId] = vm
        if schedule and not hold and self.autoDeploy:
            self._later(vm, self.delays.pending, lambda v: self._deploy(v))
        return vm

    def _networkFor(self, nic: dict[str, str]) -> SimNetwork:
        if nic.get("NETWORK_ID") == str(self.foreignNetwork.id) or nic.get("NETWORK") == self.foreignNetwork.name:
            return self.foreignNetwork
        if "NETWORK_ID" in nic and nic["NETWORK_ID"] != str(self.network.id):
            raise _RequestError(INTERNAL, f"Error getting virtual network [{nic['NETWORK_ID']}].")
        if "NETWORK" in nic and nic["NETWORK"] != self.network.name:
            raise _RequestError(INTERNAL, f"Error getting virtual network [{nic['NETWORK']}].")
        return self.network

    def _releaseLeases(self, vm: SimVM) -> None:
        for net, ip in vm.ips:
            net.release(ip)

    # -- the life cycle ---------------------------------------------------------

    def _deploy(self, vm: SimVM, *, schedule: bool = True) -> None:
        now = self._now()
        vm.state, vm.lcm = ACTIVE, PROLOG
        vm.template["TM_MAD_SYSTEM"] = "dummy"
        vm.history.append(
            {"OID": vm.id, "SEQ": len(vm.history), "HOSTNAME": _HOST, "HID": 0, "CID": 0,
             "STIME": now, "ETIME": 0, "VM_MAD": "dummy", "TM_MAD": "dummy", "DS_ID": 0,
             "PSTIME": now, "PETIME": 0, "RSTIME": 0, "RETIME": 0, "ESTIME": 0, "EETIME": 0,
             "ACTION": 0, "UID": -1, "GID": -1, "REQUEST_ID": -1}
        )
        if schedule:
            self._later(vm, self.delays.prolog, self._prologDone)

    def _prologDone(self, vm: SimVM) -> None:
        if self._bootFailures and self._bootFailures[0] == PROLOG_FAILURE:
            self._bootFailures.pop(0)
            self.failVM(vm.id, PROLOG_FAILURE, "Error executing image transfer script")
            return
        now = self._now()
        vm.lcm = BOOT
        vm.history[-1].update(PETIME=now, RSTIME=now)
        self._later(vm, self.delays.boot, self._booted)

    def _booted(self, vm: SimVM) -> None:
        if self._bootFailures and self._bootFailures[0] == BOOT_FAILURE:
            self._bootFailures.pop(0)
            self.failVM(vm.id, BOOT_FAILURE, f"DEPLOY: {_HOST}:{vm.name}:dummy")
            return
        vm.lcm = RUNNING
        vm.deployId = f"{_HOST}:{vm.name}:dummy"
        if self.booter is not None:
            self.booter.boot(vm)

    def _done(self, vm: SimVM, action: int, user: SimUser) -> None:
        self._cancel(vm)
        self._stopBoot(vm)
        now = self._now()
        vm.state, vm.lcm, vm.etime = DONE, LCM_INIT, now
        if vm.history:
            h = vm.history[-1]
            for key in ("ETIME", "EETIME"):
                h[key] = now
            for key in ("RETIME", "ESTIME"):
                h[key] = h[key] or now
            h.update(ACTION=action, UID=user.id, GID=user.gid, REQUEST_ID=next(self.requestIds))
        self._releaseLeases(vm)

    def _stopBoot(self, vm: SimVM) -> None:
        if self.booter is not None:
            self.booter.halt(vm.id)

    def _terminate(self, vm: SimVM, user: SimUser, action: str, hard: bool) -> None:
        code = 28 if hard else 27
        if vm.state in (PENDING, HOLD, INIT, CLONING, CLONING_FAILURE):
            self._done(vm, code, user)
        elif vm.state in (STOPPED, SUSPENDED, POWEROFF, UNDEPLOYED):
            vm.state, vm.lcm = ACTIVE, EPILOG
            self._later(vm, self.delays.epilog, lambda v: self._done(v, code, user))
        elif vm.state == DONE:
            return
        elif vm.lcm in (RUNNING, UNKNOWN) or (vm.lcm == SHUTDOWN and hard and self.profile.major >= 6):
            vm.lcm = SHUTDOWN
            now = self._now()
            if vm.history:
                vm.history[-1].update(ACTION=code, UID=user.id, GID=user.gid, REQUEST_ID=next(self.requestIds), RETIME=now)
            self._stopBoot(vm)

            def epilog(v: SimVM) -> None:
                v.lcm = EPILOG
                if v.history:
                    v.history[-1]["ESTIME"] = self._now()
                self._later(v, self.delays.epilog, lambda w: self._done(w, code, user))

            self._later(vm, self.delays.shutdown, epilog)
        elif vm.lcm in _FAILURE_LCM:
            self._done(vm, code, user)
        else:
            raise _RequestError(
                ACTION,
                f'Error performing action "{action}": Could not terminate VM {vm.id}, wrong state {vm.stateName()}.',
                vm.id,
            )

    def vmAction(self, user: SimUser, action: str, vmId: int) -> int:
        p = self.profile
        name = p.aliases.get(action, action)
        if name not in p.actions:
            raise _RequestError(ACTION, f'Action "{action}" is not supported', -1)
        vm = self._getVM(vmId, user, "MANAGE")
        if name in ("terminate", "terminate-hard", "shutdown", "shutdown-hard"):
            self._terminate(vm, user, action, hard=name.endswith("-hard"))
        elif name == "delete":  # 4.x: ends the VM in any state
            self._done(vm, 13, user)
        elif name == "hold":
            if vm.state != PENDING:
                raise _RequestError(ACTION, f'Error performing action "{action}": wrong state {vm.stateName()}.', vmId)
            self._cancel(vm)
            vm.state = HOLD
        elif name == "release":
            if vm.state != HOLD:
                raise _RequestError(ACTION, f'Error performing action "{action}": wrong state {vm.stateName()}.', vmId)
            vm.state = PENDING
            if self.autoDeploy:
                self._later(vm, self.delays.pending, lambda v: self._deploy(v))
        else:
            raise _RequestError(ACTION, f'Error performing action "{action}": not simulated.', vmId)
        return vmId

    def vmRecover(self, user: SimUser, vmId: int, op: int) -> int:
        vm = self._getVM(vmId, user, "ADMIN")
        if op not in self.profile.recoverOps:
            raise _RequestError(ACTION, "Wrong recovery operation code", vmId)
        if op in (3, 5):
            self._done(vm, 13, user)
            return vmId
        if op == 4:
            self._cancel(vm)
            self._stopBoot(vm)
            vm.state, vm.lcm = PENDING, LCM_INIT
            if self.autoDeploy:
                self._later(vm, self.delays.pending, lambda v: self._deploy(v))
            return vmId
        wrong = _RequestError(
            ACTION, f"Could not perform a recover operation on VM {vmId}, wrong state {vm.stateName()}.", vmId
        )
        if vm.state != ACTIVE:
            raise wrong
        if op == 2 and vm.lcm in (PROLOG_FAILURE, BOOT_FAILURE):  # retry
            vm.userTemplate.pop("ERROR", None)
            if vm.lcm == PROLOG_FAILURE:
                vm.lcm = PROLOG
                self._later(vm, self.delays.prolog, self._prologDone)
            else:
                vm.lcm = BOOT
                self._later(vm, self.delays.boot, self._booted)
        elif vm.lcm == PROLOG:
            self._cancel(vm)
            if op == 1:
                self._prologDone(vm)
            else:
                self.failVM(vmId, PROLOG_FAILURE, "Error executing image transfer script")
        elif vm.lcm == BOOT:
            self._cancel(vm)
            if op == 1:
                self._booted(vm)
            else:
                self.failVM(vmId, BOOT_FAILURE, "Error deploying virtual machine")
        else:
            raise wrong
        return vmId

    def vmDeploy(self, user: SimUser, vmId: int, hostId: int, enforce: bool = False, dsId: int = -1, nics: str = "") -> int:
        vm = self._getVM(vmId, user, "ADMIN")
        if vm.state not in (PENDING, HOLD, STOPPED, UNDEPLOYED):
            raise _RequestError(ACTION, f"Deploy action is not available for state {vm.stateName()}", vmId)
        if hostId != 0:
            raise _RequestError(NO_EXISTS, f"Error getting host [{hostId}].", hostId)
        self._cancel(vm)
        self._deploy(vm)
        return vmId

    def vmInfo(self, user: SimUser, vmId: int, decrypt: bool = False) -> str:
        return self.fullBody(self._getVM(vmId, user, "USE"))

    def _pool(self, user: SimUser, flag: int, start: int, end: int, state: int, query: str = "") -> list[SimVM]:
        p = self.profile
        if flag < p.minFilter:
            raise _RequestError(XML_RPC_API, "Incorrect filter_flag")
        if state < -2 or state > p.maxStateFilter:
            raise _RequestError(XML_RPC_API, "Incorrect filter_flag, state")
        vms: Iterable[SimVM] = self.vms.values()
        if flag == -3 or (flag in (-1, -2, -4) and not user.admin):
            vms = [v for v in vms if v.user.id == user.id or (flag in (-1, -4) and v.user.gid == user.gid)]
        elif flag >= 0:
            vms = [v for v in vms if v.user.id == flag]
        if state == -1:
            vms = [v for v in vms if v.state != DONE]
        elif state >= 0:
            vms = [v for v in vms if v.state == state]
        if end < -1:  # pagination: start is an offset, -end the page size
            ordered = sorted(vms, key=lambda v: v.id, reverse=p.major >= 5)
            return ordered[max(start, 0): max(start, 0) - end]
        vms = [v for v in vms if (start < 0 or v.id >= start) and (end < 0 or v.id <= end)]
        return sorted(vms, key=lambda v: v.id, reverse=p.major >= 5 and p.shortPool)

    def vmpoolInfo(self, user: SimUser, flag: int, start: int, end: int, state: int, query: str = "") -> str:
        body = self.shortBody if self.profile.shortPool else self.fullBody
        return "<VM_POOL>" + "".join(body(vm) for vm in self._pool(user, flag, start, end, state)) + "</VM_POOL>"

    def vmpoolInfoExtended(self, user: SimUser, flag: int, start: int, end: int, state: int, query: str = "") -> str:
        vms = self._pool(user, flag, start, end, state)
        return "<VM_POOL>" + "".join(self.fullBody(vm, lastHistoryOnly=True) for vm in vms) + "</VM_POOL>"

    # -- documents ----------------------------------------------------------------

    def fullBody(self, vm: SimVM, *, lastHistoryOnly: bool = False) -> str:
        """The full C{<VM>} document (C{one.vm.info}; pool bodies before 5.8)."""
        p = self.profile
        out = [(
            f"<VM><ID>{vm.id}</ID><UID>{vm.user.id}</UID><GID>{vm.user.gid}</GID>"
            f"<UNAME>{_esc(vm.user.name)}</UNAME><GNAME>{vm.user.gname}</GNAME><NAME>{_esc(vm.name)}</NAME>"
            "<PERMISSIONS><OWNER_U>1</OWNER_U><OWNER_M>1</OWNER_M><OWNER_A>0</OWNER_A><GROUP_U>0</GROUP_U>"
            "<GROUP_M>0</GROUP_M><GROUP_A>0</GROUP_A><OTHER_U>0</OTHER_U><OTHER_M>0</OTHER_M>"
            "<OTHER_A>0</OTHER_A></PERMISSIONS>"
            f"<LAST_POLL>0</LAST_POLL><STATE>{vm.state}</STATE><LCM_STATE>{vm.lcm}</LCM_STATE>"
            f"<PREV_STATE>{vm.state}</PREV_STATE><PREV_LCM_STATE>{vm.lcm}</PREV_LCM_STATE>"
            f"<RESCHED>0</RESCHED><STIME>{vm.stime}</STIME><ETIME>{vm.etime}</ETIME>"
            f"<DEPLOY_ID>{_esc(vm.deployId)}</DEPLOY_ID><MONITORING></MONITORING>"
        )]
        if p.schedActions:
            out.append("<SCHED_ACTIONS></SCHED_ACTIONS>")
        _templateXML("TEMPLATE", vm.template, out)
        _templateXML("USER_TEMPLATE", vm.userTemplate, out)
        history = vm.history[-1:] if lastHistoryOnly else vm.history
        if not history:
            out.append("<HISTORY_RECORDS/>")
        else:
            out.append("<HISTORY_RECORDS>")
            for h in history:
                out.append("<HISTORY>")
                for key in (_HISTORY_KEYS_4 if p.history4 else _HISTORY_KEYS):
                    value = str(_history4(h, key) if p.history4 else h[key])
                    out.append(f"<{key}>{_cdata(value) if key in _HISTORY_CDATA else _esc(value)}</{key}>")
                out.append("</HISTORY>")
            out.append("</HISTORY_RECORDS>")
        if p.backups:
            out.append("<BACKUPS><BACKUP_CONFIG/><BACKUP_IDS></BACKUP_IDS></BACKUPS>")
        out.append("</VM>")
        return "".join(out)

    def shortBody(self, vm: SimVM) -> str:
        """The short C{<VM>} body of C{one.vmpool.info} (5.8+)."""
        t = vm.template
        out = [(
            f"<VM><ID>{vm.id}</ID><UID>{vm.user.id}</UID><GID>{vm.user.gid}</GID>"
            f"<UNAME>{_esc(vm.user.name)}</UNAME><GNAME>{vm.user.gname}</GNAME><NAME>{_esc(vm.name)}</NAME>"
            f"<LAST_POLL>0</LAST_POLL><STATE>{vm.state}</STATE><LCM_STATE>{vm.lcm}</LCM_STATE>"
            f"<RESCHED>0</RESCHED><STIME>{vm.stime}</STIME><ETIME>{vm.etime}</ETIME>"
            f"<DEPLOY_ID>{_esc(vm.deployId)}</DEPLOY_ID><TEMPLATE>"
            f"<CPU>{_esc(t.get('CPU', ''))}</CPU><MEMORY>{_esc(t.get('MEMORY', ''))}</MEMORY>"
        )]
        if self.profile.schedActions and "VCPU" in t:
            out.append(f"<VCPU>{_esc(t['VCPU'])}</VCPU>")
        for disk in t.get("DISK", []):
            out.append("<DISK>" + "".join(f"<{k}>{_cdata(disk[k])}</{k}>" for k in _SHORT_DISK_KEYS if k in disk) + "</DISK>")
        for nic in t.get("NIC", []):
            out.append("<NIC>" + "".join(f"<{k}>{_cdata(nic[k])}</{k}>" for k in _SHORT_NIC_KEYS if k in nic) + "</NIC>")
        out.append("</TEMPLATE><MONITORING/>")
        user = [f"<{k}>{_cdata(vm.userTemplate[k])}</{k}>" for k in _SHORT_USER_KEYS if k in vm.userTemplate]
        out.append("<USER_TEMPLATE>" + "".join(user) + "</USER_TEMPLATE>" if user else "<USER_TEMPLATE/>")
        if vm.history:
            h = vm.history[-1]
            out.append(
                f"<HISTORY_RECORDS><HISTORY><OID>{h['OID']}</OID><SEQ>{h['SEQ']}</SEQ>"
                f"<HOSTNAME>{_cdata(h['HOSTNAME'])}</HOSTNAME><HID>{h['HID']}</HID><CID>{h['CID']}</CID>"
                f"<DS_ID>{h['DS_ID']}</DS_ID><VM_MAD>{_cdata(h['VM_MAD'])}</VM_MAD>"
                f"<TM_MAD>{_cdata(h['TM_MAD'])}</TM_MAD><ACTION>{_cdata(str(h['ACTION']))}</ACTION>"
                "</HISTORY></HISTORY_RECORDS>"
            )
        else:
            out.append("<HISTORY_RECORDS/>")
        out.append("</VM>")
        return "".join(out)


def _history4(h: dict[str, Any], key: str) -> Any:
    return {
        "VMMMAD": h["VM_MAD"], "VNMMAD": "dummy", "TMMAD": h["TM_MAD"], "DS_LOCATION": "/var/lib/one/datastores",
        "REASON": 0,
    }.get(key, h.get(key, 0))


# Method table: name -> (parameter types, required count), function.  Types:
# s string, i int, b boolean.
_METHODS: dict[str, tuple[tuple[str, int], Callable[..., Any]]] = {
    "one.system.version": (("s", 1), OneSimulator.systemVersion),
    "one.user.info": (("sib", 2), OneSimulator.userInfo),
    "one.vm.allocate": (("ssb", 2), OneSimulator.vmAllocate),
    "one.vm.info": (("sib", 2), OneSimulator.vmInfo),
    "one.vmpool.info": (("siiiis", 5), OneSimulator.vmpoolInfo),
    "one.vmpool.infoextended": (("siiiis", 5), OneSimulator.vmpoolInfoExtended),
    "one.vm.action": (("ssi", 3), OneSimulator.vmAction),
    "one.vm.recover": (("sii", 3), OneSimulator.vmRecover),
    "one.vm.deploy": (("siibis", 3), OneSimulator.vmDeploy),
}

_TYPE_NAMES = {"s": "a string", "i": "integer", "b": "boolean"}


def _checkParams(params: list[Any], signature: tuple[str, int]) -> list[Any]:
    types, required = signature
    if len(params) < required:
        raise Fault(-501, "Not enough parameters")
    params = params[: len(types)]
    for value, t in zip(params, types):
        ok = (
            isinstance(value, str) if t == "s"
            else isinstance(value, bool) if t == "b"
            else isinstance(value, int) and not isinstance(value, bool)
        )
        if not ok:
            raise Fault(-501, f"Parameter that is supposed to be {_TYPE_NAMES[t]} is not")
    return params


class OneSimResource(resource.Resource):
    """The XML-RPC endpoint (C{POST /RPC2}) of a L{OneSimulator}."""

    isLeaf = True
    log = Logger()

    def __init__(self, sim: OneSimulator) -> None:
        super().__init__()
        self.sim = sim

    def render_GET(self, request: server.Request) -> bytes:
        request.setResponseCode(405)
        return b"Method Not Allowed"

    def render_POST(self, request: server.Request) -> Any:
        if request.path != b"/RPC2":
            request.setResponseCode(404)
            return b"Not Found"
        body = request.content.read() if request.content is not None else b""
        try:
            method, params = decodeCall(body)
            reply = encodeResponse(self.sim.handle(method, params))
        except Fault as f:
            reply = encodeFault(f.code, f.string)
        except WireError as e:
            reply = encodeFault(-503, f"Call XML not a proper XML-RPC call.  {e}")
        request.setHeader(b"content-type", b"text/xml")
        if self.sim.replyDelay <= 0:
            return reply
        call = self.sim.clock.callLater(self.sim.replyDelay, self._send, request, reply)
        request.notifyFinish().addErrback(lambda _: call.cancel() if call.active() else None)
        return server.NOT_DONE_YET

    @staticmethod
    def _send(request: server.Request, reply: bytes) -> None:
        request.write(reply)
        request.finish()


class OneSimService(service.Service):
    """
    The simulator listening on C{endpoint} (e.g. C{tcp:0:interface=127.0.0.1}).

    @ivar url: the C{http://host:port/RPC2} URL, once listening.
    """

    log = Logger()

    def __init__(self, sim: OneSimulator, endpoint: str, *, reactor: Any) -> None:
        self.sim = sim
        self.endpoint = endpoint
        self.reactor = reactor
        self.site = server.Site(OneSimResource(sim))
        self.site.displayTracebacks = False
        # Tracks the open connections, so that stopping listening drops them.
        self._factory = WrappingFactory(self.site)
        self.port: Any = None
        self.url = ""

    async def listen(self) -> str:
        """Start listening (again); fires with the URL."""
        self.port = await endpoints.serverFromString(self.reactor, self.endpoint).listen(self._factory)
        host = self.port.getHost()
        self.url = f"http://{host.host}:{host.port}/RPC2"
        # Listen on the same port next time (refused-connection tests).
        self.endpoint = f"tcp:{host.port}:interface={host.host}"
        return self.url

    async def stopListening(self) -> None:
        """
        Stop accepting connections and drop the open ones, as a server that
        goes down does: clients get 'connection refused'.
        """
        if self.port is not None:
            port, self.port = self.port, None
            await port.stopListening()
        for connection in list(self._factory.protocols):
            connection.transport.abortConnection()

    def startService(self) -> None:
        super().startService()
        defer.Deferred.fromCoroutine(self.listen()).addErrback(
            lambda f: self.log.failure("cannot listen on {endpoint}", f, endpoint=self.endpoint)
        )

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self.sim.stop()
        await self.stopListening()
        if self.sim.booter is not None:
            await self.sim.booter.stopAll()


class _BootProtocol(protocol.ProcessProtocol):
    def __init__(self, logPath: str) -> None:
        self.logFile = open(logPath, "ab")  # noqa: SIM115 - open for the process's lifetime
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.pid: int | None = None

    def connectionMade(self) -> None:
        self.pid = self.transport.pid  # type: ignore[union-attr]

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.logFile.write(data)
        self.logFile.flush()

    def processEnded(self, reason: Any) -> None:
        self.logFile.close()
        self.ended.callback(None)


class VMBooter:
    """
    Boots simulated VMs: runs each VM's C{START_SCRIPT_BASE64} as
    one-context does, in C{scratch/vm-ID/} (C{context/context.sh} and the
    script's working directory; C{root/} is the VM's file system, passed as
    C{CONPAASSQL_ROOT}), with the context variables in the environment.
    The script runs in a process group of its own (C{setsid}); halting a VM
    sends it SIGTERM, then SIGKILL to the whole group after C{grace} seconds.

    @param python: the Python the script should use (C{CONPAASSQL_PYTHON}),
        so an importable checkout skips installing.
    """

    log = Logger()

    def __init__(self, scratch: str, *, reactor: Any, python: str = sys.executable, grace: float = 20.0) -> None:
        self.scratch = os.path.abspath(scratch)
        self.reactor = reactor
        self.python = python
        self.grace = grace
        self.running: dict[int, _BootProtocol] = {}

    def vmDir(self, vmId: int) -> str:
        return os.path.join(self.scratch, f"vm-{vmId}")

    def boot(self, vm: SimVM) -> None:
        context = vm.context
        encoded = context.get("START_SCRIPT_BASE64")
        if not encoded or vm.id in self.running:
            return
        vmDir = self.vmDir(vm.id)
        contextDir = os.path.join(vmDir, "context")
        root = os.path.join(vmDir, "root")
        os.makedirs(contextDir, mode=0o700, exist_ok=True)
        os.makedirs(root, mode=0o755, exist_ok=True)
        script = os.path.join(contextDir, "start-script")
        with open(script, "wb") as f:
            f.write(base64.b64decode(encoded))
        os.chmod(script, 0o700)
        lines = ["# Context variables generated by OpenNebula"]
        for key, value in sorted(context.items()):
            lines.append(f"{key}='" + value.replace("'", "'\\''") + "'")
        fd = os.open(os.path.join(contextDir, "context.sh"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
        env = {k: v for k, v in context.items() if k.isidentifier()}
        env.update(
            PATH=os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            HOME=root, LANG="C.UTF-8", CONPAASSQL_ROOT=root, CONPAASSQL_FOREGROUND="1",
            CONPAASSQL_PYTHON=self.python,
        )
        proto = _BootProtocol(os.path.join(vmDir, "boot.log"))
        self.running[vm.id] = proto
        proto.ended.addBoth(lambda _: self.running.pop(vm.id, None) if self.running.get(vm.id) is proto else None)
        self.reactor.spawnProcess(
            proto, "setsid", ["setsid", "/bin/sh", script], env=env, path=contextDir,
            childFDs={0: "w", 1: "r", 2: "r"},
        )
        self.log.info("simulated VM {vmId} booting at {ip} ({dir})", vmId=vm.id, ip=vm.ip, dir=vmDir)

    def halt(self, vmId: int) -> defer.Deferred[None]:
        """Stop VM C{vmId}'s processes; fires when they are gone."""
        proto = self.running.get(vmId)
        if proto is None or proto.pid is None:
            return defer.succeed(None)
        pid = proto.pid
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        timer = self.reactor.callLater(self.grace, self._kill, pid)

        def ended(_: None) -> None:
            if timer.active():
                timer.cancel()
            self._kill(pid)  # whatever is left in its process group

        d: defer.Deferred[None] = defer.Deferred()
        proto.ended.addBoth(ended)
        proto.ended.addBoth(lambda _: d.callback(None))
        return d

    @staticmethod
    def _kill(pgid: int) -> None:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    async def stopAll(self) -> None:
        """Halt every booted VM and wait for them."""
        await defer.gatherResults([self.halt(vmId) for vmId in list(self.running)])


def main(argv: list[str] | None = None) -> int:
    """C{tools/onesim}: run the simulator standalone (for demos)."""
    import argparse
    import secrets

    from twisted.internet import reactor as _reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from conpaassql.common.files import write_secret_file

    parser = argparse.ArgumentParser(prog="onesim", description="An OpenNebula XML-RPC simulator.")
    parser.add_argument("--listen", default="tcp:2633:interface=127.0.0.1", help="endpoint (default %(default)s)")
    parser.add_argument("--version", default="6.10", choices=sorted(PROFILES), help="server version")
    parser.add_argument("--user", default="oneadmin", help="the user (group oneadmin)")
    parser.add_argument("--password-file", default="onesim-password",
                        help="the user's password; created (0600, random) if missing")
    parser.add_argument("--network", default="127.42.0.0/16", help="CIDR of the VMs' addresses")
    parser.add_argument("--delays", default="2,2,2,1,1",
                        help="seconds in PENDING,PROLOG,BOOT,SHUTDOWN,EPILOG (default %(default)s)")
    parser.add_argument("--boot", action="store_true", help="run VMs' boot scripts (agents) when RUNNING")
    parser.add_argument("--scratch", default="onesim-vms", help="where booted VMs live")
    parser.add_argument("--others", type=int, default=0, help="VMs of another user to add")
    parser.add_argument("--no-scheduler", action="store_true", help="leave VMs PENDING until one.vm.deploy")
    args = parser.parse_args(argv)
    try:
        pending, prolog, boot, shutdown, epilog = (float(x) for x in args.delays.split(","))
    except ValueError:
        parser.error("--delays takes five numbers separated by commas")
    if os.path.exists(args.password_file):
        with open(args.password_file, encoding="utf-8") as f:
            password = f.read().strip()
    else:
        password = secrets.token_urlsafe(16)
        write_secret_file(args.password_file, password + "\n")
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])
    booter = VMBooter(args.scratch, reactor=_reactor) if args.boot else None
    sim = OneSimulator(
        version=args.version, clock=_reactor, users=[(args.user, password, 0)],
        delays=Delays(pending, prolog, boot, shutdown, epilog), network=SimNetwork(addresses=args.network),
        autoDeploy=not args.no_scheduler, booter=booter,
    )
    if args.others:
        sim.addForeignVMs(args.others)
    svc = OneSimService(sim, args.listen, reactor=_reactor)

    async def start() -> None:
        url = await svc.listen()
        svc.running = True
        print(f"OpenNebula {sim.profile.version} simulator at {url}; user {args.user},"
              f" password in {os.path.abspath(args.password_file)}", flush=True)

    def failed(f: Any) -> None:
        print(f"onesim: {f.getErrorMessage()}", file=sys.stderr)
        _reactor.stop()

    _reactor.callWhenRunning(lambda: defer.Deferred.fromCoroutine(start()).addErrback(failed))
    _reactor.addSystemEventTrigger("before", "shutdown", svc.stopService)
    _reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
