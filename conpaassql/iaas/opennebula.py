"""
The OpenNebula driver (C{[iaas] DRIVER = OPENNEBULA_XMLRPC}).

It speaks OpenNebula's XML-RPC API over HTTP on the reactor (treq, with its
own connection pool), every call with a timeout, session
C{OPENNEBULA_USER:OPENNEBULA_PASSWORD} (never logged).  Replies are read by
their first three elements, so OpenNebula 4.x to 7.0 all work; error replies
and faults become L{CloudFailure}s that name the call and quote the server.

  - L{OpenNebulaDriver.create}: C{one.vm.allocate} with a template built
    from the settings, the node's name and a CONTEXT holding the node's
    context (L{base.CONTEXT_KEYS}) and the agent boot script
    (C{START_SCRIPT_BASE64}).
  - L{OpenNebulaDriver.list}: one C{one.vmpool.info} call (the caller's own
    VMs, all states but DONE) per cycle, filtered by name prefix.  The short
    VM body of 5.8+ carries everything needed (NAME, STATE, LCM_STATE, the
    NIC's IP, USER_TEMPLATE/ERROR); C{infoextended} would send every VM's
    full document (CONTEXT with the agent tokens included), so it is not used.
  - L{OpenNebulaDriver.terminate}: C{one.vm.info} to check the name, then
    C{terminate-hard} (C{shutdown-hard} on 4.x), or C{one.vm.recover} delete
    (action C{delete} on 4.x) for a VM in a state terminate refuses (PROLOG,
    BOOT...).  The server version comes from C{one.system.version}, asked once.

Settings (the C{[iaas]} section; keys are case-insensitive)::

    DRIVER = OPENNEBULA_XMLRPC
    OPENNEBULA_URL = http://one.example:2633/RPC2
    OPENNEBULA_USER = conpaassql
    OPENNEBULA_PASSWORD = ...            ; or OPENNEBULA_PASSWORD_FILE = /path (0600)
    OPENNEBULA_IMAGE_ID = 3              ; the image the VM boots from
    OPENNEBULA_NETWORK_ID = 0            ; the network of its NIC
    OPENNEBULA_SIZE_ID = 1               ; 1 small, 2 medium, 3 large (see SIZES)
    ; or OPENNEBULA_CPU = 0.5, OPENNEBULA_MEMORY = 1024 (MB), OPENNEBULA_VCPU = 2
    OPENNEBULA_NETWORK_GATEWAY = 10.0.0.1      ; optional, CONTEXT ETH0_GATEWAY
    OPENNEBULA_NETWORK_NAMESERVER = 10.0.0.2   ; optional, CONTEXT ETH0_DNS
    OPENNEBULA_SSH_PUBLIC_KEY = ssh-ed25519 ... ; optional, CONTEXT SSH_PUBLIC_KEY
    OPENNEBULA_CONTEXT_SCRIPT_AGENT = etc/agent-boot.sh.in  ; the boot script template
    OPENNEBULA_CONTEXT_SCRIPT_MANAGER = etc/manager-boot.sh.in  ; used by tools only
    OPENNEBULA_TIMEOUT = 30              ; seconds, per call
    OPENNEBULA_CA_FILE = /etc/ssl/one-ca.pem  ; optional: trust this CA (PEM) for an https:// URL
    AGENT_PACKAGE / AGENT_WHEEL_URL / AGENT_WHEEL_SHA256  ; see bootscript
"""

from __future__ import annotations

import base64
import ipaddress
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from xml.etree.ElementTree import Element

import treq
from treq.client import HTTPClient
from twisted.internet import defer, ssl
from twisted.internet.error import ConnectError
from twisted.logger import Logger
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.error import SchemeNotSupported

from conpaassql.iaas.base import (
    CloudFailure,
    DriverConfigError,
    NodeSpec,
    VMInfo,
    nodeIdOfName,
    vmNamePrefix,
)
from conpaassql.iaas.bootscript import BOOT_KEYS, BootScript, parseBootSettings
from conpaassql.iaas.onetemplate import TemplateValueError, renderTemplate
from conpaassql.iaas.settings import checkKeys, checkServiceTag, normalized, seconds, secretSetting
from conpaassql.iaas.xmlrpcwire import Fault, WireError, decodeResponse, encodeCall, safeFromString

__all__ = [
    "DRIVER_NAME",
    "ERROR_NAMES",
    "LCM_STATES",
    "SIZES",
    "STATES",
    "OneError",
    "OneRPC",
    "OpenNebulaConfig",
    "OpenNebulaDriver",
    "makeDriver",
    "mapState",
    "parseConfig",
    "parsePool",
    "parseVM",
]

DRIVER_NAME = "OPENNEBULA_XMLRPC"
DEFAULT_TIMEOUT = 30.0
#: Largest reply body read (a pool of many thousand VMs fits easily).
MAX_REPLY = 512 * 1024 * 1024

#: OPENNEBULA_SIZE_ID values: (CPU, VCPU, MEMORY in MB).  The ids and names
#: are those of the original's OCCI instance types (small, medium, large).
SIZES: dict[str, tuple[str, int, int]] = {
    "1": ("1", 1, 1024),
    "2": ("2", 2, 2048),
    "3": ("4", 4, 4096),
}

#: OpenNebula error codes (the third element of a failed reply).
ERROR_NAMES = {
    0x100: "AUTHENTICATION",
    0x200: "AUTHORIZATION",
    0x400: "NO_EXISTS",
    0x800: "ACTION",
    0x1000: "XML_RPC_API",
    0x2000: "INTERNAL",
    0x4000: "ALLOCATE",
    0x8000: "LOCKED",
    0x10000: "REPLICATION",
}
AUTHENTICATION, AUTHORIZATION, NO_EXISTS, ACTION = 0x100, 0x200, 0x400, 0x800
XML_RPC_API, INTERNAL, ALLOCATE, LOCKED, REPLICATION = 0x1000, 0x2000, 0x4000, 0x8000, 0x10000
_TRANSIENT_CODES = {LOCKED, REPLICATION}

#: VM STATE names by number.
STATES = [
    "INIT", "PENDING", "HOLD", "ACTIVE", "STOPPED", "SUSPENDED", "DONE", "FAILED",
    "POWEROFF", "UNDEPLOYED", "CLONING", "CLONING_FAILURE",
]
#: LCM_STATE names by number (removed values keep their old names).
LCM_STATES = [
    "LCM_INIT", "PROLOG", "BOOT", "RUNNING", "MIGRATE", "SAVE_STOP", "SAVE_SUSPEND",
    "SAVE_MIGRATE", "PROLOG_MIGRATE", "PROLOG_RESUME", "EPILOG_STOP", "EPILOG", "SHUTDOWN",
    "CANCEL", "FAILURE", "CLEANUP_RESUBMIT", "UNKNOWN", "HOTPLUG", "SHUTDOWN_POWEROFF",
    "BOOT_UNKNOWN", "BOOT_POWEROFF", "BOOT_SUSPENDED", "BOOT_STOPPED", "CLEANUP_DELETE",
    "HOTPLUG_SNAPSHOT", "HOTPLUG_NIC", "HOTPLUG_SAVEAS", "HOTPLUG_SAVEAS_POWEROFF",
    "HOTPLUG_SAVEAS_SUSPENDED", "SHUTDOWN_UNDEPLOY", "EPILOG_UNDEPLOY", "PROLOG_UNDEPLOY",
    "BOOT_UNDEPLOY", "HOTPLUG_PROLOG_POWEROFF", "HOTPLUG_EPILOG_POWEROFF", "BOOT_MIGRATE",
    "BOOT_FAILURE", "BOOT_MIGRATE_FAILURE", "PROLOG_MIGRATE_FAILURE", "PROLOG_FAILURE",
    "EPILOG_FAILURE", "EPILOG_STOP_FAILURE", "EPILOG_UNDEPLOY_FAILURE",
    "PROLOG_MIGRATE_POWEROFF", "PROLOG_MIGRATE_POWEROFF_FAILURE", "PROLOG_MIGRATE_SUSPEND",
    "PROLOG_MIGRATE_SUSPEND_FAILURE", "BOOT_UNDEPLOY_FAILURE", "BOOT_STOPPED_FAILURE",
    "PROLOG_RESUME_FAILURE", "PROLOG_UNDEPLOY_FAILURE", "DISK_SNAPSHOT_POWEROFF",
    "DISK_SNAPSHOT_REVERT_POWEROFF", "DISK_SNAPSHOT_DELETE_POWEROFF", "DISK_SNAPSHOT_SUSPENDED",
    "DISK_SNAPSHOT_REVERT_SUSPENDED", "DISK_SNAPSHOT_DELETE_SUSPENDED", "DISK_SNAPSHOT",
    "DISK_SNAPSHOT_REVERT", "DISK_SNAPSHOT_DELETE", "PROLOG_MIGRATE_UNKNOWN",
    "PROLOG_MIGRATE_UNKNOWN_FAILURE", "DISK_RESIZE", "DISK_RESIZE_POWEROFF",
    "DISK_RESIZE_UNDEPLOYED", "HOTPLUG_NIC_POWEROFF", "HOTPLUG_RESIZE",
    "HOTPLUG_SAVEAS_UNDEPLOYED", "HOTPLUG_SAVEAS_STOPPED", "BACKUP", "BACKUP_POWEROFF", "RESTORE",
]

_ACTIVE, _DONE = 3, 6
_QUEUED_STATES = {0, 1, 2, 10}  # INIT PENDING HOLD CLONING
_STOPPED_STATES = {4, 5, 8, 9}  # STOPPED SUSPENDED POWEROFF UNDEPLOYED
_FAILED_STATES = {7, 11}  # FAILED (<= 4.12), CLONING_FAILURE
_LCM_PENDING = {0, 1}  # LCM_INIT PROLOG
_LCM_BOOTING = {2, 9, 19, 20, 21, 22, 31, 32, 35}
_LCM_UP = {3, 4, 8, 17, 24, 25, 26, 43, 45, 57, 58, 59, 60, 62, 66, 69}
_LCM_UNKNOWN = {16}
_LCM_FAILED = {14, *range(36, 43), 44, 46, 47, 48, 49, 50, 61}
_LCM_ENDING = {5, 6, 7, 10, 11, 12, 13, 15, 18, 23, 29, 30}
#: LCM states in which terminate(-hard) works (5.x/6.x); in the others of
#: ACTIVE it is refused and only recover delete ends the VM.
_LCM_TERMINABLE = {3, 12, 16} | _LCM_FAILED
#: LCM states in which the VM is already on its way to DONE.
_LCM_GOING = {11, 23}


def _stateName(state: int) -> str:
    return STATES[state] if 0 <= state < len(STATES) else f"STATE_{state}"


def _lcmName(lcm: int) -> str:
    return LCM_STATES[lcm] if 0 <= lcm < len(LCM_STATES) else f"LCM_STATE_{lcm}"


def mapState(state: int, lcm: int, error: str = "") -> tuple[str, str]:
    """
    The L{base.VM_STATES} state and the detail (the cloud's name for the
    state, and its error message if any) of an OpenNebula STATE/LCM_STATE.
    """
    if state == _ACTIVE:
        name = _lcmName(lcm)
        if lcm in _LCM_UP:
            result = "RUNNING"
        elif lcm in _LCM_UNKNOWN:
            result, name = "RUNNING", f"{name} (the host does not answer)"
        elif lcm in _LCM_PENDING:
            result = "PENDING"
        elif lcm in _LCM_BOOTING:
            result = "BOOTING"
        elif lcm in _LCM_FAILED:
            result = "FAILED"
        elif lcm in _LCM_ENDING:
            result = "GONE"
        else:  # power-off hotplugs and snapshots, and states newer than this table
            result = "FAILED"
    else:
        name = _stateName(state)
        if state in _QUEUED_STATES:
            result = "PENDING"
        elif state == _DONE:
            result = "GONE"
        else:  # stopped by someone else, failed, or unknown
            result = "FAILED"
    if error and result == "FAILED":
        name = f"{name}: {error}"
    return result, name


def _text(el: Element, path: str) -> str:
    return (el.findtext(path) or "").strip()


def _int(el: Element, path: str) -> int:
    try:
        return int(_text(el, path))
    except ValueError:
        raise WireError(f"VM document without a numeric {path}") from None


def _vmInfo(vm: Element) -> VMInfo:
    state, lcm = _int(vm, "STATE"), _int(vm, "LCM_STATE")
    mapped, detail = mapState(state, lcm, _text(vm, "USER_TEMPLATE/ERROR"))
    ip = _text(vm, "TEMPLATE/NIC/IP") or _text(vm, "TEMPLATE/NIC/IP6_GLOBAL") or None
    return VMInfo(vmId=str(_int(vm, "ID")), name=_text(vm, "NAME"), state=mapped, ip=ip, detail=detail)


def _parseDocument(document: str, root: str) -> Element:
    el = safeFromString(document.encode("utf-8"))
    if el.tag != root:
        raise WireError(f"expected a <{root}> document, found <{el.tag}>")
    return el


def parseVM(document: str) -> tuple[VMInfo, int, int, str]:
    """
    A C{<VM>} document (C{one.vm.info}): the L{VMInfo}, the raw STATE and
    LCM_STATE, and the owner's name (UNAME).

    @raise WireError: if it is not a VM document.
    """
    vm = _parseDocument(document, "VM")
    return _vmInfo(vm), _int(vm, "STATE"), _int(vm, "LCM_STATE"), _text(vm, "UNAME")


def parsePool(document: str, serviceTag: str) -> list[VMInfo]:
    """
    The VMs of the service tagged C{serviceTag} in a C{<VM_POOL>} document
    (short or full VM bodies, any version); the others are skipped unread.

    @raise WireError: if it is not a pool document.
    """
    prefix = vmNamePrefix(serviceTag)
    pool = _parseDocument(document, "VM_POOL")
    result = []
    for vm in pool.iterfind("VM"):
        name = vm.findtext("NAME") or ""
        if name.startswith(prefix) and nodeIdOfName(serviceTag, name) is not None:
            result.append(_vmInfo(vm))
    return result


class OneError(CloudFailure):
    """
    OpenNebula answered a call with an error reply (C{code} is its error
    code) or an XML-RPC fault (C{fault} is the fault code, C{code} is 0).
    """

    def __init__(
        self, message: str, *, method: str, code: int = 0, fault: int | None = None,
        transient: bool = False,
    ) -> None:
        super().__init__(message, transient=transient)
        self.method = method
        self.code = code
        self.fault = fault


def _safeUrl(url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _timedOut(result: Any, timeout: float) -> Any:
    # Whatever the cancelled request failed with, it failed because of the timeout.
    raise defer.TimeoutError(f"no answer in {timeout} s")


class OneRPC:
    """
    An XML-RPC client for one OpenNebula endpoint.

    @ivar calls: how many calls were sent, by method name.
    """

    log = Logger()

    def __init__(
        self, url: str, session: str, *, reactor: Any, timeout: float = DEFAULT_TIMEOUT,
        httpClient: HTTPClient | None = None, caCertificate: bytes | None = None,
    ) -> None:
        self.url = url
        self.safeUrl = _safeUrl(url)
        self._session = session
        self._reactor = reactor
        self.timeout = timeout
        self.calls: Counter[str] = Counter()
        self._pool: HTTPConnectionPool | None = None
        if httpClient is None:
            self._pool = HTTPConnectionPool(reactor, persistent=True)
            self._pool.maxPersistentPerHost = 4
            self._pool.retryAutomatically = False
            kwargs: dict[str, Any] = {}
            if caCertificate is not None:
                kwargs["contextFactory"] = BrowserLikePolicyForHTTPS(
                    trustRoot=ssl.Certificate.loadPEM(caCertificate)
                )
            httpClient = HTTPClient(Agent(reactor, pool=self._pool, connectTimeout=timeout, **kwargs))
        self._http = httpClient

    def __repr__(self) -> str:  # never show the session
        return f"OneRPC({self.safeUrl!r})"

    async def call(self, method: str, *params: Any) -> Any:
        """
        Call C{method} with the session and C{params}; return the result
        (the reply's second element).

        @raise OneError: on an error reply or a fault.
        @raise CloudFailure: on no answer in time, a refused connection, or
            a reply that is not OpenNebula's.
        """
        self.calls[method] += 1
        body = encodeCall(method, (self._session, *params))
        d = defer.Deferred.fromCoroutine(self._post(method, body))
        d.addTimeout(self.timeout, self._reactor, onTimeoutCancel=_timedOut)
        try:
            raw = await d
        except defer.TimeoutError:
            raise CloudFailure(
                f"OpenNebula {method}: no answer from {self.safeUrl} in {self.timeout:g} s"
            ) from None
        except (
            ConnectError, ResponseFailed, ResponseNeverReceived, RequestTransmissionFailed,
            SchemeNotSupported, OSError,
        ) as e:
            raise CloudFailure(
                f"OpenNebula {method}: cannot reach {self.safeUrl} ({type(e).__name__}: {e})"
            ) from None
        return self._result(method, raw)

    async def _post(self, method: str, body: bytes) -> bytes:
        response = await self._http.post(
            self.url, data=body, headers={b"content-type": [b"text/xml"]}
        )
        chunks: list[bytes] = []
        size = 0

        def collect(data: bytes) -> None:
            nonlocal size
            size += len(data)
            if size > MAX_REPLY:
                raise CloudFailure(
                    f"OpenNebula {method}: reply over {MAX_REPLY} bytes", transient=False
                )
            chunks.append(data)

        await treq.collect(response, collect)
        if response.code != 200:
            raise CloudFailure(f"OpenNebula {method}: {self.safeUrl} answered HTTP {response.code}")
        return b"".join(chunks)

    def _result(self, method: str, raw: bytes) -> Any:
        try:
            reply = decodeResponse(raw)
        except Fault as f:
            raise OneError(
                f"OpenNebula {method} failed: fault {f.code}: {f.string}",
                method=method, fault=f.code,
            ) from None
        except WireError as e:
            raise CloudFailure(
                f"OpenNebula {method}: {self.safeUrl} sent a reply that is not XML-RPC ({e})",
                transient=False,
            ) from None
        if not isinstance(reply, list) or len(reply) < 3 or not isinstance(reply[0], bool):
            raise CloudFailure(
                f"OpenNebula {method}: unexpected reply (not an OpenNebula result array)",
                transient=False,
            )
        ok, value, code = reply[0], reply[1], reply[2]
        if ok:
            return value
        code = code if isinstance(code, int) else -1
        name = ERROR_NAMES.get(code, "UNKNOWN")
        transient = code in _TRANSIENT_CODES
        raise OneError(
            f"OpenNebula {method} failed: {value} ({name}, code {code})",
            method=method, code=code, transient=transient,
        )

    async def close(self) -> None:
        """Close the connection pool's connections."""
        if self._pool is not None:
            await self._pool.closeCachedConnections()


@dataclass(frozen=True)
class OpenNebulaConfig:
    """The C{[iaas]} settings of the OpenNebula driver."""

    url: str
    user: str
    password: str = field(repr=False)
    imageId: int
    networkId: int
    cpu: str
    vcpu: int | None
    memory: int
    gateway: str | None
    nameservers: str | None
    sshPublicKey: str | None
    timeout: float
    boot: BootScript = field(repr=False)
    caCertificate: bytes | None = field(default=None, repr=False)


_KNOWN_KEYS = {
    "OPENNEBULA_URL", "OPENNEBULA_USER", "OPENNEBULA_PASSWORD",
    "OPENNEBULA_PASSWORD_FILE", "OPENNEBULA_IMAGE_ID", "OPENNEBULA_NETWORK_ID",
    "OPENNEBULA_SIZE_ID", "OPENNEBULA_CPU", "OPENNEBULA_VCPU", "OPENNEBULA_MEMORY",
    "OPENNEBULA_NETWORK_GATEWAY", "OPENNEBULA_NETWORK_NAMESERVER", "OPENNEBULA_SSH_PUBLIC_KEY",
    "OPENNEBULA_CONTEXT_SCRIPT_AGENT", "OPENNEBULA_CONTEXT_SCRIPT_MANAGER", "OPENNEBULA_TIMEOUT",
    "OPENNEBULA_CA_FILE",
    *BOOT_KEYS,
}


def _address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def parseConfig(settings: Mapping[str, str]) -> OpenNebulaConfig:
    """
    Read the driver's settings (keys case-insensitive).

    @raise DriverConfigError: listing every problem.
    """
    s = normalized(settings)
    problems: list[str] = []
    checkKeys(s, _KNOWN_KEYS, DRIVER_NAME, problems)

    url = s.get("OPENNEBULA_URL", "")
    parts = urlsplit(url)
    if not url:
        problems.append("OPENNEBULA_URL: missing (e.g. http://one.example:2633/RPC2)")
    elif parts.scheme not in ("http", "https") or not parts.hostname:
        problems.append("OPENNEBULA_URL: must be an http:// or https:// URL")
    elif parts.username or parts.password:
        problems.append("OPENNEBULA_URL: put the credentials in OPENNEBULA_USER/PASSWORD, not the URL")

    user = s.get("OPENNEBULA_USER", "")
    if not user:
        problems.append("OPENNEBULA_USER: missing")
    elif ":" in user or any(c.isspace() for c in user):
        problems.append("OPENNEBULA_USER: must not contain ':' or spaces")

    password = secretSetting(s, "OPENNEBULA_PASSWORD", "OPENNEBULA_PASSWORD_FILE", problems)

    def number(key: str, *, required: bool) -> int:
        value = s.get(key, "")
        if not value:
            if required:
                problems.append(f"{key}: missing")
            return -1
        if not value.isdigit():
            problems.append(f"{key}: must be the numeric id (a whole number), not {value[:60]!r}")
            return -1
        return int(value)

    imageId = number("OPENNEBULA_IMAGE_ID", required=True)
    networkId = number("OPENNEBULA_NETWORK_ID", required=True)

    cpu, vcpu, memory = SIZES["1"]
    custom = [k for k in ("OPENNEBULA_CPU", "OPENNEBULA_VCPU", "OPENNEBULA_MEMORY") if s.get(k)]
    if s.get("OPENNEBULA_SIZE_ID"):
        if custom:
            problems.append(f"OPENNEBULA_SIZE_ID: set together with {', '.join(custom)}; use one or the other")
        size = SIZES.get(s["OPENNEBULA_SIZE_ID"])
        if size is None:
            problems.append(f"OPENNEBULA_SIZE_ID: must be one of {', '.join(SIZES)}")
        else:
            cpu, vcpu, memory = size
    elif custom:
        cpu = s.get("OPENNEBULA_CPU", "")
        try:
            if not cpu or float(cpu) <= 0:
                raise ValueError
        except ValueError:
            problems.append("OPENNEBULA_CPU: must be a positive number (share of a physical CPU)")
        mem = s.get("OPENNEBULA_MEMORY", "")
        memory = int(mem) if mem.isdigit() and int(mem) > 0 else -1
        if memory < 0:
            problems.append("OPENNEBULA_MEMORY: must be a positive whole number of megabytes")
        v = s.get("OPENNEBULA_VCPU", "1")
        vcpu = int(v) if v.isdigit() and int(v) > 0 else -1
        if vcpu < 0:
            problems.append("OPENNEBULA_VCPU: must be a positive whole number")

    gateway = s.get("OPENNEBULA_NETWORK_GATEWAY") or None
    if gateway and not _address(gateway):
        problems.append("OPENNEBULA_NETWORK_GATEWAY: must be an IP address")
    nameservers = s.get("OPENNEBULA_NETWORK_NAMESERVER") or None
    if nameservers and not all(_address(a) for a in nameservers.split()):
        problems.append("OPENNEBULA_NETWORK_NAMESERVER: must be IP addresses separated by spaces")
    sshKey = s.get("OPENNEBULA_SSH_PUBLIC_KEY") or None
    if sshKey and not re.fullmatch(r"(ssh|ecdsa|sk)-[A-Za-z0-9@.\-]+ [A-Za-z0-9+/=]+( [^\"$\\\x00-\x1f]*)?", sshKey):
        problems.append("OPENNEBULA_SSH_PUBLIC_KEY: not an OpenSSH public key line")

    timeout = seconds(s, "OPENNEBULA_TIMEOUT", DEFAULT_TIMEOUT, problems)
    caCertificate = None
    if s.get("OPENNEBULA_CA_FILE"):
        try:
            with open(s["OPENNEBULA_CA_FILE"], "rb") as f:
                caCertificate = f.read()
            ssl.Certificate.loadPEM(caCertificate)
        except OSError as e:
            problems.append(f"OPENNEBULA_CA_FILE: cannot read {s['OPENNEBULA_CA_FILE']}: {e.strerror}")
        except Exception:  # noqa: BLE001 - pyOpenSSL's errors vary by version
            problems.append(f"OPENNEBULA_CA_FILE: {s['OPENNEBULA_CA_FILE']} is not a PEM certificate")
        if not url.startswith("https://"):
            problems.append("OPENNEBULA_CA_FILE: only for an https:// OPENNEBULA_URL")
    boot = parseBootSettings(s, "OPENNEBULA_CONTEXT_SCRIPT_AGENT", problems)
    if problems:
        raise DriverConfigError(problems)
    assert boot is not None
    return OpenNebulaConfig(
        url=url, user=user, password=password, imageId=imageId, networkId=networkId,
        cpu=cpu, vcpu=vcpu, memory=memory, gateway=gateway, nameservers=nameservers,
        sshPublicKey=sshKey, timeout=timeout, boot=boot, caCertificate=caCertificate,
    )


#: CONTEXT names the driver sets itself; a node's context may not override them.
_RESERVED_CONTEXT = {
    "NETWORK", "SET_HOSTNAME", "START_SCRIPT", "START_SCRIPT_BASE64", "ETH0_GATEWAY",
    "ETH0_DNS", "SSH_PUBLIC_KEY", "FILES", "FILES_DS", "INIT_SCRIPTS", "TOKEN", "TARGET",
    "USERNAME", "PASSWORD", "PASSWORD_BASE64", "CRYPTED_PASSWORD_BASE64",
}


class OpenNebulaDriver:
    """
    The OpenNebula XML-RPC driver.  See the module docstring.

    @ivar rpc: the XML-RPC client (its C{calls} counts calls by method).
    """

    name = DRIVER_NAME
    log = Logger()

    def __init__(
        self, config: OpenNebulaConfig, *, reactor: Any, serviceTag: str,
        rpc: OneRPC | None = None,
    ) -> None:
        self.config = config
        self.serviceTag = serviceTag
        self.prefix = vmNamePrefix(serviceTag)
        self.rpc = rpc or OneRPC(
            config.url, f"{config.user}:{config.password}", reactor=reactor,
            timeout=config.timeout, caCertificate=config.caCertificate,
        )
        self._version: tuple[int, int] | None = None

    def __repr__(self) -> str:
        return f"OpenNebulaDriver({self.rpc.safeUrl!r}, serviceTag={self.serviceTag!r})"

    async def serverVersion(self) -> tuple[int, int]:
        """The server's (major, minor) version, asked once (C{one.system.version})."""
        if self._version is None:
            text = await self.rpc.call("one.system.version")
            m = re.match(r"\s*(\d+)\.(\d+)", str(text))
            if not m:
                raise CloudFailure(f"OpenNebula one.system.version: unexpected version {str(text)[:40]!r}", transient=False)
            self._version = (int(m.group(1)), int(m.group(2)))
            self.log.info("OpenNebula at {url} is version {version}", url=self.rpc.safeUrl, version=text)
        return self._version

    def templateFor(self, spec: NodeSpec) -> str:
        """
        The C{one.vm.allocate} template for C{spec}.

        @raise TemplateValueError: if a value cannot be carried safely.
        """
        c = self.config
        context: dict[str, str] = {
            "NETWORK": "YES",
            "SET_HOSTNAME": spec.name,
        }
        for key, value in spec.context.items():
            if key.upper() in _RESERVED_CONTEXT:
                raise TemplateValueError(f"CONTEXT/{key.upper()}", "is set by the driver")
            context[key] = str(value)
        if c.gateway:
            context["ETH0_GATEWAY"] = c.gateway
        if c.nameservers:
            context["ETH0_DNS"] = c.nameservers
        if c.sshPublicKey:
            context["SSH_PUBLIC_KEY"] = c.sshPublicKey
        context["START_SCRIPT_BASE64"] = base64.b64encode(c.boot.script.encode("utf-8")).decode("ascii")
        template: list[tuple[str, str | Mapping[str, str]]] = [
            ("NAME", spec.name),
            ("CPU", c.cpu),
            ("MEMORY", str(c.memory)),
        ]
        if c.vcpu:
            template.append(("VCPU", str(c.vcpu)))
        template += [
            ("DISK", {"IMAGE_ID": str(c.imageId)}),
            ("NIC", {"NETWORK_ID": str(c.networkId)}),
            ("LABELS", f"conpaassql,{self.serviceTag}"),
            ("CONTEXT", context),
        ]
        return renderTemplate(template)

    async def create(self, spec: NodeSpec) -> VMInfo:
        """
        Allocate a VM for C{spec} (C{one.vm.allocate}); fires with its
        L{VMInfo} (PENDING) once OpenNebula has accepted it.

        @raise CloudFailure: if the name is not one of this service's, a
            context value cannot be carried safely, or OpenNebula refuses.
        """
        if nodeIdOfName(self.serviceTag, spec.name) is None:
            raise CloudFailure(
                f"refusing to create VM {spec.name!r}: not named for service {self.serviceTag}",
                transient=False,
            )
        try:
            template = self.templateFor(spec)
        except TemplateValueError as e:
            raise CloudFailure(f"cannot create VM {spec.name}: {e}", transient=False) from None
        vmId = await self.rpc.call("one.vm.allocate", template, False)
        self.log.info("OpenNebula VM {vmId} allocated for {name}", vmId=vmId, name=spec.name)
        return VMInfo(vmId=str(vmId), name=spec.name, state="PENDING", detail="PENDING")

    async def list(self) -> list[VMInfo]:
        """
        This service's VMs (one C{one.vmpool.info} call: the caller's VMs in
        every state but DONE, filtered by name).

        @raise CloudFailure: if the call fails or the reply is not a pool.
        """
        document = await self.rpc.call("one.vmpool.info", -3, -1, -1, -1)
        try:
            return parsePool(str(document), self.serviceTag)
        except WireError as e:
            raise CloudFailure(f"OpenNebula one.vmpool.info: {e}", transient=False) from None

    async def terminate(self, vmId: str) -> None:
        """
        End VM C{vmId}: C{terminate-hard}, or C{one.vm.recover} delete in a
        state terminate refuses (on 4.x: C{shutdown-hard} / C{delete}).
        Fires with L{None}; a VM already gone (DONE, or unknown to the
        server) is not an error.

        @raise CloudFailure: if the VM is not this service's (by name), or
            OpenNebula refuses.
        """
        if not vmId.isdigit():
            raise CloudFailure(f"refusing to terminate {vmId!r}: not an OpenNebula VM id", transient=False)
        vid = int(vmId)
        try:
            document = await self.rpc.call("one.vm.info", vid)
        except OneError as e:
            if e.code == NO_EXISTS:
                return
            raise
        try:
            info, state, lcm, owner = parseVM(str(document))
        except WireError as e:
            raise CloudFailure(f"OpenNebula one.vm.info {vid}: {e}", transient=False) from None
        if nodeIdOfName(self.serviceTag, info.name) is None:
            raise CloudFailure(
                f"refusing to terminate VM {vid} ({info.name!r}): not a VM of service {self.serviceTag}",
                transient=False,
            )
        if owner != self.config.user:
            raise CloudFailure(
                f"refusing to terminate VM {vid} ({info.name!r}): it belongs to {owner!r},"
                f" not to {self.config.user!r}",
                transient=False,
            )
        if state == _DONE or (state == _ACTIVE and lcm in _LCM_GOING):
            return
        if state == _ACTIVE and lcm not in _LCM_TERMINABLE:
            await self._delete(vid, f"{_lcmName(lcm)}")
            return
        major, _ = await self.serverVersion()
        action = "shutdown-hard" if major < 5 else "terminate-hard"
        try:
            await self.rpc.call("one.vm.action", action, vid)
        except OneError as e:
            if e.code == NO_EXISTS:
                return
            if e.code != ACTION:
                raise
            # The VM moved to a state terminate refuses (PROLOG, BOOT...).
            await self._delete(vid, "terminate refused")
            return
        self.log.info("OpenNebula VM {vmId} ({name}): {action}", vmId=vid, name=info.name, action=action)

    async def _delete(self, vid: int, why: str) -> None:
        major, _ = await self.serverVersion()
        try:
            if major < 5:
                await self.rpc.call("one.vm.action", "delete", vid)
            else:
                await self.rpc.call("one.vm.recover", vid, 3)
        except OneError as e:
            if e.code == NO_EXISTS:
                return
            raise
        self.log.info("OpenNebula VM {vmId} deleted ({why})", vmId=vid, why=why)

    async def close(self) -> None:
        """Close the XML-RPC connections."""
        await self.rpc.close()


def makeDriver(
    settings: Mapping[str, str], *, stateDir: str, reactor: Any, serviceTag: str
) -> OpenNebulaDriver:
    """
    Build the driver from the C{[iaas]} section.

    @raise DriverConfigError: listing every problem of the section.
    """
    del stateDir  # nothing to keep: OpenNebula is the record of our VMs
    checkServiceTag(serviceTag)
    return OpenNebulaDriver(parseConfig(settings), reactor=reactor, serviceTag=serviceTag)
