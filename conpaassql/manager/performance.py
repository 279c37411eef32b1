"""
Performance figures of the service, computed from periodic samples of every
node's server status counters (the agent's C{get_performance}: C{SHOW GLOBAL
STATUS}) and of its replication state.

Rates are the change of a counter between the oldest and the newest sample
inside a sliding window (default 60 s), divided by the time between them, so
they are real averages over the last minute and not the noise of one poll
interval.  A counter that goes down means the server restarted: the samples
before the restart are dropped.

Every figure, per node (C{nodes}) and for the service (C{service}):

  - C{queries_per_second}: statements sent by clients (C{Questions}).
  - C{reads_per_second}: C{SELECT} statements (C{Com_select}).
  - C{writes_per_second}: C{INSERT}, C{UPDATE}, C{DELETE}, C{REPLACE} and
    C{LOAD DATA} statements, single- and multi-table.
  - C{connections}: client connections open now (C{Threads_connected}).
  - C{slow_queries_per_second}: statements over C{long_query_time}
    (C{Slow_queries}).
  - C{bytes_in_per_second}, C{bytes_out_per_second}: C{Bytes_received},
    C{Bytes_sent}.
  - C{replication_lag}: seconds the node's replica is behind its master
    (C{Seconds_Behind_Master}); L{None} on a node that is not a slave, or
    whose replication does not run.  The service's is the largest.

The original's four keys are kept with these meanings:

  - C{request_rate}: C{queries_per_second}.
  - C{error_rate}: failed connections and aborted sessions per second
    (C{Aborted_connects} + C{Aborted_clients} + C{Access_denied_errors}); the
    server keeps no global count of failed statements.
  - C{throughput}: bytes per second through the server (in + out).
  - C{response_time}: milliseconds the manager's last health probe of the
    node took (agent round trip including a server ping); the service's is
    the mean over the nodes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CollectorRegistry, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from twisted.web.resource import Resource

from conpaassql.rpc.resource import TokenAuth, refusal

#: Counters summed into C{writes_per_second}.
WRITE_COUNTERS = (
    "Com_insert",
    "Com_insert_select",
    "Com_update",
    "Com_update_multi",
    "Com_delete",
    "Com_delete_multi",
    "Com_replace",
    "Com_replace_select",
    "Com_load",
)
ERROR_COUNTERS = ("Aborted_connects", "Aborted_clients", "Access_denied_errors")

#: Per-second figures: name -> counters summed.
RATES: dict[str, tuple[str, ...]] = {
    "queries_per_second": ("Questions",),
    "reads_per_second": ("Com_select",),
    "writes_per_second": WRITE_COUNTERS,
    "slow_queries_per_second": ("Slow_queries",),
    "bytes_in_per_second": ("Bytes_received",),
    "bytes_out_per_second": ("Bytes_sent",),
    "errors_per_second": ERROR_COUNTERS,
}

HELP = {
    "queries_per_second": "Statements sent by clients per second (Questions).",
    "reads_per_second": "SELECT statements per second (Com_select).",
    "writes_per_second": "INSERT/UPDATE/DELETE/REPLACE/LOAD statements per second.",
    "slow_queries_per_second": "Statements slower than long_query_time per second.",
    "bytes_in_per_second": "Bytes received from clients per second.",
    "bytes_out_per_second": "Bytes sent to clients per second.",
    "errors_per_second": "Failed connections and aborted sessions per second.",
    "connections": "Client connections open now (Threads_connected).",
    "replication_lag": "Seconds the replica is behind its master.",
    "response_time": "Milliseconds of the manager's last health probe of the node.",
}


@dataclass(frozen=True)
class Sample:
    """
    One reading of a node.

    @ivar timestamp: when the counters were read (seconds since the epoch).
    @ivar status: C{SHOW GLOBAL STATUS} counters.
    @ivar lag: C{Seconds_Behind_Master}, or L{None}.
    @ivar probeMs: how long the manager's probe of the node took, in ms.
    """

    timestamp: float
    status: Mapping[str, int]
    lag: float | None = None
    probeMs: float | None = None


def _int(status: Mapping[str, Any], name: str) -> int:
    value = status.get(name, 0)
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _sum(status: Mapping[str, Any], names: Iterable[str]) -> int:
    return sum(_int(status, n) for n in names)


def _restarted(old: Sample, new: Sample) -> bool:
    if _int(new.status, "Uptime") < _int(old.status, "Uptime"):
        return True
    return any(_sum(new.status, names) < _sum(old.status, names) for names in RATES.values())


class PerformanceTracker:
    """
    Keeps each node's samples of the last C{window} seconds and computes the
    figures documented in this module.
    """

    def __init__(self, window: float = 60.0, maxSamples: int = 1000) -> None:
        self.window = window
        self._maxSamples = maxSamples
        self._samples: dict[int, deque[Sample]] = {}
        self._roles: dict[int, str | None] = {}

    def record(self, nodeId: int, sample: Sample, role: str | None = None) -> None:
        """Add a sample of node C{nodeId}."""
        samples = self._samples.setdefault(nodeId, deque(maxlen=self._maxSamples))
        if samples and (sample.timestamp <= samples[-1].timestamp):
            if sample.timestamp < samples[-1].timestamp:
                return  # out of order: keep the newer one
            samples.pop()
        if samples and _restarted(samples[-1], sample):
            samples.clear()
        samples.append(sample)
        while len(samples) > 2 and sample.timestamp - samples[0].timestamp > self.window:
            samples.popleft()
        self._roles[nodeId] = role

    def forget(self, nodeId: int) -> None:
        """Drop a node (removed from the service)."""
        self._samples.pop(nodeId, None)
        self._roles.pop(nodeId, None)

    def nodeIds(self) -> list[int]:
        return sorted(self._samples)

    def node(self, nodeId: int) -> dict[str, Any] | None:
        """The figures of one node, or L{None} if it has no sample."""
        samples = self._samples.get(nodeId)
        if not samples:
            return None
        first, last = samples[0], samples[-1]
        span = last.timestamp - first.timestamp
        figures: dict[str, Any] = {}
        for name, counters in RATES.items():
            if span > 0:
                delta = _sum(last.status, counters) - _sum(first.status, counters)
                figures[name] = round(max(delta, 0) / span, 3)
            else:
                figures[name] = None
        figures["connections"] = _int(last.status, "Threads_connected")
        figures["replication_lag"] = last.lag
        figures["response_time"] = None if last.probeMs is None else round(last.probeMs, 3)
        figures["role"] = self._roles.get(nodeId)
        figures["window"] = round(span, 3)
        figures["timestamp"] = last.timestamp
        return figures

    def report(self) -> dict[str, Any]:
        """
        The C{get_service_performance} result: the original's four keys, the
        service's figures, and each node's.
        """
        nodes = {str(n): f for n in self.nodeIds() if (f := self.node(n)) is not None}
        service: dict[str, Any] = {}
        for name in RATES:
            values = [f[name] for f in nodes.values() if f[name] is not None]
            service[name] = round(sum(values), 3) if values else None
        service["connections"] = sum(f["connections"] for f in nodes.values())
        lags = [f["replication_lag"] for f in nodes.values() if f["replication_lag"] is not None]
        service["replication_lag"] = max(lags) if lags else None
        times = [f["response_time"] for f in nodes.values() if f["response_time"] is not None]
        service["response_time"] = round(sum(times) / len(times), 3) if times else None
        inOut = [service["bytes_in_per_second"], service["bytes_out_per_second"]]
        return {
            "request_rate": service["queries_per_second"],
            "error_rate": service["errors_per_second"],
            "throughput": None if None in inOut else round(sum(inOut), 3),  # type: ignore[arg-type]
            "response_time": service["response_time"],
            "service": service,
            "nodes": nodes,
            "window": self.window,
        }


class _TrackerCollector(Collector):
    def __init__(self, tracker: PerformanceTracker, prefix: str) -> None:
        self._tracker = tracker
        self._prefix = prefix

    def collect(self) -> Iterator[GaugeMetricFamily]:
        report = self._tracker.report()
        for name, text in HELP.items():
            node = GaugeMetricFamily(f"{self._prefix}_node_{name}", text, labels=["node", "role"])
            for nodeId, figures in report["nodes"].items():
                value = figures.get(name)
                if value is not None:
                    node.add_metric([nodeId, figures.get("role") or ""], float(value))
            yield node
            total = report["service"].get(name)
            service = GaugeMetricFamily(f"{self._prefix}_service_{name}", text)
            if total is not None:
                service.add_metric([], float(total))
            yield service


def prometheusText(tracker: PerformanceTracker, prefix: str = "conpaassql") -> bytes:
    """The tracker's figures in the Prometheus text exposition format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_TrackerCollector(tracker, prefix))
    return generate_latest(registry)




class MetricsResource(Resource):
    """
    C{/metrics}: the figures for Prometheus, behind the same bearer token as
    the JSON-RPC API.
    """

    isLeaf = True

    def __init__(self, tracker: PerformanceTracker, auth: TokenAuth) -> None:
        super().__init__()
        self._tracker = tracker
        self._auth = auth

    def render(self, request: Any) -> bytes:
        request.setHeader(b"cache-control", b"no-store")
        refused = refusal(request, self._auth)
        if refused is not None:
            return refused
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return prometheusText(self._tracker)


__all__ = [
    "MetricsResource",
    "PerformanceTracker",
    "RATES",
    "Sample",
    "WRITE_COUNTERS",
    "prometheusText",
]
