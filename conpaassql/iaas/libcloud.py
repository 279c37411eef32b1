"""
The apache-libcloud driver (C{[iaas] DRIVER = LIBCLOUD}): any libcloud
compute provider (EC2, OpenStack, GCE, ...) by name and credentials.

libcloud is blocking, so every libcloud call runs in the driver's own thread
pool (C{deferToThreadPool}), never on the reactor; the pool is stopped by
L{LibcloudDriver.close}.  Each call has a timeout (the caller stops waiting;
libcloud's own connection timeout, set to the same value, ends the thread).
A node's user data is the agent boot script (C{etc/agent-boot.sh.in}) with
the node's context variables exported at its top (cloud-init runs it).
L{LibcloudDriver.list} is one C{list_nodes()} call, filtered by name prefix.

Settings (the C{[iaas]} section; keys are case-insensitive)::

    DRIVER = LIBCLOUD
    LIBCLOUD_PROVIDER = ec2          ; a libcloud Provider name (ec2, openstack, gce, dummy...)
    LIBCLOUD_KEY = AKIA...           ; the first credential (access key, user name...)
    LIBCLOUD_SECRET = ...            ; the second one; or LIBCLOUD_SECRET_FILE = /path (0600)
    LIBCLOUD_REGION = eu-west-1      ; optional, passed as region=
    LIBCLOUD_IMAGE = ami-0abc...     ; image id
    LIBCLOUD_SIZE = t3.small         ; size id or name
    LIBCLOUD_NETWORK = subnet-...    ; optional: EC2 subnet / OpenStack network, id or name
    LIBCLOUD_KEYNAME = ops           ; optional SSH key pair name
    LIBCLOUD_ADDRESS = private       ; which address the manager reaches nodes on (private|public)
    LIBCLOUD_TIMEOUT = 60            ; seconds per call
    LIBCLOUD_THREADS = 4             ; threads for libcloud calls
    LIBCLOUD_EXTRA_<NAME> = value    ; more driver arguments, e.g. for OpenStack
                                     ; LIBCLOUD_EXTRA_EX_FORCE_AUTH_URL = https://keystone:5000
                                     ; LIBCLOUD_EXTRA_EX_FORCE_AUTH_VERSION = 3.x_password
                                     ; LIBCLOUD_EXTRA_EX_TENANT_NAME = project
    LIBCLOUD_BOOT_SCRIPT = etc/agent-boot.sh.in
    AGENT_PACKAGE / AGENT_WHEEL_URL / AGENT_WHEEL_SHA256  ; see bootscript
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from conpaassql.iaas.base import (
    CloudFailure,
    DriverConfigError,
    NodeSpec,
    VMInfo,
    nodeIdOfName,
    vmNamePrefix,
)
from conpaassql.iaas.bootscript import BOOT_KEYS, BootScript, parseBootSettings
from conpaassql.iaas.settings import checkKeys, checkServiceTag, normalized, seconds, secretSetting

__all__ = ["DRIVER_NAME", "LibcloudConfig", "LibcloudDriver", "makeDriver", "mapNodeState", "parseConfig"]

DRIVER_NAME = "LIBCLOUD"
T = TypeVar("T")

#: libcloud NodeState values -> VM_STATES.
_STATES = {
    "pending": "PENDING",
    "starting": "BOOTING",
    "rebooting": "BOOTING",
    "reconfiguring": "BOOTING",
    "migrating": "RUNNING",
    "updating": "RUNNING",
    "normal": "RUNNING",
    "running": "RUNNING",
    "unknown": "BOOTING",
    "error": "FAILED",
    "stopped": "FAILED",
    "suspended": "FAILED",
    "paused": "FAILED",
    "stopping": "GONE",
    "terminated": "GONE",
}


def mapNodeState(state: Any) -> str:
    """The L{base.VM_STATES} state of a libcloud C{NodeState}."""
    return _STATES.get(str(state).lower(), "BOOTING")


@dataclass(frozen=True)
class LibcloudConfig:
    provider: str
    key: str = field(repr=False)
    secret: str | None = field(repr=False)
    region: str | None
    image: str
    size: str
    network: str | None
    keyname: str | None
    address: str
    timeout: float
    threads: int
    extra: Mapping[str, str] = field(repr=False)
    boot: BootScript = field(repr=False)


_KNOWN = {
    "LIBCLOUD_PROVIDER", "LIBCLOUD_KEY", "LIBCLOUD_SECRET", "LIBCLOUD_SECRET_FILE",
    "LIBCLOUD_REGION", "LIBCLOUD_IMAGE", "LIBCLOUD_SIZE", "LIBCLOUD_NETWORK", "LIBCLOUD_KEYNAME",
    "LIBCLOUD_ADDRESS", "LIBCLOUD_TIMEOUT", "LIBCLOUD_THREADS", "LIBCLOUD_BOOT_SCRIPT", *BOOT_KEYS,
}


def parseConfig(settings: Mapping[str, str]) -> LibcloudConfig:
    """
    Read the driver's settings (keys case-insensitive).

    @raise DriverConfigError: listing every problem.
    """
    from libcloud.compute.providers import get_driver

    s = normalized(settings)
    problems: list[str] = []
    extra = {k[len("LIBCLOUD_EXTRA_"):].lower(): v for k, v in s.items() if k.startswith("LIBCLOUD_EXTRA_")}
    checkKeys(s, _KNOWN, DRIVER_NAME, problems, prefixes=("LIBCLOUD_EXTRA_",))
    provider = s.get("LIBCLOUD_PROVIDER", "").lower()
    if not provider:
        problems.append("LIBCLOUD_PROVIDER: missing (a libcloud provider name, e.g. ec2 or openstack)")
    else:
        try:
            get_driver(provider)
        except AttributeError:
            problems.append(f"LIBCLOUD_PROVIDER: libcloud has no compute provider {provider!r}")
    key = s.get("LIBCLOUD_KEY", "")
    if not key:
        problems.append("LIBCLOUD_KEY: missing")
    secret = secretSetting(s, "LIBCLOUD_SECRET", "LIBCLOUD_SECRET_FILE", problems, required=False) or None
    for required in ("LIBCLOUD_IMAGE", "LIBCLOUD_SIZE"):
        if not s.get(required):
            problems.append(f"{required}: missing")
    address = s.get("LIBCLOUD_ADDRESS", "private").lower()
    if address not in ("private", "public"):
        problems.append("LIBCLOUD_ADDRESS: must be private or public")
    timeout = seconds(s, "LIBCLOUD_TIMEOUT", 60.0, problems)
    threads = s.get("LIBCLOUD_THREADS", "4")
    if not threads.isdigit() or not 1 <= int(threads) <= 64:
        problems.append("LIBCLOUD_THREADS: must be a whole number from 1 to 64")
    boot = parseBootSettings(s, "LIBCLOUD_BOOT_SCRIPT", problems)
    if problems:
        raise DriverConfigError(problems)
    assert boot is not None
    return LibcloudConfig(
        provider=provider, key=key, secret=secret, region=s.get("LIBCLOUD_REGION") or None,
        image=s["LIBCLOUD_IMAGE"], size=s["LIBCLOUD_SIZE"], network=s.get("LIBCLOUD_NETWORK") or None,
        keyname=s.get("LIBCLOUD_KEYNAME") or None, address=address, timeout=timeout,
        threads=int(threads), extra=extra, boot=boot,
    )


class LibcloudDriver:
    """The libcloud driver.  See the module docstring."""

    name = DRIVER_NAME
    log = Logger()

    def __init__(self, config: LibcloudConfig, *, reactor: Any, serviceTag: str) -> None:
        self.config = config
        self.reactor = reactor
        self.serviceTag = serviceTag
        self.prefix = vmNamePrefix(serviceTag)
        self.pool = ThreadPool(minthreads=0, maxthreads=config.threads, name=f"libcloud-{serviceTag}")
        self._cloud: Any = None
        self._image: Any = None
        self._size: Any = None
        self._network: Any = None
        self._lock = threading.Lock()  # the lazy set-up above, done in pool threads
        #: libcloud calls made, by name (for tests and benchmarks).
        self.calls: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"LibcloudDriver({self.config.provider!r}, serviceTag={self.serviceTag!r})"

    async def _inThread(self, what: str, f: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run C{f} in the pool with the timeout; map its errors to CloudFailure."""
        if not self.pool.started:
            self.pool.start()
        self.calls[what] = self.calls.get(what, 0) + 1
        d = deferToThreadPool(self.reactor, self.pool, f, *args, **kwargs)
        d.addTimeout(self.config.timeout, self.reactor)
        try:
            return await d
        except defer.TimeoutError:
            raise CloudFailure(f"{self.config.provider} {what}: no answer in {self.config.timeout:g} s") from None
        except CloudFailure:
            raise
        except Exception as e:  # noqa: BLE001 - libcloud and its providers raise anything
            raise CloudFailure(f"{self.config.provider} {what} failed: {type(e).__name__}: {e}") from None

    def _connect(self) -> Any:
        # In a pool thread: building some libcloud drivers already talks to the cloud.
        with self._lock:
            return self._connectLocked()

    def _connectLocked(self) -> Any:
        if self._cloud is None:
            from libcloud.compute.providers import get_driver

            cls = get_driver(self.config.provider)
            args = [self.config.key] + ([self.config.secret] if self.config.secret else [])
            kwargs: dict[str, Any] = dict(self.config.extra)
            if self.config.region:
                kwargs["region"] = self.config.region
            cloud = cls(*args, **kwargs)
            connection = getattr(cloud, "connection", None)
            if connection is not None and hasattr(connection, "timeout"):
                connection.timeout = self.config.timeout
            self._cloud = cloud
        return self._cloud

    def _resolve(self) -> None:
        # In a pool thread: the image, size and network objects, once.
        with self._lock:
            self._resolveLocked()

    def _resolveLocked(self) -> None:
        cloud = self._connectLocked()
        c = self.config
        if self._image is None:
            try:
                self._image = cloud.get_image(c.image)
            except NotImplementedError:
                self._image = next((i for i in cloud.list_images() if str(i.id) == c.image), None)
            if self._image is None:
                raise CloudFailure(f"{c.provider}: no image {c.image!r}", transient=False)
        if self._size is None:
            self._size = next((z for z in cloud.list_sizes() if c.size in (str(z.id), z.name)), None)
            if self._size is None:
                raise CloudFailure(f"{c.provider}: no size {c.size!r}", transient=False)
        if c.network and self._network is None:
            if hasattr(cloud, "ex_list_networks"):
                found = [n for n in cloud.ex_list_networks() if c.network in (str(n.id), n.name)]
            elif hasattr(cloud, "ex_list_subnets"):
                found = [n for n in cloud.ex_list_subnets() if c.network in (str(n.id), n.name)]
            else:
                raise CloudFailure(f"{c.provider}: this provider takes no LIBCLOUD_NETWORK", transient=False)
            if not found:
                raise CloudFailure(f"{c.provider}: no network {c.network!r}", transient=False)
            self._network = found[0]

    def _createNode(self, name: str, userData: str) -> Any:
        self._resolve()
        cloud = self._cloud
        parameters = inspect.signature(cloud.create_node).parameters
        takesAll = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        kwargs: dict[str, Any] = {}

        def offer(key: str, value: Any) -> bool:
            if takesAll or key in parameters:
                kwargs[key] = value
                return True
            return False

        if not offer("ex_userdata", userData):
            self.log.warn(  # noqa: G010 - twisted.logger.Logger has warn(), not warning()
                "{provider}: create_node takes no user data; the node will not boot an agent",
                provider=self.config.provider,
            )
        if self.config.keyname:
            offer("ex_keyname", self.config.keyname)
        if self._network is not None and not (
            offer("networks", [self._network]) or offer("ex_subnet", self._network)
        ):
            raise CloudFailure(f"{self.config.provider}: create_node takes no network", transient=False)
        return cloud.create_node(name=name, size=self._size, image=self._image, **kwargs)

    def _info(self, node: Any) -> VMInfo:
        private, public = list(node.private_ips or []), list(node.public_ips or [])
        ips = private + public if self.config.address == "private" else public + private
        return VMInfo(
            vmId=str(node.id), name=node.name, state=mapNodeState(node.state),
            ip=ips[0] if ips else None, detail=str(node.state).upper(),
        )

    def _ours(self, name: str) -> bool:
        return nodeIdOfName(self.serviceTag, name) is not None

    async def create(self, spec: NodeSpec) -> VMInfo:
        """
        Create a node for C{spec}; fires with its L{VMInfo}.

        @raise CloudFailure: if the name is not this service's, or the cloud refuses.
        """
        if not self._ours(spec.name):
            raise CloudFailure(
                f"refusing to create node {spec.name!r}: not named for service {self.serviceTag}",
                transient=False,
            )
        try:
            userData = self.config.boot.userData(spec.context)
        except ValueError as e:
            raise CloudFailure(f"cannot create node {spec.name}: {e}", transient=False) from None
        node = await self._inThread("create_node", self._createNode, spec.name, userData)
        info = self._info(node)
        self.log.info("{provider} node {vmId} created for {name}", provider=self.config.provider,
                      vmId=info.vmId, name=spec.name)
        return VMInfo(info.vmId, spec.name, info.state if info.state != "GONE" else "PENDING", info.ip, None, info.detail)

    async def list(self) -> list[VMInfo]:
        """This service's nodes: one C{list_nodes()} call, filtered by name."""
        nodes = await self._inThread("list_nodes", lambda: self._connect().list_nodes())
        return [self._info(n) for n in nodes if n.name.startswith(self.prefix) and self._ours(n.name)]

    async def terminate(self, vmId: str) -> None:
        """
        Destroy node C{vmId} (one C{list_nodes()} to find it and check its
        name, then C{destroy_node}); a node already gone is not an error.

        @raise CloudFailure: if it is not this service's node, or the cloud refuses.
        """
        def destroy() -> str:
            cloud = self._connect()
            node = next((n for n in cloud.list_nodes() if str(n.id) == vmId), None)
            if node is None:
                return "gone"
            if not self._ours(node.name):
                raise CloudFailure(
                    f"refusing to terminate node {vmId} ({node.name!r}): not a node of service {self.serviceTag}",
                    transient=False,
                )
            if mapNodeState(node.state) == "GONE":
                return "gone"
            cloud.destroy_node(node)
            return "destroyed"

        result = await self._inThread("destroy_node", destroy)
        self.log.info("{provider} node {vmId}: {result}", provider=self.config.provider, vmId=vmId, result=result)

    async def close(self) -> None:
        """Stop the thread pool (waits for a call in progress)."""
        if self.pool.started:
            self.pool.stop()


def makeDriver(settings: Mapping[str, str], *, stateDir: str, reactor: Any, serviceTag: str) -> LibcloudDriver:
    """
    Build the driver from the C{[iaas]} section.

    @raise DriverConfigError: listing every problem of the section.
    """
    del stateDir
    checkServiceTag(serviceTag)
    return LibcloudDriver(parseConfig(settings), reactor=reactor, serviceTag=serviceTag)
