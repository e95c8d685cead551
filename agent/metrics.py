"""The agent's Prometheus collector (docs/observability.md): at each scrape it reads the
counters the node already keeps, the router's (in its memory), the pool processes' NF counters
(their shared control blocks, summed over an SFC's instances by the instance manager), the
devices' own statistics and the state tables' headers. Nothing is counted for metrics on the
packet path, except the router's sampled latency: one packet per burst sent, and only once
`latency_start` armed it (the agent does when --metrics is given)."""
from __future__ import annotations

import logging
import struct

from prometheus_client.core import HistogramMetricFamily

from serpens.common.metrics import counter, gauge
from serpens.runtime_cy import _dataplane as dp

from .node import Node

log = logging.getLogger(__name__)

# Upper bounds of the sampled RX-to-TX latency histogram (seconds; at most dp.LAT_BUCKETS).
LATENCY_BOUNDS = (10e-6, 20e-6, 50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 2e-3, 5e-3, 10e-3,
                  20e-3, 50e-3, 100e-3, 200e-3, 500e-3, 1.0)

# Router drop reasons besides the NFs' verdicts (router.h serpens_router_sfc).
NF_VERDICT = "nf_verdict"

# state_table.h serpens_table_hdr up to `count`: magic, version, ready, flags, key_size,
# value_size, capacity, nslots, slot_size, key_off, value_off, file_size, count
_TABLE_HDR = struct.Struct("<QIIIIIIIIIIQQ")
_TABLE_MAGIC = 0x3142415453505253


def table_header(path: str) -> dict | None:
    """entries, capacity and bytes of the table file at `path`, from its header (no mapping,
    nothing written); None for a file that is not a ready table."""
    try:   # unbuffered: a buffered read takes st_blksize, 2 MiB on hugetlbfs (75 us each)
        with open(path, "rb", buffering=0) as f:
            raw = f.read(_TABLE_HDR.size)
    except OSError:
        return None
    if len(raw) < _TABLE_HDR.size:
        return None
    (magic, _v, ready, _flags, _ks, _vs, capacity, _ns, _ss, _ko, _vo, size,
     count) = _TABLE_HDR.unpack(raw)
    if magic != _TABLE_MAGIC or not ready:
        return None
    return {"entries": count, "capacity": capacity, "bytes": size}


# Every family this collector exports: name (counters without _total) -> (type, labels).
# tests/test_metrics_scrape.py checks a real agent's scrape against it, and the dashboard's
# test (tests/test_grafana_dashboard.py) every expression's metrics.
_N, _S, _F = ("node",), ("node", "sfc"), ("node", "sfc", "nf")
FAMILIES = {
    **{f"serpens_port_{k}": ("counter", ("node", "port")) for k in (
        "rx_packets", "tx_packets", "tx_failed_packets", "unmatched_packets",
        "missed_packets", "errors")},
    **{f"serpens_sfc_{k}": ("counter", _S) for k in (
        "rx_packets", "tx_packets", "new_flows", "moved_flows", "instance_crashes")},
    "serpens_sfc_drops": ("counter", _S + ("reason",)),
    **{f"serpens_nf_{k}": ("counter", _F) for k in ("rx_packets", "tx_packets", "drops")},
    "serpens_nf_counter": ("counter", _F + ("counter",)),
    "serpens_instances": ("gauge", _S + ("phase",)),
    "serpens_instance_starts": ("counter", _S),
    "serpens_instance_wakes": ("counter", _S),
    "serpens_pool_processes_free": ("gauge", _N),
    "serpens_pool_processes": ("gauge", _N),
    "serpens_router_busy_seconds": ("counter", _N),
    "serpens_router_sleeps": ("counter", _N),
    "serpens_latency_seconds": ("histogram", _N),
    "serpens_vxlan_rx_packets": ("counter", _N),
    "serpens_vxlan_arp_replies": ("counter", _N),
    "serpens_vxlan_drops": ("counter", _N + ("reason",)),
    **{f"serpens_state_{k}": ("gauge", _F + ("table",)) for k in (
        "entries", "capacity_entries", "bytes")},
    **{f"serpens_usage_{k}": ("counter", _S) for k in (
        "packets", "bytes", "cpu_seconds", "state_byte_seconds")},
}


class NodeCollector:
    """prometheus_client Collector of one Node."""

    def __init__(self, node: Node):
        self.node = node

    def describe(self):
        return []   # families vary with what runs: never checked at registration

    def collect(self):
        node = self.node
        name = node.spec.name
        st = node.stats()
        yield from self._ports(name, st["ports"])
        yield from self._sfcs(name, st["sfcs"])
        yield from self._nfs_and_instances(name)
        yield from self._router(name)
        yield from self._vxlan(name, st["vxlan"])
        yield from self._state(name)
        yield from self._usage(name)

    def _usage(self, name):
        """The usage meter's totals (agent/usage.py: kept across agent restarts, as of its
        last sample), what `serpensctl usage` bills."""
        families = {k: counter(f"serpens_usage_{k}", help_, ("node", "sfc")) for k, help_ in (
            ("packets", "Packets an SFC's instances processed (billed)"),
            ("bytes", "Bytes of the packets an SFC's instances processed (billed)"),
            ("cpu_seconds", "CPU time of an SFC's instances inside batches with packets"),
            ("state_byte_seconds", "An SFC's state table bytes integrated over time"))}
        for sfc, totals in sorted(self.node.usage().items()):
            for k, family in families.items():
                family.add_metric([name, sfc], totals.get(k, 0))
        return families.values()

    def _ports(self, name, ports):
        rx = counter("serpens_port_rx_packets", "Packets the router received on a port",
                     ("node", "port"))
        tx = counter("serpens_port_tx_packets", "Packets the router sent on a port",
                     ("node", "port"))
        tx_failed = counter("serpens_port_tx_failed_packets",
                            "Packets the port would not take (freed)", ("node", "port"))
        unmatched = counter("serpens_port_unmatched_packets",
                            "Packets received that no SFC takes (freed)", ("node", "port"))
        missed = counter("serpens_port_missed_packets",
                         "Packets the device dropped for want of room in its RX queue (paced "
                         "ports: arrivals lost beyond the pacing depth)", ("node", "port"))
        errors = counter("serpens_port_errors", "Erroneous frames the device received",
                         ("node", "port"))
        ids = self.node.ports or {}
        for port, c in sorted(ports.items()):
            labels = [name, port]
            dev = _port_stats(ids.get(port))
            rx.add_metric(labels, c["rx"])
            tx.add_metric(labels, c["tx"])
            tx_failed.add_metric(labels, c["tx_failed"])
            unmatched.add_metric(labels, c["unmatched"])
            missed.add_metric(labels, c["missed"] + dev.get("missed", 0))
            errors.add_metric(labels, dev.get("errors", 0))
        return rx, tx, tx_failed, unmatched, missed, errors

    def _sfcs(self, name, sfcs):
        rx = counter("serpens_sfc_rx_packets", "Packets the router classified to an SFC",
                     ("node", "sfc"))
        out = counter("serpens_sfc_tx_packets", "Packets of an SFC that left it (verdict OUT)",
                      ("node", "sfc"))
        drops = counter("serpens_sfc_drops",
                        "Packets of an SFC dropped, by reason: an NF's verdict, or the router "
                        "(instance_died, instance_stuck, no_instance, sfc_failed, over_mtu)",
                        ("node", "sfc", "reason"))
        new = counter("serpens_sfc_new_flows", "Flows the router pinned to an instance",
                      ("node", "sfc"))
        moved = counter("serpens_sfc_moved_flows",
                        "Flows re-pinned to another instance (scale-in, a death)",
                        ("node", "sfc"))
        crashes = counter("serpens_sfc_instance_crashes", "Instances of an SFC that died",
                          ("node", "sfc"))
        for sfc, c in sorted(sfcs.items()):
            labels = [name, sfc]
            rx.add_metric(labels, c["rx"])
            out.add_metric(labels, c["out"])
            drops.add_metric([name, sfc, NF_VERDICT], c["dropped"])
            for reason, n in sorted(c["drops"].items()):
                drops.add_metric([name, sfc, reason], n)
            new.add_metric(labels, c["new_flows"])
            moved.add_metric(labels, c["moved_flows"])
            crashes.add_metric(labels, c["crashes"])
        return rx, out, drops, new, moved, crashes

    def _nfs_and_instances(self, name):
        nf_in = counter("serpens_nf_rx_packets", "Packets given to an NF", ("node", "sfc", "nf"))
        nf_out = counter("serpens_nf_tx_packets", "Packets an NF passed on (not dropped)",
                         ("node", "sfc", "nf"))
        nf_drop = counter("serpens_nf_drops", "Packets an NF dropped (its verdict, or an "
                          "invalid label)", ("node", "sfc", "nf"))
        named = counter("serpens_nf_counter", "An NF's own named counter (counter_register)",
                        ("node", "sfc", "nf", "counter"))
        instances = gauge("serpens_instances", "Instances of an SFC by phase (running: "
                          "processing or ready, sleeping: blocked waiting for packets, "
                          "starting)", ("node", "sfc", "phase"))
        starts = counter("serpens_instance_starts", "Instances started", ("node", "sfc"))
        wakes = counter("serpens_instance_wakes", "Wake-ups of sleeping instances",
                        ("node", "sfc"))
        for sfc, entry in sorted(self.node.running.items()):
            manager = entry.manager
            steps = manager.sfc.steps
            per_step, woken = manager.counts.snapshot()
            for step, c in zip(steps, per_step):
                if step.kind != dp.STEP_NF:
                    continue
                labels = [name, sfc, step.name.split(".", 1)[-1]]
                nf_in.add_metric(labels, c["in"])
                nf_out.add_metric(labels, c["in"] - c["dropped"])
                nf_drop.add_metric(labels, c["dropped"])
                for cname, value in sorted(c["counters"].items()):
                    named.add_metric(labels + [cname], value)
            live = list(manager.instances.values())
            asleep = sum(1 for s in live if s.proc.ctl.sleeping)
            instances.add_metric([name, sfc, "running"], len(live) - asleep)
            instances.add_metric([name, sfc, "sleeping"], asleep)
            instances.add_metric([name, sfc, "starting"], manager.starting)
            starts.add_metric([name, sfc], manager.starts)
            wakes.add_metric([name, sfc], woken)
        pool = self.node.pool
        free = gauge("serpens_pool_processes_free", "Pool processes attached and free",
                     ("node",))
        total = gauge("serpens_pool_processes", "Pool processes alive", ("node",))
        if pool is not None:
            free.add_metric([name], pool.idle_count())
            total.add_metric([name], sum(1 for p in pool.processes() if not p.dead))
        return nf_in, nf_out, nf_drop, named, instances, starts, wakes, free, total

    def _router(self, name):
        st = self.node.router_metrics()
        if st is None:
            return ()
        busy = counter("serpens_router_busy_seconds", "Time the router spent on loop "
                       "iterations that moved packets (rate = its busy fraction)", ("node",))
        busy.add_metric([name], st["busy_s"])
        sleeps = counter("serpens_router_sleeps", "Times the idle router slept", ("node",))
        sleeps.add_metric([name], st["sleeps"])
        families = [busy, sleeps]
        sampled = st["latency"]
        if sampled is not None:
            _, counts, total = sampled   # bounds: LATENCY_BOUNDS (start_latency)
            buckets, running = [], 0
            for bound, n in zip([repr(b) for b in LATENCY_BOUNDS] + ["+Inf"], counts):
                running += n
                buckets.append((bound, running))
            lat = HistogramMetricFamily(
                "serpens_latency_seconds", "RX-to-TX time in the node, sampled: the first "
                "packet of each burst sent", labels=["node"])
            lat.add_metric([name], buckets, total)
            families.append(lat)
        return families

    def _vxlan(self, name, vx):
        rx = counter("serpens_vxlan_rx_packets", "VXLAN frames decapsulated for an SFC",
                     ("node",))
        arp = counter("serpens_vxlan_arp_replies", "ARP requests for the underlay address "
                      "answered", ("node",))
        drops = counter("serpens_vxlan_drops", "Underlay frames dropped, by reason",
                        ("node", "reason"))
        if vx:
            rx.add_metric([name], vx["rx"])
            arp.add_metric([name], vx["arp_replies"])
            for reason, n in sorted(vx["drops"].items()):
                drops.add_metric([name, reason], n)
        return rx, arp, drops

    def _state(self, name):
        entries = gauge("serpens_state_entries", "Live entries of a state table",
                        ("node", "sfc", "nf", "table"))
        capacity = gauge("serpens_state_capacity_entries", "Entries a state table holds at "
                         "most", ("node", "sfc", "nf", "table"))
        size = gauge("serpens_state_bytes", "Size of a state table's file (shared memory)",
                     ("node", "sfc", "nf", "table"))
        if self.node.dataplane is not None:
            manager = self.node.state
            for namespace, table in manager.tables():
                hdr = table_header(manager.path(namespace, table))
                if hdr is None:
                    continue
                sfc, _, nf = namespace.partition(".")
                labels = [name, sfc, nf, table]   # replicas: "table@rN"
                entries.add_metric(labels, hdr["entries"])
                capacity.add_metric(labels, hdr["capacity"])
                size.add_metric(labels, hdr["bytes"])
        return entries, capacity, size


def _port_stats(port_id) -> dict:
    if port_id is None:
        return {}
    try:
        return dp.port_stats(port_id)
    except OSError as e:
        log.debug("port %s: %s", port_id, e)
        return {}


def start_latency(node: Node) -> None:
    """Arm the router's latency sampling (one packet per burst sent)."""
    node.router.latency_start(LATENCY_BOUNDS)

