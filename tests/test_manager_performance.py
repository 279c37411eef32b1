"""
Tests of the service's performance figures: rates from status counter
samples, restarts, the service totals, the original's keys, and the
Prometheus endpoint (through StubTreq, behind the API token).
"""

from __future__ import annotations

from typing import Any

from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from conpaassql.manager.performance import (
    MetricsResource,
    PerformanceTracker,
    Sample,
    prometheusText,
)
from conpaassql.rpc.resource import TokenAuth


def status(**counters: int) -> dict[str, int]:
    base = {"Uptime": 100, "Questions": 0, "Com_select": 0, "Threads_connected": 1}
    base.update(counters)
    return base


class TrackerTests(SynchronousTestCase):
    def test_rates(self) -> None:
        t = PerformanceTracker(window=60)
        t.record(1, Sample(1000.0, status(Questions=100, Com_select=50, Com_insert=5,
                                          Com_update=5, Bytes_sent=1000, Bytes_received=500)))
        t.record(1, Sample(1010.0, status(Uptime=110, Questions=300, Com_select=150,
                                          Com_insert=25, Com_update=15, Com_delete_multi=10,
                                          Bytes_sent=3000, Bytes_received=1500,
                                          Threads_connected=7, Slow_queries=3),
                           probeMs=4.5))
        f = t.node(1)
        assert f is not None
        self.assertEqual(f["queries_per_second"], 20.0)
        self.assertEqual(f["reads_per_second"], 10.0)
        self.assertEqual(f["writes_per_second"], 4.0)
        self.assertEqual(f["slow_queries_per_second"], 0.3)
        self.assertEqual(f["bytes_out_per_second"], 200.0)
        self.assertEqual(f["bytes_in_per_second"], 100.0)
        self.assertEqual(f["connections"], 7)
        self.assertEqual(f["response_time"], 4.5)
        self.assertIsNone(f["replication_lag"])

    def test_one_sample_has_no_rate(self) -> None:
        t = PerformanceTracker()
        t.record(1, Sample(1000.0, status(Questions=100, Threads_connected=3)))
        f = t.node(1)
        assert f is not None
        self.assertIsNone(f["queries_per_second"])
        self.assertEqual(f["connections"], 3)
        self.assertIsNone(t.node(2))

    def test_window_slides(self) -> None:
        t = PerformanceTracker(window=20)
        for i in range(10):
            # 100 queries a second for the first 5 samples, then 10 a second
            q = i * 1000 if i < 5 else 4000 + (i - 4) * 100
            t.record(1, Sample(1000.0 + 10 * i, status(Uptime=100 + 10 * i, Questions=q)))
        f = t.node(1)
        assert f is not None
        self.assertEqual(f["queries_per_second"], 10.0)
        self.assertLessEqual(f["window"], 20.0)

    def test_restart_drops_older_samples(self) -> None:
        t = PerformanceTracker()
        t.record(1, Sample(1000.0, status(Uptime=500, Questions=10_000)))
        t.record(1, Sample(1010.0, status(Uptime=3, Questions=20)))
        t.record(1, Sample(1020.0, status(Uptime=13, Questions=120)))
        f = t.node(1)
        assert f is not None
        self.assertEqual(f["queries_per_second"], 10.0)

    def test_out_of_order_and_duplicate_samples(self) -> None:
        t = PerformanceTracker()
        t.record(1, Sample(1000.0, status(Questions=0)))
        t.record(1, Sample(1010.0, status(Uptime=110, Questions=100)))
        t.record(1, Sample(1005.0, status(Uptime=105, Questions=99999)))
        t.record(1, Sample(1010.0, status(Uptime=110, Questions=200)))
        f = t.node(1)
        assert f is not None
        self.assertEqual(f["queries_per_second"], 20.0)

    def test_service_totals_and_original_keys(self) -> None:
        t = PerformanceTracker()
        t.record(1, Sample(0.0, status(Questions=0, Bytes_sent=0, Bytes_received=0)), "MASTER")
        t.record(1, Sample(10.0, status(Uptime=110, Questions=100, Bytes_sent=100,
                                        Bytes_received=100, Aborted_connects=10,
                                        Threads_connected=2), probeMs=2.0), "MASTER")
        t.record(2, Sample(0.0, status(Questions=0, Bytes_sent=0, Bytes_received=0)), "SLAVE")
        t.record(2, Sample(10.0, status(Uptime=110, Questions=50, Bytes_sent=0,
                                        Bytes_received=0, Threads_connected=3),
                           lag=4.0, probeMs=4.0), "SLAVE")
        r = t.report()
        self.assertEqual(r["request_rate"], 15.0)
        self.assertEqual(r["error_rate"], 1.0)
        self.assertEqual(r["throughput"], 20.0)
        self.assertEqual(r["response_time"], 3.0)
        self.assertEqual(r["service"]["connections"], 5)
        self.assertEqual(r["service"]["replication_lag"], 4.0)
        self.assertEqual(r["nodes"]["2"]["role"], "SLAVE")
        self.assertEqual(sorted(r["nodes"]), ["1", "2"])
        t.forget(2)
        self.assertEqual(sorted(t.report()["nodes"]), ["1"])

    def test_empty_report(self) -> None:
        r = PerformanceTracker().report()
        self.assertEqual(r["nodes"], {})
        self.assertIsNone(r["request_rate"])
        self.assertIsNone(r["throughput"])
        self.assertEqual(r["service"]["connections"], 0)

    def test_garbage_counters_do_not_break(self) -> None:
        t = PerformanceTracker()
        t.record(1, Sample(0.0, {"Questions": "x", "Uptime": None}))  # type: ignore[dict-item]
        t.record(1, Sample(1.0, {"Questions": 5}))
        self.assertEqual(t.node(1)["queries_per_second"], 5.0)  # type: ignore[index]


class PrometheusTests(SynchronousTestCase):
    def tracker(self) -> PerformanceTracker:
        t = PerformanceTracker()
        t.record(3, Sample(0.0, status(Questions=0)), "MASTER")
        t.record(3, Sample(2.0, status(Uptime=102, Questions=10, Threads_connected=4)), "MASTER")
        return t

    def test_text(self) -> None:
        text = prometheusText(self.tracker()).decode()
        self.assertIn('conpaassql_node_queries_per_second{node="3",role="MASTER"} 5.0', text)
        self.assertIn("conpaassql_service_queries_per_second 5.0", text)
        self.assertIn("conpaassql_service_connections 4.0", text)
        self.assertIn("# HELP conpaassql_service_replication_lag", text)

    def get(self, headers: dict[bytes, list[bytes]]) -> Any:
        resource = MetricsResource(self.tracker(), TokenAuth(["sekrit-token"]))
        treq = StubTreq(resource)
        response = self.successResultOf(treq.get("http://manager/metrics", headers=headers))
        return response, self.successResultOf(treq.content(response))

    def test_needs_token(self) -> None:
        response, body = self.get({})
        self.assertEqual(response.code, 401)
        self.assertNotIn(b"queries", body)
        response, body = self.get({b"authorization": [b"Bearer wrong"]})
        self.assertEqual(response.code, 401)

    def test_with_token(self) -> None:
        response, body = self.get({b"authorization": [b"Bearer sekrit-token"]})
        self.assertEqual(response.code, 200)
        self.assertTrue(
            response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain")
        )
        self.assertIn(b"conpaassql_service_queries_per_second 5.0", body)
