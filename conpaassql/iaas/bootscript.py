"""
The agent VM's boot script, rendered from C{etc/agent-boot.sh.in}.

Both cloud drivers give a new VM the same script: OpenNebula as the CONTEXT
variable C{START_SCRIPT_BASE64} (one-context runs it with the other context
variables in its environment), libcloud as user data (cloud-init runs it;
the context variables are then written into the script itself, see
L{BootScript.userData}).

The template's C{@NAME@} placeholders are filled with shell-quoted values
(L{shlex.quote}), so no setting can add commands to the script.  Node values
(the agent token above all) are never written into the template text for
OpenNebula: they travel as context variables.

Settings (in the C{[iaas]} section, shared by the drivers):

    AGENT_PACKAGE       what pip installs on a VM without the package
                        (default C{conpaassql}); a requirement, e.g.
                        C{conpaassql==0.1.0}
    AGENT_WHEEL_URL     install this wheel instead (https://, or http://
                        only with AGENT_WHEEL_SHA256)
    AGENT_WHEEL_SHA256  the wheel's SHA-256 (checked before installing)
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Callable, Mapping, MutableSequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import conpaassql

__all__ = [
    "BOOT_KEYS",
    "DEFAULT_AGENT_TEMPLATE",
    "DEFAULT_MANAGER_TEMPLATE",
    "BootScript",
    "parseBootSettings",
    "renderPlaceholders",
]

_ETC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(conpaassql.__file__))), "etc")
#: The agent boot script template of this checkout.
DEFAULT_AGENT_TEMPLATE = os.path.join(_ETC, "agent-boot.sh.in")
#: The manager VM's boot script template of this checkout.
DEFAULT_MANAGER_TEMPLATE = os.path.join(_ETC, "manager-boot.sh.in")

#: The [iaas] keys L{parseBootSettings} reads.
BOOT_KEYS = ("AGENT_PACKAGE", "AGENT_WHEEL_URL", "AGENT_WHEEL_SHA256")

_PLACEHOLDER = re.compile(r"@([A-Z][A-Z0-9_]*)@")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_REQUIREMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-\[\],<>=!~ ]*")
_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")


def _shellQuote(name: str, value: str) -> str:
    return shlex.quote(value)


def renderPlaceholders(
    template: str, values: Mapping[str, str], *, source: str,
    quote: Callable[[str, str], str] = _shellQuote,
) -> str:
    """
    Replace every C{@NAME@} of C{template} with C{quote(NAME, values[NAME])}
    (shell-quoted by default).

    @raise ValueError: if the template uses a name C{values} lacks, or
        C{quote} refuses a value.
    """
    missing: list[str] = []

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in values:
            missing.append(name)
            return m.group(0)
        return quote(name, values[name])

    text = _PLACEHOLDER.sub(sub, template)
    if missing:
        raise ValueError(f"{source}: unknown placeholders {', '.join(sorted(set(missing)))}")
    return text


@dataclass(frozen=True)
class BootScript:
    """
    The rendered agent boot script (no node values in it).

    @ivar script: the script text, the same for every node.
    """

    script: str

    def userData(self, context: Mapping[str, str]) -> str:
        """
        The script with C{context} exported at its top, for clouds that
        have no context variables of their own (cloud-init user data).
        Values are shell-quoted; names must be environment variable names.

        @raise ValueError: for a name that is not one.
        """
        lines = []
        for name, value in context.items():
            if not _ENV_NAME.fullmatch(name):
                raise ValueError(f"context name {name[:40]!r} is not an environment variable name")
            lines.append(f"export {name}={shlex.quote(value)}")
        head, sep, rest = self.script.partition("\n")
        if not head.startswith("#!"):
            head, sep, rest = "#!/bin/sh", "\n", self.script
        return head + sep + "\n".join(lines) + "\n" + rest


def parseBootSettings(
    settings: Mapping[str, str], templateKey: str, problems: MutableSequence[str]
) -> BootScript | None:
    """
    Render the agent boot script from C{settings}: the template named by
    C{settings[templateKey]} (default L{DEFAULT_AGENT_TEMPLATE}) and the
    L{BOOT_KEYS}.  Problems are appended to C{problems}; L{None} is returned
    if there were any.  Reads the template file (a small blocking read, at
    configuration time).
    """
    start = len(problems)
    package = settings.get("AGENT_PACKAGE", "conpaassql").strip()
    url = settings.get("AGENT_WHEEL_URL", "").strip()
    digest = settings.get("AGENT_WHEEL_SHA256", "").strip().lower()
    if not _REQUIREMENT.fullmatch(package):
        problems.append("AGENT_PACKAGE: not a pip requirement (e.g. conpaassql==0.1.0)")
    if digest and not _SHA256.fullmatch(digest):
        problems.append("AGENT_WHEEL_SHA256: must be 64 hexadecimal digits")
    if url:
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            problems.append("AGENT_WHEEL_URL: must be an https:// URL")
        elif parts.scheme == "http" and not digest:
            problems.append("AGENT_WHEEL_URL: a plain-HTTP URL needs AGENT_WHEEL_SHA256")
        elif not parts.path.endswith(".whl"):
            problems.append("AGENT_WHEEL_URL: must name a .whl file")
    elif digest:
        problems.append("AGENT_WHEEL_SHA256: set without AGENT_WHEEL_URL")
    path = settings.get(templateKey, "").strip() or DEFAULT_AGENT_TEMPLATE
    try:
        with open(path, encoding="utf-8") as f:
            template = f.read()
    except OSError as e:
        problems.append(f"{templateKey}: cannot read the boot script template {path}: {e.strerror}")
        return None
    if len(problems) > start:
        return None
    try:
        script = renderPlaceholders(
            template,
            {"AGENT_PACKAGE": package, "AGENT_WHEEL_URL": url, "AGENT_WHEEL_SHA256": digest},
            source=path,
        )
    except ValueError as e:
        problems.append(f"{templateKey}: {e}")
        return None
    return BootScript(script)
