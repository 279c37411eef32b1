"""
The stand-alone front-end's configuration file.

The original's C{manager-gui.conf} is accepted as it was written, keys at
the top without a section and values possibly quoted::

    MANAGER_HOST = 'localhost'
    MANAGER_PORT = 50000

and so is an INI file with a C{[gui]} section holding the same keys and
these::

    [gui]
    manager_url = http://10.0.0.5:50000/   ; instead of MANAGER_HOST/MANAGER_PORT
    listen = tcp:5000:interface=127.0.0.1
    secure_cookies = false                 ; true behind a TLS proxy
    allowed_origins = https://db.example.org

C{AGENT_PORT} (the original's) is accepted and ignored: the front-end talks
to the manager only.  Every problem is collected and reported together.
"""

from __future__ import annotations

import configparser
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["ConfigError", "GUIConfig", "load_config", "parse_config"]

DEFAULT_MANAGER_PORT = 50000

_KEYS = {
    "manager_host", "manager_port", "agent_port", "manager_url", "listen",
    "secure_cookies", "allowed_origins",
}


class ConfigError(Exception):
    """The file has problems; the message lists them all, one a line."""


@dataclass(frozen=True)
class GUIConfig:
    managerURL: str | None = None
    listen: str | None = None
    secureCookies: bool = False
    allowedOrigins: tuple[str, ...] = ()


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def _checkURL(url: str, what: str, problems: list[str]) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        problems.append(f"{what}: {url!r} is not an http:// or https:// URL")


def parse_config(text: str, source: str = "<config>") -> GUIConfig:
    """
    @raise ConfigError: listing every problem of the file.
    """
    stripped = text.lstrip()
    if not stripped.startswith("["):
        text = "[gui]\n" + text
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";", "#"))
    try:
        parser.read_string(text, source)
    except configparser.Error as e:
        raise ConfigError(f"{source}: {e}") from None
    problems: list[str] = []
    for section in parser.sections():
        if section != "gui":
            problems.append(f"{source}: unknown section [{section}] (only [gui])")
    values: dict[str, str] = {}
    if parser.has_section("gui"):
        for key, value in parser.items("gui"):
            if key not in _KEYS:
                problems.append(
                    f"{source}: unknown key {key!r}; known: {', '.join(sorted(_KEYS))}"
                )
                continue
            values[key] = _unquote(value)
    managerURL = values.get("manager_url") or None
    if managerURL:
        _checkURL(managerURL, f"{source}: manager_url", problems)
        if "manager_host" in values:
            problems.append(f"{source}: set manager_url or MANAGER_HOST, not both")
    elif "manager_host" in values:
        host = values["manager_host"]
        port = values.get("manager_port", str(DEFAULT_MANAGER_PORT))
        if not host or any(c in host for c in "/@ ?#"):
            problems.append(f"{source}: MANAGER_HOST {host!r} is not a host name or address")
        if not port.isdigit() or not 0 < int(port) < 65536:
            problems.append(f"{source}: MANAGER_PORT {port!r} is not a port number")
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        managerURL = f"http://{host}:{port}/"
    elif "manager_port" in values:
        problems.append(f"{source}: MANAGER_PORT without MANAGER_HOST")
    secure = values.get("secure_cookies", "false").lower()
    if secure not in ("true", "false", "yes", "no", "1", "0"):
        problems.append(f"{source}: secure_cookies must be true or false, not {secure!r}")
    origins = tuple(o.strip() for o in values.get("allowed_origins", "").split(",") if o.strip())
    for origin in origins:
        _checkURL(origin, f"{source}: allowed_origins", problems)
    if problems:
        raise ConfigError("\n".join(problems))
    return GUIConfig(
        managerURL=managerURL,
        listen=values.get("listen") or None,
        secureCookies=secure in ("true", "yes", "1"),
        allowedOrigins=origins,
    )


def load_config(path: str | None) -> GUIConfig:
    """Read C{path}; L{None} means all defaults.  @raise ConfigError."""
    if path is None:
        return GUIConfig()
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    return parse_config(text, path)
