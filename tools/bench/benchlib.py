"""Pieces the manager benchmarks share (run from tools/bench, which is on sys.path)."""

from __future__ import annotations

import shutil
from typing import Any

from twisted.internet.task import deferLater


async def endManager(reactor: Any, service: Any, work: str, keep: bool) -> None:
    """
    End every node an in-process benchmark manager made, whatever happened,
    stop the manager, and remove its work directory unless C{keep}.
    """
    manager = service.manager
    if manager is not None and manager.nodes:
        await manager.shutdown()
        while manager.phase != "STOPPED":
            await deferLater(reactor, 0.1, lambda: None)
    await service.stopService()
    if keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
