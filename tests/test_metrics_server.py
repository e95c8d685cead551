"""common/metrics.MetricsServer: a scrape reads and formats at SCRAPE_NICE, on a thread of
its own, so it yields to the instances that share its CPU; the process's other threads keep
their priority."""
import os
import threading
import urllib.request

import pytest
from prometheus_client.core import GaugeMetricFamily

from serpens.common.metrics import SCRAPE_NICE, MetricsServer

pytestmark = pytest.mark.unit


class Recording:
    """A collector that reports the priority of the thread that collects it."""

    def __init__(self):
        self.seen = []

    def collect(self):
        nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        self.seen.append(nice)
        g = GaugeMetricFamily("serpens_test_nice", "the collecting thread's nice value")
        g.add_metric([], nice)
        yield g


def test_a_scrape_runs_at_scrape_nice_and_leaves_the_process_alone():
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    collector = Recording()
    server = MetricsServer("127.0.0.1:0", collector, None)
    try:
        for _ in range(2):
            with urllib.request.urlopen(server.url, timeout=10) as r:
                body = r.read().decode()
            assert f"serpens_test_nice {float(SCRAPE_NICE)}" in body
    finally:
        server.close()
    assert collector.seen == [SCRAPE_NICE, SCRAPE_NICE]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own
