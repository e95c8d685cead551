"""The gateway's Prometheus collector (docs/observability.md): at each scrape it reads the
packet loop's own counters (gateway.h) and the devices' statistics; the packet path does
nothing for it."""
from __future__ import annotations

from serpens.common.metrics import counter
from serpens.runtime_cy import _dataplane as dp

from .service import GatewayServicer


# Every family exported: name (counters without _total) -> (type, labels); checked against
# a real gateway's scrape (tests/test_metrics_scrape.py) and by the dashboard's test.
FAMILIES = {
    **{f"serpens_gateway_port_{k}": ("counter", ("gateway", "port")) for k in (
        "rx_packets", "tx_packets", "tx_failed_packets", "unmatched_packets",
        "missed_packets", "errors", "tx_stalls")},
    **{f"serpens_gateway_sfc_{k}": ("counter", ("gateway", "sfc")) for k in (
        "rx_packets", "tx_packets", "back_packets", "new_flows", "moved_flows",
        "unpinned_packets")},
    "serpens_gateway_sfc_drops": ("counter", ("gateway", "sfc", "reason")),
    "serpens_gateway_drops": ("counter", ("gateway", "reason")),
    "serpens_gateway_arp_replies": ("counter", ("gateway",)),
    "serpens_gateway_server_tx_packets": ("counter", ("gateway", "node", "server")),
}


class GatewayCollector:
    def __init__(self, name: str, servicer: GatewayServicer, ports: dict[str, int]):
        """`ports`: port name -> DPDK port id."""
        self.name, self.servicer, self.ports = name, servicer, ports

    def describe(self):
        return []   # families vary with the routes: never checked at registration

    def collect(self):
        with self.servicer._lock:   # a push in progress changes the SFCs' ids
            yield from list(self._collect())

    def _collect(self):
        gw, routes = self.name, self.servicer.routes
        st = routes.gw.stats()
        by_id = {pid: name for name, pid in self.ports.items()}
        # ports
        fam = {k: counter(f"serpens_gateway_port_{k}", doc, ("gateway", "port")) for k, doc in (
            ("rx_packets", "Frames the gateway received on a port"),
            ("tx_packets", "Frames the gateway sent on a port"),
            ("tx_failed_packets", "Frames the port would not take (freed)"),
            ("unmatched_packets", "Frames received that no route takes"),
            ("missed_packets", "Frames the device dropped for want of RX room (paced "
                               "ports: arrivals lost beyond the pacing depth)"),
            ("errors", "Erroneous frames the device received"),
            ("tx_stalls", "Times the port's full TX queue began to hold back what "
                          "feeds it (back-pressure; it sheds after stall_us)"))}
        for pid, c in sorted(st["ports"].items()):
            labels = [gw, by_id.get(pid, str(pid))]
            try:
                dev = dp.port_stats(pid)
            except OSError:
                dev = {}
            fam["rx_packets"].add_metric(labels, c["rx"])
            fam["tx_packets"].add_metric(labels, c["tx"])
            fam["tx_failed_packets"].add_metric(labels, c["tx_failed"])
            fam["unmatched_packets"].add_metric(labels, c["unmatched"])
            fam["missed_packets"].add_metric(labels, c["missed"] + dev.get("missed", 0))
            fam["errors"].add_metric(labels, dev.get("errors", 0))
            fam["tx_stalls"].add_metric(labels, c["tx_stalls"])
        yield from fam.values()
        # SFCs
        sfc = {k: counter(f"serpens_gateway_sfc_{k}", doc, ("gateway", "sfc")) for k, doc in (
            ("rx_packets", "Frames classified to an SFC and sent to its servers"),
            ("tx_packets", "Frames of an SFC encapsulated toward a server"),
            ("back_packets", "Frames of an SFC back from its servers (output: gateway)"),
            ("new_flows", "Flows of an SFC given a server"),
            ("moved_flows", "Flows of an SFC whose server left (re-hashed)"),
            ("unpinned_packets", "Frames sent unpinned: their flow table bucket was full"))}
        drops = counter("serpens_gateway_sfc_drops", "Frames of an SFC dropped, by reason",
                        ("gateway", "sfc", "reason"))
        for name, route in sorted(routes.sfcs.items()):
            c = st["sfcs"].get(route.id)
            if c is None:
                continue
            labels = [gw, name]
            sfc["rx_packets"].add_metric(labels, c["rx"])
            sfc["tx_packets"].add_metric(labels, c["tx"])
            sfc["back_packets"].add_metric(labels, c["back"])
            sfc["new_flows"].add_metric(labels, c["new_flows"])
            sfc["moved_flows"].add_metric(labels, c["moved_flows"])
            sfc["unpinned_packets"].add_metric(labels, c["flow_full"])
            for reason, n in sorted(c["drops"].items()):
                drops.add_metric([gw, name, reason], n)
        yield from sfc.values()
        yield drops
        # the gateway as a whole, and per server
        gdrops = counter("serpens_gateway_drops", "Frames the gateway dropped before any SFC, "
                         "by reason", ("gateway", "reason"))
        for reason, n in sorted(st["drops"].items()):
            gdrops.add_metric([gw, reason], n)
        yield gdrops
        arp = counter("serpens_gateway_arp_replies", "ARP requests for the underlay address "
                      "answered", ("gateway",))
        arp.add_metric([gw], st["arp_replies"])
        yield arp
        nodes = {ip: node for per in routes.nodes.values() for ip, node in per.items()}
        frames = counter("serpens_gateway_server_tx_packets",
                         "Frames encapsulated toward a server", ("gateway", "node", "server"))
        for ip, c in sorted(st["servers"].items()):
            frames.add_metric([gw, nodes.get(ip, ""), ip], c["tx"])
        yield frames
