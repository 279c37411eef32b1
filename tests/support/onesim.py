"""
The OpenNebula simulator and the OpenNebula driver, set up for a test.

    sim, url = await start_simulator(self, version="6.10", delays=Delays(...))
    driver = make_driver(self, url, "svc1")

Both are stopped by cleanups: the simulator stops listening, cancels its
timers and halts every VM it booted; the driver closes its connections.
The simulator's network is a /16 of loopback addresses (127.X.0.0, X random
between 100 and 250), so booted VMs listen on addresses of their own.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Mapping
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.protocols.policies import WrappingFactory
from twisted.trial.unittest import TestCase

from conpaassql.iaas.onesim import Delays, OneSimService, OneSimulator, SimNetwork, SimVM, VMBooter
from conpaassql.iaas.opennebula import OpenNebulaDriver, makeDriver
from conpaassql.rpc.dispatch import Dispatcher
from conpaassql.rpc.resource import RPCResource, TokenAuth, makeSite
from tests.support.fakeagents import FakeAgentAPI

__all__ = ["FAST", "PASSWORD", "USER", "FakeAgentBooter", "free_port", "make_driver", "settings_for", "start_simulator"]

USER = "conpaassql"
PASSWORD = "s3cret-pass"
#: Delays short enough for tests over real HTTP.
FAST = Delays(pending=0.05, prolog=0.05, boot=0.05, shutdown=0.05, epilog=0.05)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def start_simulator(
    case: TestCase, *, version: str = "6.10", delays: Delays = FAST, boot: bool | str = False,
    users: tuple[tuple[str, str, int], ...] = ((USER, PASSWORD, 0), ("alice", "alice-pass", 1)),
    **kwargs: Any,
) -> tuple[OneSimulator, OneSimService]:
    """
    A simulator listening on 127.0.0.1:<free port>, stopped on cleanup.

    @param boot: C{True} boots VMs for real (L{VMBooter}: their boot script
        runs, and with it a real agent and mariadbd); C{"fake"} gives each a
        fake agent (L{FakeAgentBooter}); C{False} boots nothing.
    """
    booter: Any = None
    if boot == "fake":
        booter = FakeAgentBooter()
    elif boot:
        booter = VMBooter(case.mktemp(), reactor=reactor)
    network = SimNetwork(addresses=f"127.{random.randint(100, 250)}.0.0/16")
    sim = OneSimulator(
        version=version, clock=reactor, users=users, delays=delays, network=network,
        booter=booter, **kwargs,
    )
    svc = OneSimService(sim, "tcp:0:interface=127.0.0.1", reactor=reactor)
    await svc.listen()
    svc.running = True
    case.addCleanup(svc.stopService)
    return sim, svc


def settings_for(url: str, **extra: str) -> dict[str, str]:
    """An [iaas] section for the simulator at C{url}."""
    settings = {
        "DRIVER": "OPENNEBULA_XMLRPC",
        "OPENNEBULA_URL": url,
        "OPENNEBULA_USER": USER,
        "OPENNEBULA_PASSWORD": PASSWORD,
        "OPENNEBULA_IMAGE_ID": "3",
        "OPENNEBULA_NETWORK_ID": "0",
        "OPENNEBULA_CPU": "0.5",
        "OPENNEBULA_MEMORY": "512",
        "OPENNEBULA_TIMEOUT": "5",
    }
    settings.update(extra)
    return settings


def make_driver(case: TestCase, url: str, tag: str, settings: Mapping[str, str] | None = None) -> OpenNebulaDriver:
    """The driver for service C{tag} against C{url}, closed on cleanup."""
    driver = makeDriver(
        settings if settings is not None else settings_for(url),
        stateDir=case.mktemp(), reactor=reactor, serviceTag=tag,
    )
    case.addCleanup(driver.close)
    return driver


class FakeAgentBooter:
    """
    A fast stand-in for L{VMBooter}: a VM reaching RUNNING gets, instead of
    its boot script, an in-process fake agent (L{FakeAgentAPI}) served over
    real HTTP on the VM's own address and C{AGENT_PORT}, accepting only the
    VM's C{AGENT_TOKEN}.  Halting the VM stops it listening and drops its
    connections, as a VM that ends does.
    """

    def __init__(self) -> None:
        self.running: dict[int, tuple[FakeAgentAPI, Any, WrappingFactory]] = {}

    def boot(self, vm: SimVM) -> None:
        context = vm.context
        if vm.id in self.running or not vm.ip or "AGENT_TOKEN" not in context:
            return
        api = FakeAgentAPI()
        site = makeSite(RPCResource(Dispatcher(api), TokenAuth([context["AGENT_TOKEN"]])))
        factory = WrappingFactory(site)
        port = reactor.listenTCP(int(context["AGENT_PORT"]), factory, interface=vm.ip)
        self.running[vm.id] = (api, port, factory)

    def halt(self, vmId: int) -> Deferred[None]:
        """Stop VM C{vmId}'s agent; fires when it no longer listens."""
        entry = self.running.pop(vmId, None)
        if entry is None:
            return succeed(None)
        _api, port, factory = entry
        for connection in list(factory.protocols):
            connection.transport.abortConnection()
        return maybeDeferred(port.stopListening)

    async def stopAll(self) -> None:
        await gatherResults([self.halt(vmId) for vmId in list(self.running)])
