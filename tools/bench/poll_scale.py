"""
tools/bench/poll-scale: the cost of a poll cycle against the OpenNebula
simulator holding N of the service's VMs plus N VMs of another user (default
N = 1000), beside the naive per-VM one.vm.info polling.

The simulator runs in a child process (python -m conpaassql.iaas.onesim, real
HTTP on 127.0.0.1), so the CPU time measured here (time.process_time) is the
manager's (or the driver's) side only.  Memory is the peak of Python
allocations during one cycle (tracemalloc) and the process's maximum RSS.

--mode manager (the default): a real Manager (SQLite registry, the OpenNebula
driver, real agent clients) adds N nodes with add_nodes; their VMs run in the
simulator but boot nothing, so the nodes stay BOOTING and every agent probe
is refused.  It measures, one cycle every poll_interval as the poller runs
them: the cloud part of a cycle (driver.list() + reconciling the nodes), the
whole cycle (with the agent probes; the CPU of a whole poll_interval, so
probes that go on between cycles count), and the whole cycle when every
agent accepts connections and never answers.  Agent probes are not cloud
calls: a cycle waits for them at most half the poll interval, at most
probe_concurrency run at once, and a node whose probe still waits is not
probed again, so slow agents cost neither cloud calls nor a longer cycle.
--mode driver: the driver's list() alone.

Goal (issue 4): 1 call and < 100 ms of CPU per cycle at 1,000 VMs.

Measured (2-core Debian 12 VM, Python 3.11, 1,000 + 1,000 VMs, 6.10 replies,
other test runs on the machine at the same time; two runs):

    manager: list + reconcile (the cloud part)  1 call/cycle,   80-89 ms CPU, 0.10-0.11 s wall, 14 MB peak alloc
    manager: whole cycle, agents refuse         1 call/cycle,  198-222 ms CPU per 2 s (about 140 probes), 1.1 s wall
    manager: whole cycle, agents hang (5 s)     1 call/cycle,   87-93 ms CPU, at most 1.1 s wall
    naive per-VM one.vm.info (8 at a time)   1000 calls/cycle, 818-956 ms CPU, 1.5-3.0 s wall
    manager process max RSS 92 MB (38 MB for the manager with 1,000 nodes)

A refused probe costs about 1 ms of CPU and 0.3 s of wall time (Twisted's
HostnameEndpoint waits its 0.3 s attempt delay before it reports the
failure).  Before replies were parsed with the cyclic GC paused,
the cloud part took about 120 ms of CPU; before probes stopped holding up
the cycle, a cycle with 1,000 silent agents would have lasted 1000 / 20 x 6 s = 300 s.
"""

from __future__ import annotations

import argparse
import os
import resource
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer, protocol, reactor, task

from conpaassql.iaas.base import NodeSpec, vmName
from conpaassql.iaas.opennebula import makeDriver, parseVM
from conpaassql.manager import drivers
from conpaassql.manager.config import ManagerConfig
from conpaassql.manager.registry import Registry
from conpaassql.manager.service import Manager
from conpaassql.rpc.client import RPCClient

TAG = "bench"


def freePort() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def waitForServer(port: int) -> None:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            await task.deferLater(reactor, 0.05)
    raise SystemExit("the simulator did not start")


def startSimulator(workdir: str, others: int) -> tuple[subprocess.Popen[bytes], int]:
    """The simulator in a child process (VMs RUNNING at once, nothing booted)."""
    port = freePort()
    child = subprocess.Popen(
        [sys.executable, "-m", "conpaassql.iaas.onesim", "--listen", f"tcp:{port}:interface=127.0.0.1",
         "--user", "bench", "--password-file", os.path.join(workdir, "password"), "--others", str(others),
         "--delays", "0,0,0,0,0", "--network", "127.43.0.0/16", "--scratch", os.path.join(workdir, "vms")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return child, port


def iaasSettings(workdir: str, port: int) -> dict[str, str]:
    with open(os.path.join(workdir, "password")) as f:
        password = f.read().strip()
    return {
        "OPENNEBULA_URL": f"http://127.0.0.1:{port}/RPC2", "OPENNEBULA_USER": "bench",
        "OPENNEBULA_PASSWORD": password, "OPENNEBULA_IMAGE_ID": "1", "OPENNEBULA_NETWORK_ID": "0",
        "OPENNEBULA_TIMEOUT": "120",
    }


def stopChild(child: subprocess.Popen[bytes]) -> None:
    child.send_signal(signal.SIGINT)
    try:
        child.wait(10)
    except subprocess.TimeoutExpired:
        child.kill()


def report(label: str, calls: float, cpu: list[float], wall: list[float], peak: list[int]) -> None:
    print(f"{label:<44} calls/cycle {calls:>6g}   CPU/cycle median {statistics.median(cpu) * 1000:8.1f} ms"
          f" (max {max(cpu) * 1000:.1f})   wall median {statistics.median(wall) * 1000:8.1f} ms"
          + (f"   peak alloc {max(peak) / 1e6:6.1f} MB" if peak else ""), flush=True)


def maxRSS() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def measure(
    count: int, cycle: Callable[[], Awaitable[Any]], calls: Callable[[], int],
    period: float = 0.0,
) -> tuple[float, list[float], list[float], list[int]]:
    """
    Run C{cycle} C{count} times, a new one every C{period} seconds at most:
    the calls per cycle (C{calls()} counts the calls so far), the CPU seconds
    of each even period (what runs in the background between cycles
    included) and the wall seconds of its cycle, the peak of allocations of
    the odd ones (tracemalloc costs CPU).
    """
    cpu: list[float] = []
    wall: list[float] = []
    peak: list[int] = []
    before = calls()
    for i in range(count):
        traced = i % 2 == 1
        if traced:
            tracemalloc.start()
        c0, w0 = time.process_time(), time.monotonic()
        await cycle()
        w1 = time.monotonic()
        if w1 - w0 < period:
            await task.deferLater(reactor, period - (w1 - w0))
        if traced:
            peak.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
        else:
            cpu.append(time.process_time() - c0)
            wall.append(w1 - w0)
    return (calls() - before) / count, cpu, wall, peak


async def naivePolling(driver: Any, vmIds: list[str], count: int) -> None:
    """The naive way: one.vm.info for every VM, 8 at a time."""
    sem = defer.DeferredSemaphore(8)

    async def info(vmId: str) -> Any:
        return parseVM(str(await driver.rpc.call("one.vm.info", int(vmId))))

    async def cycle() -> None:
        await defer.gatherResults([
            sem.run(lambda v=v: defer.Deferred.fromCoroutine(info(v))) for v in vmIds
        ])

    report("naive per-VM one.vm.info (x8)",
           *await measure(count, cycle, lambda: sum(driver.rpc.calls.values())))


async def run(args: argparse.Namespace) -> None:
    if args.mode == "manager":
        await runManager(args)
    else:
        await runDriver(args)


async def runDriver(args: argparse.Namespace) -> None:
    workdir = tempfile.mkdtemp(prefix="poll-scale-")
    child, port = startSimulator(workdir, args.others)
    driver = None
    try:
        await waitForServer(port)
        driver = makeDriver({"DRIVER": "OPENNEBULA_XMLRPC", **iaasSettings(workdir, port)},
                            stateDir=workdir, reactor=reactor, serviceTag=TAG)
        start = time.monotonic()
        sem = defer.DeferredSemaphore(8)
        created: list[str] = []

        async def create(n: int) -> None:
            context = {"MANAGER_URL": "http://127.0.0.1:9/", "NODE_ID": str(n),
                       "AGENT_TOKEN": secrets.token_urlsafe(24), "AGENT_PORT": "60000", "SERVICE_TAG": TAG}
            info = await driver.create(NodeSpec(n, vmName(TAG, n), context))
            created.append(info.vmId)

        await defer.gatherResults([sem.run(lambda n=n: defer.Deferred.fromCoroutine(create(n)))
                                   for n in range(1, args.vms + 1)])
        print(f"set-up: {args.vms} service VMs created (+{args.others} of another user) "
              f"in {time.monotonic() - start:.1f} s", flush=True)
        await task.deferLater(reactor, 0.5)
        vms = await driver.list()
        running = sum(1 for v in vms if v.state == "RUNNING")
        print(f"list(): {len(vms)} VMs of the service ({running} RUNNING)")

        async def pooled() -> None:
            found = len(await driver.list())
            assert found == args.vms, found

        report("driver list() (one.vmpool.info)",
               *await measure(args.cycles, pooled, lambda: sum(driver.rpc.calls.values())))
        await naivePolling(driver, created, max(2, args.cycles // 5))
        print(f"driver process max RSS: {maxRSS():.0f} MB")
    finally:
        if driver is not None:
            await driver.close()
        stopChild(child)


class _Silent(protocol.Protocol):
    """An 'agent' that accepts connections and never answers."""


async def runManager(args: argparse.Namespace) -> None:
    workdir = tempfile.mkdtemp(prefix="poll-scale-")
    child, port = startSimulator(workdir, args.others)
    manager: Manager | None = None
    silent: list[Any] = []
    try:
        await waitForServer(port)
        config = ManagerConfig(
            driver="OPENNEBULA_XMLRPC", driverSettings=iaasSettings(workdir, port),
            # Nodes never time out.
            poll_interval=args.poll_interval, boot_timeout=7 * 86400,
            unreachable_timeout=7 * 86400, list_timeout=120,
            probe_timeout=args.probe_timeout, agent_port=freePort(),
        )

        def driverFactory(tag: str) -> Any:
            return drivers.makeDriver(config.driver, config.driverSettings, stateDir=workdir,
                                      reactor=reactor, serviceTag=tag)

        def clientFactory(url: str, token: str) -> Any:
            return RPCClient(url, token, reactor=reactor, timeout=config.agent_call_timeout,
                             connectTimeout=5.0)

        rssBefore = maxRSS()
        manager = Manager(config, Registry.atPath(os.path.join(workdir, "registry.sqlite")),
                          driverFactory, clientFactory, reactor)
        # No manager URL is set, so its poller never starts: the bench runs
        # the cycles itself, one every poll_interval, as the poller would.
        manager.startService()
        await manager.ready
        nodes = manager.nodes
        start = time.monotonic()
        while len(nodes) < args.vms:  # add_nodes in the API's largest steps
            await manager.addNodes("agent", min(50, args.vms - len(nodes)))
        while any(n.core.record.vm_id is None for n in nodes.values()):
            await task.deferLater(reactor, 0.1)
        while any(n.state != "BOOTING" for n in nodes.values()):
            await manager.pollOnce()
        print(f"set-up: {args.vms} nodes added through the manager, their VMs RUNNING in the "
              f"simulator (+{args.others} VMs of another user) in {time.monotonic() - start:.1f} s; "
              f"the nodes are BOOTING (no agent answers)", flush=True)
        driver: Any = manager.driver

        def cloudCalls() -> int:
            return sum(driver.rpc.calls.values())

        period = config.poll_interval
        report("manager: list + reconcile (the cloud part)",
               *await measure(args.cycles, manager.pollCloud, cloudCalls))
        report("manager: whole poll cycle, agents refuse",
               *await measure(args.cycles, manager.pollOnce, cloudCalls, period))
        print(f"manager process max RSS: {maxRSS():.0f} MB ({maxRSS() - rssBefore:.0f} MB more than "
              f"before the manager started)", flush=True)
        await naivePolling(driver, [n.core.record.vm_id or "" for n in nodes.values()],
                           max(2, args.cycles // 5))
        # Agents that accept connections and never answer: every probe waits
        # probe_timeout, probe_concurrency at a time.
        factory = protocol.Factory.forProtocol(_Silent)
        for node in nodes.values():
            silent.append(reactor.listenTCP(config.agent_port, factory, interface=node.core.record.ip))
        report(f"manager: whole poll cycle, agents hang ({config.probe_timeout:g} s timeout,"
               f" {config.probe_concurrency} at once)",
               *await measure(args.cycles, manager.pollOnce, cloudCalls, period))
        print("  (agent probes are not cloud calls; a node whose probe still waits is not probed again)")
    finally:
        for port_ in silent:
            await port_.stopListening()
        if manager is not None:
            await manager.stopService()
        stopChild(child)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vms", type=int, default=1000, help="the service's VMs (default %(default)s)")
    parser.add_argument("--others", type=int, default=1000, help="other users' VMs (default %(default)s)")
    parser.add_argument("--cycles", type=int, default=20, help="poll cycles measured (default %(default)s)")
    parser.add_argument("--mode", choices=("manager", "driver"), default="manager",
                        help="a whole manager poll cycle, or the driver's list() alone (default %(default)s)")
    parser.add_argument("--probe-timeout", type=float, default=5.0,
                        help="manager mode: probe_timeout (default %(default)s, the manager's)")
    parser.add_argument("--poll-interval", type=float, default=2.0,
                        help="manager mode: poll_interval (default %(default)s, the manager's)")
    args = parser.parse_args()
    failures: list[Any] = []

    def done(result: Any) -> None:
        if isinstance(result, Exception) or hasattr(result, "getTraceback"):
            failures.append(result)
            print(result.getTraceback() if hasattr(result, "getTraceback") else result, file=sys.stderr)
        reactor.stop()

    reactor.callWhenRunning(lambda: defer.Deferred.fromCoroutine(run(args)).addBoth(done))
    reactor.run()
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
