"""
Looking at other processes through C{/proc} (Linux), for the agent (a
server left behind by a killed agent) and the LOCAL cloud driver (its
detached agents).  Small blocking reads; fine on the reactor thread.
"""

from __future__ import annotations

import os

__all__ = ["pid_alive", "process_argv"]


def pid_alive(pid: int) -> bool:
    """
    Whether a process exists and is not a zombie.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def process_argv(pid: int) -> list[str]:
    """
    The arguments of a process; C{[]} if they cannot be read.
    """
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    return [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]
