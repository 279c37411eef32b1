"""Pieces the manager benchmarks share (run from tools/bench, which is on sys.path)."""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater, react


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


def runManagerBench(
    doc: str,
    main: Callable[..., Awaitable[None]],
    count: tuple[str, int],
    settings: Sequence[tuple[str, str]],
) -> None:
    """
    Parse a manager benchmark's command line and run C{main(reactor, count,
    overrides, keep)} under the reactor.

    @param count: the option giving how many rounds (e.g. C{("--runs", 5)}).
    @param settings: C{(manager key, help)} of the C{[manager]} settings the
        command line may override (C{--poll-interval} for C{poll_interval}).
    """
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument(count[0], dest="count", type=int, default=count[1])
    for key, text in settings:
        parser.add_argument("--" + key.replace("_", "-"), dest=key, type=float, default=None,
                            help=text)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    overrides = {key: getattr(args, key) for key, _ in settings
                 if getattr(args, key) is not None}
    react(lambda reactor: Deferred.fromCoroutine(main(reactor, args.count, overrides, args.keep)))
