"""common/metrics.MetricsServer: a scrape reads (takes the component's locks) at the
thread's normal priority, then formats at SCRAPE_NICE, on a thread of its own, so it yields
to the instances that share its CPU without holding a lock while niced; the process's other
threads keep their priority."""
import os
import threading
import urllib.request

import pytest
from prometheus_client.core import GaugeMetricFamily

from serpens.common.metrics import SCRAPE_NICE, MetricsServer

pytestmark = pytest.mark.unit


def nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


class Samples(list):
    """A family's samples that note the priority they are formatted at."""

    def __init__(self, samples, seen):
        super().__init__(samples)
        self.seen = seen

    def __iter__(self):
        self.seen.append(("format", nice()))
        return super().__iter__()


class Recording:
    """A collector that notes the priority it collects at (where it would take locks)."""

    def __init__(self):
        self.seen = []

    def collect(self):
        self.seen.append(("collect", nice()))
        g = GaugeMetricFamily("serpens_test_value", "a value")
        g.add_metric([], 1.0)
        g.samples = Samples(g.samples, self.seen)
        yield g


def test_a_scrape_collects_at_its_priority_and_formats_at_scrape_nice():
    own = nice()
    collector = Recording()
    server = MetricsServer("127.0.0.1:0", collector, None)
    try:
        for _ in range(2):
            with urllib.request.urlopen(server.url, timeout=10) as r:
                assert "serpens_test_value 1.0" in r.read().decode()
    finally:
        server.close()
    assert [w for w, _ in collector.seen] == ["collect", "format"] * 2
    assert all(n == (own if w == "collect" else SCRAPE_NICE) for w, n in collector.seen), \
        collector.seen
    assert nice() == own


def test_a_connection_that_never_shakes_hands_stops_no_scrape(tmp_path):
    # (the handshake runs on the connection's own thread, with a deadline; when the listening
    # socket itself was wrapped, accept() shook hands on the serving thread)
    import socket
    import ssl
    import time

    from serpens.common.pki import CA

    ca = CA.create(str(tmp_path / "pki"))
    server = MetricsServer("127.0.0.1:0", Recording(),
                           ca.issue("serpens-agent", "agent", ("127.0.0.1",)))
    user = ca.issue("prometheus", "viewer")
    ctx = ssl.create_default_context(cafile=user.ca)
    ctx.load_cert_chain(user.cert, user.key)
    silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
    try:
        t0 = time.monotonic()
        with urllib.request.urlopen(server.url, timeout=5, context=ctx) as r:
            assert "serpens_test_value 1.0" in r.read().decode()
        assert time.monotonic() - t0 < 3
        anonymous = ssl.create_default_context(cafile=user.ca)  # no client certificate
        with pytest.raises(OSError):
            urllib.request.urlopen(server.url, timeout=5, context=anonymous).read()
    finally:
        for s in silent:
            s.close()
        server.close()
