"""
Choosing and building the cloud driver named by C{[iaas] DRIVER}.

Driver modules are imported by name only when chosen, so the manager runs
without the modules (and their libraries) of drivers it does not use.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from conpaassql.iaas.base import IaaSDriver

__all__ = ["DRIVERS", "driverModule", "makeDriver"]

#: DRIVER name -> the module holding its C{makeDriver}.
DRIVERS: dict[str, str] = {
    "LOCAL": "conpaassql.iaas.local",
    "OPENNEBULA_XMLRPC": "conpaassql.iaas.opennebula",
    "LIBCLOUD": "conpaassql.iaas.libcloud",
}


def driverModule(name: str) -> ModuleType:
    """
    Import the module of driver C{name}.

    @raise ImportError: it is unknown, missing, or has no C{makeDriver}.
    """
    if name not in DRIVERS:
        raise ImportError(f"unknown driver {name!r}; known: {', '.join(DRIVERS)}")
    try:
        module = importlib.import_module(DRIVERS[name])
    except ImportError as e:
        raise ImportError(f"cannot import {DRIVERS[name]}: {e}") from None
    if not callable(getattr(module, "makeDriver", None)):
        raise ImportError(f"{DRIVERS[name]} has no makeDriver()")
    return module


def makeDriver(
    name: str, settings: Mapping[str, str], *, stateDir: str, reactor: Any, serviceTag: str
) -> IaaSDriver:
    """
    Build driver C{name} from its settings.

    @raise DriverConfigError: the settings are wrong (every problem at once).
    @raise ImportError: the driver's module is not available.
    """
    module = driverModule(name)
    driver: IaaSDriver = module.makeDriver(
        dict(settings), stateDir=stateDir, reactor=reactor, serviceTag=serviceTag
    )
    return driver
