"""A Prometheus scraper for benchmarks: the agent's collector (agent/metrics.py) served over
HTTP on loopback for a Rig's router and instances, fetched once a second while a figure is
measured, so the cost of being observed shows in it (`bench sfc`: sfc_mpps_scraped)."""
from __future__ import annotations

import threading
import urllib.request
from types import SimpleNamespace

from serpens.agent.metrics import NodeCollector, start_latency
from serpens.agent.state_manager import StateManager
from serpens.common.metrics import MetricsServer


class RigNode:
    """What NodeCollector reads of a Node, from a Rig running one SFC (its first manager)."""

    def __init__(self, rig, sfc: str):
        self.rig, self.sfc = rig, sfc
        self.spec = SimpleNamespace(name="bench")

    @property
    def router(self):
        return self.rig.router

    @property
    def pool(self):
        return self.rig.pool

    @property
    def dataplane(self):
        return self.rig.dataplane

    @property
    def ports(self):
        return {"in": self.rig.src, "out": self.rig.sink}

    @property
    def running(self):
        m = self.rig.managers[0]
        return {self.sfc: SimpleNamespace(manager=m, sfc_id=m.sfc_id)}

    @property
    def state(self):
        return StateManager(self.rig.dataplane.config.state_dir)

    def usage(self) -> dict:
        return {}   # a rig keeps no usage meter (agent/usage.py): nothing billed

    def router_metrics(self) -> dict:
        st = self.rig.router.stats()
        return {"busy_s": st["busy_s"], "sleeps": st["sleeps"],
                "latency": self.rig.router.latency()}

    def stats(self) -> dict:
        st = self.rig.router.stats()
        by_id = {v: k for k, v in self.ports.items()}
        m = self.rig.managers[0]
        return {"ports": {by_id[p]: c for p, c in st["ports"].items() if p in by_id},
                "sfcs": {self.sfc: dict(st["sfcs"][m.sfc_id], crashes=m.crashes.total)},
                "vxlan": st["vxlan"]}


class Scraper:
    """Serves `node`'s metrics on loopback and fetches them every `period` seconds (with
    the router's latency sampling armed, as the agent's --metrics does) until close()."""

    def __init__(self, node, period: float = 1.0):
        self.node = node
        self.server = MetricsServer("127.0.0.1:0", NodeCollector(node), None)
        start_latency(node)
        self.url = f"http://127.0.0.1:{self.server.port}/metrics"
        self.period, self.scrapes, self.bytes = period, 0, 0
        self.error: Exception | None = None   # a failed scrape ends the thread: close() raises
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scraper", daemon=True)
        self._thread.start()

    def _run(self):
        try:
            while not self._stop.is_set():
                with urllib.request.urlopen(self.url, timeout=5) as reply:
                    self.bytes += len(reply.read())
                self.scrapes += 1
                self._stop.wait(self.period)
        except Exception as e:  # noqa: BLE001 - reported by close(), not lost with the thread
            self.error = e

    def close(self):
        self._stop.set()
        self._thread.join(10)
        self.server.close()
        self.node.router.latency_stop()   # unscraped runs after this one sample nothing
        if self.error is not None:
            raise RuntimeError(f"scraping {self.url} failed: {self.error}") from self.error
