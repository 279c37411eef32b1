"""
The manager's configuration file.

An INI file in the original's shape, read once into a frozen dataclass::

    [iaas]
    DRIVER = LOCAL            ; LOCAL (default), OPENNEBULA_XMLRPC or LIBCLOUD
    ; every other key of this section belongs to the driver (see its module)

    [manager]
    poll_interval = 2         ; seconds between polls (the seed's poll_agents_timer)
    boot_poll_interval =      ; seconds between polls while nodes are PENDING or BOOTING
                              ; (default 0.2 on the LOCAL driver, else poll_interval)
    boot_timeout = 300        ; seconds a node may take from add_nodes to RUNNING
    unreachable_timeout = 600 ; seconds a RUNNING node's agent may stay silent
    probe_timeout = 5         ; seconds for one agent probe
    probe_concurrency = 20    ; agents probed at once
    list_timeout = 60         ; seconds for one cloud list call
    agent_call_timeout = 60   ; seconds for user calls to an agent
    upload_timeout = 3600     ; seconds for one dump upload to an agent
    agent_port = 60000        ; the port agents listen on (the local driver picks its own)
    manager_url =             ; the URL nodes reach the manager at (default: the listening one)
    tls = off                 ; on: a service CA, agents on https verified by it (mutual
                              ; TLS); off: plain http; auto: on except on the LOCAL driver
    tls_names =               ; more names/addresses for the manager's certificate (comma-separated)
    logfile =                 ; also write the log to this file
    metrics_interval = 5      ; seconds between performance samples of the nodes
    switchover_timeout = 20   ; seconds a switchover waits for the new master to catch up
    failover = manual         ; when the master is lost: manual (report it) or auto (promote)
    master_lost_timeout = 10  ; seconds the master must be down before it is declared lost

Every problem is collected and reported together in one L{ConfigError};
unknown sections and keys are problems, and so is a driver whose module
cannot be imported.  The driver's own keys are checked by the driver's
C{makeDriver} (see L{conpaassql.manager.drivers}).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from conpaassql.common.config import ConfigError, ConfigProblem, readConfigText, readIni
from conpaassql.manager.drivers import DRIVERS, driverModule

__all__ = ["ConfigError", "ConfigProblem", "ManagerConfig", "load_config", "parse_config"]


@dataclass(frozen=True)
class ManagerConfig:
    """The whole manager configuration; the defaults are the embedded default."""

    driver: str = "LOCAL"
    #: The C{[iaas]} keys other than DRIVER, for the driver's C{makeDriver}.
    driverSettings: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({}), repr=False
    )
    poll_interval: float = 2.0
    #: L{None}: 0.2 s on the LOCAL driver (a list is a directory scan there),
    #: else C{poll_interval} (see L{bootPollInterval}).
    boot_poll_interval: float | None = None
    boot_timeout: float = 300.0
    unreachable_timeout: float = 600.0
    probe_timeout: float = 5.0
    probe_concurrency: int = 20
    list_timeout: float = 60.0
    agent_call_timeout: float = 60.0
    upload_timeout: float = 3600.0
    agent_port: int = 60000
    logfile: str | None = None
    manager_url: str | None = None
    metrics_interval: float = 5.0
    switchover_timeout: float = 20.0
    failover: str = "manual"
    master_lost_timeout: float = 10.0
    #: "on", "off" or "auto" (see L{useTLS}).  Off by default, as the
    #: original: nodes of an existing service keep the scheme they were
    #: made with, and plain-HTTP tools (the simulator's fake agents) stay
    #: usable; etc/manager-opennebula.cnf turns it on.
    tls: str = "off"
    tls_names: tuple[str, ...] = ()

    @property
    def useTLS(self) -> bool:
        """Whether the manager runs a service CA and talks to agents over TLS."""
        if self.tls == "auto":
            return self.driver != "LOCAL"
        return self.tls == "on"

    @property
    def bootPollInterval(self) -> float:
        """Seconds between polls while nodes are PENDING or BOOTING."""
        if self.boot_poll_interval is not None:
            return self.boot_poll_interval
        return min(0.2, self.poll_interval) if self.driver == "LOCAL" else self.poll_interval


#: [manager] key -> (type, minimum, maximum)
_NUMBERS: dict[str, tuple[type, float, float]] = {
    "poll_interval": (float, 0.01, 3600),
    "boot_poll_interval": (float, 0.01, 3600),
    "boot_timeout": (float, 1, 7 * 86400),
    "unreachable_timeout": (float, 1, 7 * 86400),
    "probe_timeout": (float, 0.1, 600),
    "probe_concurrency": (int, 1, 1000),
    "list_timeout": (float, 1, 3600),
    "agent_call_timeout": (float, 1, 86400),
    "upload_timeout": (float, 1, 7 * 86400),
    "agent_port": (int, 1, 65535),
    "metrics_interval": (float, 0.05, 3600),
    "switchover_timeout": (float, 1, 3600),
    "master_lost_timeout": (float, 0.1, 86400),
}
_MANAGER_KEYS = (
    *_NUMBERS, "poll_agents_timer", "logfile", "manager_url", "tls", "tls_names", "failover",
)
_SWITCH = {"on": "on", "true": "on", "yes": "on", "1": "on",
           "off": "off", "false": "off", "no": "off", "0": "off", "auto": "auto"}
#: The values of [manager] failover.
FAILOVER_MODES = ("manual", "auto")


def parse_config(text: str, source: str = "<config>") -> ManagerConfig:
    """
    Parse the text of a manager configuration file.

    @raise ConfigError: listing every problem found.
    """
    parser, problems = readIni(text, source, ("iaas", "manager"))

    def problem(section: str | None, key: str | None, message: str) -> None:
        problems.append(ConfigProblem(section, key, message))

    driver = "LOCAL"
    settings: dict[str, str] = {}
    if parser.has_section("iaas"):
        for key, value in parser.items("iaas", raw=True):
            if key in parser.defaults():
                continue
            value = value.strip()
            if "\0" in value or "\n" in value:
                problem("iaas", key, "line breaks and NUL are not allowed")
            elif key == "DRIVER":
                driver = value.upper() or "LOCAL"
            else:
                settings[key] = value
    if driver not in DRIVERS:
        problem("iaas", "DRIVER", f"unknown driver {driver!r}; known: {', '.join(DRIVERS)}")
    else:
        try:
            driverModule(driver)
        except ImportError as e:
            problem("iaas", "DRIVER", f"driver {driver} is not available here: {e}")

    values: dict[str, object] = {}
    if parser.has_section("manager"):
        for key, value in parser.items("manager", raw=True):
            if key in parser.defaults():
                continue
            value = value.strip()
            if key not in _MANAGER_KEYS:
                problem("manager", key, "unknown key; known: " + ", ".join(_MANAGER_KEYS))
                continue
            if key == "manager_url":
                if value and not re.fullmatch(r"https?://[^/?#\s]+/?", value):
                    problem("manager", key, "must be an http:// or https:// URL of a host and "
                            "port, e.g. http://10.0.0.5:50000/")
                values[key] = (value.rstrip("/") + "/") if value else None
                continue
            if key == "tls":
                if value.lower() not in _SWITCH:
                    problem("manager", key, "must be on, off or auto")
                    continue
                values[key] = _SWITCH[value.lower()]
                continue
            if key == "tls_names":
                names = tuple(n.strip() for n in value.split(",") if n.strip())
                bad = [n for n in names if not re.fullmatch(r"[A-Za-z0-9._:*-]{1,253}", n)]
                if bad:
                    problem("manager", key, f"not a host name or address: {bad[0][:60]!r}")
                values[key] = names
                continue
            if key == "failover":
                if value.lower() not in FAILOVER_MODES:
                    problem("manager", key, "must be manual or auto")
                values[key] = value.lower()
                continue
            if key == "logfile":
                if value and not os.path.isabs(value):
                    problem("manager", key, "must be an absolute path")
                values[key] = value or None
                continue
            name = "poll_interval" if key == "poll_agents_timer" else key
            if name in values:
                problem("manager", key, "poll_interval and poll_agents_timer are one setting; "
                        "give only one")
                continue
            kind, low, high = _NUMBERS[name]
            try:
                number = kind(value)
            except ValueError:
                problem("manager", key, f"must be {'an integer' if kind is int else 'a number'}")
                continue
            if not low <= number <= high:
                problem("manager", key, f"must be from {low:g} to {high:g}")
                continue
            values[name] = number
    if problems:
        raise ConfigError(source, problems)
    return ManagerConfig(
        driver=driver, driverSettings=MappingProxyType(settings), **values  # type: ignore[arg-type]
    )


def load_config(path: str | None) -> ManagerConfig:
    """
    Read the manager configuration file; L{None} means the embedded default.

    @raise ConfigError: listing every problem found.
    """
    if path is None:
        return parse_config("", "<defaults>")
    return parse_config(readConfigText(path), path)
