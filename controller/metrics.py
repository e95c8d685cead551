"""The controller's Prometheus collector (docs/observability.md): gRPC requests (the
interceptor's families), reconcile passes and their duration, whether this replica leads,
failed etcd attempts and route pushes, read from the objects that keep them at each scrape."""
from __future__ import annotations

from serpens.common.grpc_metrics import RequestMetrics
from serpens.common.metrics import counter, gauge
from serpens.common.store import Store

from .reconciler import Reconciler


# Every family exported: name (counters without _total) -> (type, labels); checked against
# a real controller's scrape (tests/test_metrics_scrape.py) and by the dashboard's test.
FAMILIES = {
    "serpens_grpc_server_handled": ("counter", ("method", "code")),
    "serpens_grpc_server_handling_seconds": ("histogram", ("method",)),
    "serpens_controller_etcd_errors": ("counter", ("kind",)),
    "serpens_controller_leader": ("gauge", ()),
    "serpens_controller_reconcile_passes": ("counter", ("result",)),
    "serpens_controller_reconcile_seconds": ("histogram", ()),
    "serpens_controller_route_pushes": ("counter", ()),
}


class ControllerCollector:
    def __init__(self, requests: RequestMetrics, store: Store):
        self.requests, self.store = requests, store
        self.reconciler: Reconciler | None = None   # set once it exists

    def describe(self):
        return []

    def collect(self):
        for c in self.requests.collectors():
            yield from c.collect()
        errors = counter("serpens_controller_etcd_errors", "Failed etcd attempts (each retried "
                         "until the operation's deadline), by kind", ("kind",))
        for kind, n in sorted(self.store.errors.items()):
            errors.add_metric([kind], n)
        yield errors
        r = self.reconciler
        leader = gauge("serpens_controller_leader", "1 while this controller replica leads",
                       ())
        passes = counter("serpens_controller_reconcile_passes", "Reconcile passes of an SFC, "
                         "by result (done, retry, error)", ("result",))
        pushes = counter("serpens_controller_route_pushes", "Route sets gateways accepted",
                         ())
        leader.add_metric([], 1 if r is not None and r.leading.is_set() else 0)
        if r is not None:
            for result in ("done", "retry", "error"):
                passes.add_metric([result], r.passes[result])
            pushes.add_metric([], r.route_pushes())
            yield from r.pass_seconds.collect()
        yield from (leader, passes, pushes)
