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
from twisted.trial.unittest import TestCase

from conpaassql.iaas.onesim import Delays, OneSimService, OneSimulator, SimNetwork, VMBooter
from conpaassql.iaas.opennebula import OpenNebulaDriver, makeDriver

__all__ = ["FAST", "PASSWORD", "USER", "free_port", "make_driver", "settings_for", "start_simulator"]

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
    case: TestCase, *, version: str = "6.10", delays: Delays = FAST, boot: bool = False,
    users: tuple[tuple[str, str, int], ...] = ((USER, PASSWORD, 0), ("alice", "alice-pass", 1)),
    **kwargs: Any,
) -> tuple[OneSimulator, OneSimService]:
    """A simulator listening on 127.0.0.1:<free port>, stopped on cleanup."""
    booter = VMBooter(case.mktemp(), reactor=reactor) if boot else None
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
