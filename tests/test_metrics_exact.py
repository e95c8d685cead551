"""The agent's metrics are the node's own counters: a capture sent through a node's
fw-mon-nat SFC, scraped over HTTP with Prometheus' text parser, shows exactly what
`serpensctl replay` of the same capture counts (router and every NF, named counters too), and
the counts outlive the instances (scale to zero keeps them)."""
import json
import os

import pytest
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from serpens.agent.metrics import FAMILIES, NodeCollector, start_latency
from serpens.agent.node import Node
from serpens.common.metrics import MetricsServer
from serpens.common.node_spec import parse_node
from serpens.common.spec import parse_sfc

from support.cluster import wait_until
from support.metrics import check_families, scrape, value, values
from support.node_specs import NODE
from support.sites import Wire
from test_replay import EXAMPLE, serpensctl, traffic

pytestmark = pytest.mark.dataplane


def test_scraped_counters_equal_the_replayed_capture_s(dataplane, pool, areas, tmp_path):
    name = f"metrics-{os.getpid()}"   # fresh state in the session's state directory
    text = open(EXAMPLE).read().replace("name: fw-mon-nat", f"name: {name}")
    (tmp_path / "sfc.yaml").write_text(text)
    frames = traffic()                # 200 pass, 5 telnet denied, 3 not from inside
    wrpcap(str(tmp_path / "in.pcap"), [Ether(f) for f in frames])
    out = serpensctl("replay", "--sfc", str(tmp_path / "sfc.yaml"), "--in",
                     str(tmp_path / "in.pcap"), "--out", str(tmp_path / "out.pcap"), "--json")
    assert out.returncode == 0, out.stderr
    replayed = json.loads(out.stdout.strip().splitlines()[-1])

    spec = parse_sfc(text, base_dir=os.path.dirname(EXAMPLE))
    wires = {n: Wire(dataplane, f"m{os.getpid() % 10000}{n}") for n in ("wan", "lan", "dmz")}
    server = None
    try:
        with Node(parse_node(NODE), [spec], dataplane=dataplane, pool=pool, areas=areas,
                  ports={n: w.port for n, w in wires.items()}) as node:
            server = MetricsServer("127.0.0.1:0", NodeCollector(node), None)
            start_latency(node)
            url = f"http://127.0.0.1:{server.port}/metrics"
            wires["wan"].send(frames)
            wires["lan"].receive(replayed["router"]["out"])

            def settled():
                got = scrape(url)
                return value(got, "serpens_sfc_rx_packets", node="edge-1", sfc=name) == \
                    len(frames) and got
            got = wait_until(settled, 10)
            check_families(got, FAMILIES)
            check_counts(got, name, replayed, len(frames))
            lat = got["serpens_latency_seconds"]
            count = values(lat, "serpens_latency_seconds_count")[frozenset({"node": "edge-1"}.items())]
            assert count >= 1   # one sample per burst sent

            node.scale(name, 0)   # the instance goes; what it counted stays
            after = scrape(url)
            check_counts(after, name, replayed, len(frames))
            assert value(after, "serpens_instances", node="edge-1", sfc=name,
                         phase="running") == 0
            assert value(after, "serpens_instance_starts", node="edge-1", sfc=name) >= 1

            # the capture again: a new instance starts for it (its NF counters from zero);
            # the totals are both instances' (the same flows: NAT's mappings now exist)
            wires["wan"].send(frames)
            wires["lan"].receive(replayed["router"]["out"])
            again = wait_until(lambda: (g := scrape(url)) and value(
                g, "serpens_sfc_rx_packets", node="edge-1", sfc=name) == 2 * len(frames) and g,
                10)
            labels = {"node": "edge-1", "sfc": name}
            assert value(again, "serpens_sfc_tx_packets", **labels) == 2 * replayed["router"]["out"]
            for nf in replayed["nfs"]:
                at = dict(labels, nf=nf["name"])
                assert value(again, "serpens_nf_rx_packets", **at) == 2 * nf["in"], nf
                assert value(again, "serpens_nf_drops", **at) == 2 * nf["dropped"], nf
            assert value(again, "serpens_nf_counter", nf="fw", counter="denied", **labels) == 16
            assert value(again, "serpens_instance_starts", **labels) == 2
            # usage (what is billed: packets the instances processed) as of a meter sample
            node.meter.sample()
            billed = scrape(url)
            router = replayed["router"]
            assert value(billed, "serpens_usage_packets", **labels) == \
                2 * (router["out"] + router["dropped"])
            assert value(billed, "serpens_usage_bytes", **labels) > 0
            assert value(billed, "serpens_usage_cpu_seconds", **labels) > 0
    finally:
        if server is not None:
            server.close()
        for w in wires.values():
            w.close()


def check_counts(got, sfc, replayed, sent):
    labels = {"node": "edge-1", "sfc": sfc}
    router = replayed["router"]
    assert value(got, "serpens_port_rx_packets", node="edge-1", port="wan") == sent
    assert value(got, "serpens_port_tx_packets", node="edge-1", port="lan") == router["out"]
    assert value(got, "serpens_sfc_rx_packets", **labels) == router["rx"] == sent
    assert value(got, "serpens_sfc_tx_packets", **labels) == router["out"]
    assert value(got, "serpens_sfc_drops", reason="nf_verdict", **labels) == router["dropped"]
    for reason in ("instance_died", "instance_stuck", "no_instance", "sfc_failed", "over_mtu"):
        assert value(got, "serpens_sfc_drops", reason=reason, **labels) == 0
    for nf in replayed["nfs"]:
        at = dict(labels, nf=nf["name"])
        assert value(got, "serpens_nf_rx_packets", **at) == nf["in"], nf
        assert value(got, "serpens_nf_tx_packets", **at) == nf["out"], nf
        assert value(got, "serpens_nf_drops", **at) == nf["dropped"], nf
        named = {dict(k)["counter"]: v for k, v in values(got["serpens_nf_counter"]).items()
                 if dict(k)["nf"] == nf["name"] and dict(k)["sfc"] == sfc}
        assert named == nf["counters"], nf
    fw = next(nf for nf in replayed["nfs"] if nf["name"] == "fw")
    assert fw["counters"]["denied"] == 8   # the capture is the one test_replay checks
