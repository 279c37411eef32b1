"""
tools/bench/poll-scale: the cost of one poll cycle of the OpenNebula driver
against a simulator holding N of the service's VMs plus N VMs of another
user (default N = 1000), beside the naive per-VM one.vm.info polling.

The simulator runs in a child process (python -m conpaassql.iaas.onesim, real
HTTP on 127.0.0.1), so the CPU time measured here (time.process_time) is the
driver side only: sending the call, reading and decoding the XML-RPC reply,
parsing the pool document and filtering it.  Memory is the peak of Python
allocations during one cycle (tracemalloc) and the process's maximum RSS.

Goal (issue 4): 1 call and < 100 ms of CPU per cycle at 1,000 VMs.
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

from twisted.internet import defer, reactor, task

from conpaassql.iaas.base import NodeSpec, vmName
from conpaassql.iaas.opennebula import makeDriver, parseVM

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


async def run(args: argparse.Namespace) -> None:
    workdir = tempfile.mkdtemp(prefix="poll-scale-")
    passwordFile = os.path.join(workdir, "password")
    port = freePort()
    child = subprocess.Popen(
        [sys.executable, "-m", "conpaassql.iaas.onesim", "--listen", f"tcp:{port}:interface=127.0.0.1",
         "--user", "bench", "--password-file", passwordFile, "--others", str(args.others),
         "--delays", "0,0,0,0,0", "--network", "127.43.0.0/16", "--scratch", os.path.join(workdir, "vms")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    driver = None
    try:
        await waitForServer(port)
        with open(passwordFile) as f:
            password = f.read().strip()
        driver = makeDriver({
            "DRIVER": "OPENNEBULA_XMLRPC", "OPENNEBULA_URL": f"http://127.0.0.1:{port}/RPC2",
            "OPENNEBULA_USER": "bench", "OPENNEBULA_PASSWORD": password, "OPENNEBULA_IMAGE_ID": "1",
            "OPENNEBULA_NETWORK_ID": "0", "OPENNEBULA_TIMEOUT": "120",
        }, stateDir=workdir, reactor=reactor, serviceTag=TAG)
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

        def measure(label: str, calls: int, cpu: list[float], wall: list[float], peak: list[int]) -> None:
            print(f"{label:<34} calls/cycle {calls:>5}   CPU/cycle median {statistics.median(cpu) * 1000:8.1f} ms"
                  f" (max {max(cpu) * 1000:.1f})   wall median {statistics.median(wall) * 1000:8.1f} ms"
                  f"   peak alloc {max(peak) / 1e6:6.1f} MB")

        async def cycles(count: int, cycle: Callable[[], Awaitable[int]]) -> tuple[int, list[float], list[float], list[int]]:
            # CPU and wall time on even cycles, memory on odd ones (tracemalloc costs CPU).
            cpu, wall, peak = [], [], []
            calls = 0
            for i in range(count):
                before = sum(driver.rpc.calls.values())
                traced = i % 2 == 1
                if traced:
                    tracemalloc.start()
                c0, w0 = time.process_time(), time.monotonic()
                found = await cycle()
                if traced:
                    peak.append(tracemalloc.get_traced_memory()[1])
                    tracemalloc.stop()
                else:
                    cpu.append(time.process_time() - c0)
                    wall.append(time.monotonic() - w0)
                calls = sum(driver.rpc.calls.values()) - before
                assert found == args.vms, found
            return calls, cpu, wall, peak

        async def pooled() -> int:
            return len(await driver.list())

        async def naive() -> int:
            async def info(vmId: str) -> Any:
                return parseVM(str(await driver.rpc.call("one.vm.info", int(vmId))))

            results = await defer.gatherResults([
                sem.run(lambda v=v: defer.Deferred.fromCoroutine(info(v))) for v in created
            ])
            return len(results)

        measure("driver list() (one.vmpool.info)", *await cycles(args.cycles, pooled))
        measure("naive per-VM one.vm.info (x8)", *await cycles(max(2, args.cycles // 5), naive))
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"driver process max RSS: {rss:.0f} MB")
    finally:
        if driver is not None:
            await driver.close()
        child.send_signal(signal.SIGINT)
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vms", type=int, default=1000, help="the service's VMs (default %(default)s)")
    parser.add_argument("--others", type=int, default=1000, help="other users' VMs (default %(default)s)")
    parser.add_argument("--cycles", type=int, default=20, help="poll cycles measured (default %(default)s)")
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
