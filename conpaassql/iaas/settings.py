"""
Helpers the cloud drivers share to read their C{[iaas]} settings: every
problem is appended to a list, so a driver reports them all at once.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, MutableSequence

from conpaassql.iaas.base import DriverConfigError, vmNamePrefix

__all__ = ["checkKeys", "checkServiceTag", "normalized", "seconds", "secretSetting"]


def normalized(settings: Mapping[str, str]) -> dict[str, str]:
    """The settings with upper-case keys and stripped values."""
    return {k.upper(): v.strip() for k, v in settings.items()}


def checkKeys(
    s: Mapping[str, str], known: Iterable[str], driver: str, problems: MutableSequence[str],
    *, prefixes: tuple[str, ...] = (),
) -> None:
    """Unknown keys (outside C{known} and C{prefixes}), and a C{DRIVER} that is not C{driver}."""
    for key in sorted(set(s) - {"DRIVER", *known}):
        if not (prefixes and key.startswith(prefixes)):
            problems.append(f"{key}: unknown setting for DRIVER = {driver}")
    if s.get("DRIVER", driver).upper() != driver:
        problems.append(f"DRIVER: is {s['DRIVER']!r}, this driver is {driver}")


def secretSetting(
    s: Mapping[str, str], key: str, fileKey: str, problems: MutableSequence[str], *, required: bool = True
) -> str:
    """
    A secret given as C{key}, or read from the file named by C{fileKey}
    (which must not be readable by others).  Returns "" when missing.
    """
    value, path = s.get(key, ""), s.get(fileKey, "")
    if value and path:
        problems.append(f"{key} and {fileKey}: set only one")
    elif path:
        try:
            with open(path, encoding="utf-8") as f:
                value = f.read().strip()
            if os.stat(path).st_mode & 0o077:
                problems.append(f"{fileKey}: {path} must not be readable by others (chmod 600)")
        except OSError as e:
            problems.append(f"{fileKey}: cannot read {path}: {e.strerror}")
        else:
            if not value:
                problems.append(f"{fileKey}: {path} is empty")
    elif not value and required:
        problems.append(f"{key}: missing (or set {fileKey})")
    return value


def seconds(s: Mapping[str, str], key: str, default: float, problems: MutableSequence[str]) -> float:
    """A number of seconds in (0, 3600]."""
    try:
        value = float(s.get(key) or default)
        if not 0 < value <= 3600:
            raise ValueError
    except ValueError:
        problems.append(f"{key}: must be a number of seconds, above 0 and at most 3600")
        return default
    return value


def checkServiceTag(serviceTag: str) -> None:
    """@raise DriverConfigError: if C{serviceTag} is not a valid service tag."""
    try:
        vmNamePrefix(serviceTag)
    except ValueError as e:
        raise DriverConfigError([str(e)]) from None
