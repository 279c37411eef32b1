"""
Benchmark: the cost of TLS on the wire.  One RPCServerService (a trivial
C{ping} method, no database) listening both on plain TCP and on an ssl:
endpoint with a service-CA certificate and mutual TLS; the RPC client calls
C{ping} over each, N calls on one persistent connection, then N calls with a
new connection (and so a new handshake) each, rounds alternating the order.
Prints the median per-call latency of each path and the TLS/plain ratios.

    tools/bench/tls-calls [--calls 500] [--rounds 4]

Last measured (2026-11-25, 2 cores busy with other test runs, 300 calls x 4
rounds, EC P-256, TLS 1.3): one connection: http 0.50 ms/call, https 0.76
ms/call (1.5x); a connection per call: http 1.04 ms, https 4.41 ms (4.3x:
the handshake, hence the manager's persistent pool per agent).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from typing import Any

from twisted.internet import defer, task

from conpaassql.common.tls import ClientTLS, ServerTLS, ServiceCA
from conpaassql.rpc.client import RPCClient
from conpaassql.rpc.dispatch import Params, method
from conpaassql.rpc.serve import RPCServerService

NAME = "conpaassql-bench-node-1"


class Ping:
    @method()
    async def ping(self, params: Params) -> str:
        return "pong"


class Bench(RPCServerService):
    def startService(self) -> None:
        token, _ = self.prepareStateDir()
        super().startService()
        self.serve([Ping()], token)


async def timeCalls(url: str, token: str, calls: int, tls: Any, persistent: bool) -> float:
    """Median seconds per call."""
    times = []
    client = RPCClient(url, token, tls=tls, persistent=persistent)
    try:
        for _ in range(calls):
            start = time.perf_counter()
            await client.call("ping")
            times.append(time.perf_counter() - start)
    finally:
        await client.close()
    return statistics.median(times)


async def main(reactor: Any, calls: int, rounds: int) -> None:
    ca = ServiceCA.create("bench CA")
    manager = ca.issue("conpaassql manager", ["localhost"])
    with tempfile.TemporaryDirectory() as stateDir:
        service = Bench(stateDir, "tcp:0:interface=127.0.0.1",
                        os.path.join(stateDir, "api-token"), reactor=reactor,
                        alsoListen=["ssl:0:interface=127.0.0.1"], stopProcess=lambda: None)
        service.serverTLS = ServerTLS(ca.issue(NAME, [NAME]), clientCA=ca.certificate)
        service.startService()
        try:
            port = await service.listening
            with open(os.path.join(stateDir, "api-token")) as f:
                token = f.read().strip()
            plain = f"http://127.0.0.1:{port.getHost().port}/"
            secure = f"https://127.0.0.1:{service.otherPorts[0].getHost().port}/"
            policy = ClientTLS(ca.certificate, hostname=NAME, clientCertificate=manager)
            results: dict[tuple[str, bool], list[float]] = {}
            for n in range(rounds):
                order = [("http", plain, None), ("https", secure, policy)]
                if n % 2:
                    order.reverse()
                for persistent in (True, False):
                    for scheme, url, tls in order:
                        results.setdefault((scheme, persistent), []).append(
                            await timeCalls(url, token, calls, tls, persistent))
        finally:
            await service.stopService()
    for persistent in (True, False):
        what = "one connection" if persistent else "a connection per call"
        http = statistics.median(results[("http", persistent)])
        https = statistics.median(results[("https", persistent)])
        print(f"{what:>22}: http {http * 1e3:.3f} ms/call, https (mutual TLS) "
              f"{https * 1e3:.3f} ms/call, ratio {https / http:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, args.calls, args.rounds)))
