"""A node from specs: ports, SFC classification by match rules, tags and a default, and clear
errors for malformed node configs and SFC specs that do not fit the node."""
import os
import subprocess
import sys

import pytest

from serpens.agent.node import Node, check_references
from serpens.common.node_spec import parse_node
from serpens.common.spec import SpecError

from support.node_specs import NODE, sfc
from support.packets import trace
from support.packets import udp
from support.sites import Wire, unique_tag

pytestmark = pytest.mark.dataplane

@pytest.mark.parametrize("old, new, field", [
    ("wan: net_ring_wan", "wan: foo0", "spec.ports.wan"),
    ("dmz: net_ring_dmz", "dmz: net_ring_lan", "spec.ports.dmz"),
    ("input: [wan]", "input: [wlan]", "spec.input[0]"),
    ("output: lan", "output: nowhere", "spec.output"),
    ("pool: 2", "pool: 0", "spec.pool"),
    ("pool: 2", "cpus: first", "spec.cpus"),
    ("pool: 2", "turbo: true", "spec.turbo"),
    ("kind: Node", "kind: Nod", "kind"),
])
def test_a_malformed_node_config_names_the_field(old, new, field):
    assert old in NODE
    with pytest.raises(SpecError) as e:
        parse_node(NODE.replace(old, new))
    assert e.value.field == field, str(e.value)


def test_sfcs_that_do_not_fit_the_node_are_refused_by_field():
    node = parse_node(NODE)
    with pytest.raises(SpecError, match="sfc a: spec.output: node edge-1 has no port 'x'"):
        check_references(node, [sfc("a", 1, "  output: x")])
    with pytest.raises(SpecError, match=r"sfc a: spec.match\[0\].port"):
        check_references(node, [sfc("a", 1, "  match: [{port: lan}]")])
    with pytest.raises(SpecError, match="sfc b: spec.tag: SFC a has tag 7"):
        check_references(node, [sfc("a", 1, "  tag: 7"), sfc("b", 2, "  tag: 7")])
    with pytest.raises(SpecError, match="sfc b: spec.match: only one SFC"):
        check_references(node, [sfc("a", 1), sfc("b", 2)])


def test_a_node_classifies_traffic_to_its_sfcs(dataplane, pool, areas, request):
    tag = unique_tag()
    wires = {name: Wire(dataplane, f"n{tag}{name}") for name in ("wan", "lan", "dmz")}
    sfcs = [sfc("dns", 1, "  match: [{proto: udp, dport: 53, port: wan}]\n  output: dmz"),
            sfc("vlan", 2, "  tag: 42\n  output: dmz"),
            sfc("rest", 3)]
    try:
        with Node(parse_node(NODE), sfcs, dataplane=dataplane, pool=pool, areas=areas,
                  ports={n: w.port for n, w in wires.items()}) as node:
            wires["wan"].send([udp(dport=53), udp(dport=80, vlan=42), udp(dport=80),
                               udp(dport=443)])
            assert sorted(trace(d) for d in wires["dmz"].receive(2)) == [[1], [2]]
            assert [trace(d) for d in wires["lan"].receive(2)] == [[3], [3]]
            stats = node.stats()
            assert {n: s["rx"] for n, s in stats["sfcs"].items()} == {"dns": 1, "vlan": 1,
                                                                     "rest": 2}
            assert all(s["instances"] == 1 for s in stats["sfcs"].values())
            assert stats["ports"]["wan"]["rx"] == 4 and stats["ports"]["dmz"]["tx"] == 2
            node.scale("rest", 0)
            assert node.stats()["sfcs"]["rest"]["instances"] == 0
    finally:
        for w in wires.values():
            w.close()


def test_serpensctl_node_refuses_a_bad_config_naming_the_field(tmp_path):
    bad = tmp_path / "node.yaml"
    bad.write_text(NODE.replace("net_ring_wan", "eth0"))
    good_sfc = tmp_path / "sfc.yaml"
    good_sfc.write_text(open(os.path.join(os.path.dirname(__file__), "..", "examples",
                                          "fw-mon-nat.yaml")).read())
    out = subprocess.run([os.path.join(os.path.dirname(sys.executable), "serpensctl"), "node",
                          "--node", str(bad), "--sfc", str(good_sfc), "--seconds", "1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "spec.ports.wan" in out.stderr and "eth0" in out.stderr


def test_sfcs_are_added_replaced_and_removed_while_the_node_runs(dataplane, pool, areas,
                                                                  request):
    tag = unique_tag()
    wires = {name: Wire(dataplane, f"d{tag}{name}") for name in ("wan", "lan", "dmz")}
    dns = sfc("dns", 1, "  match: [{proto: udp, dport: 53}]\n  output: dmz")
    try:
        with Node(parse_node(NODE), [sfc("rest", 3)], dataplane=dataplane, pool=pool,
                  areas=areas, ports={n: w.port for n, w in wires.items()}) as node:
            node.apply_sfc(dns)
            wires["wan"].send([udp(dport=53), udp(dport=80)])
            assert [trace(d) for d in wires["dmz"].receive(1)] == [[1]]
            assert [trace(d) for d in wires["lan"].receive(1)] == [[3]]
            # same routing: new NFs behind the same router SFC, flows and counters kept; the
            # scale-out first leaves barriers at the indexes the new instances will reuse
            node.scale("rest", 2)
            old_id = node.sfc_ids["rest"]
            node.apply_sfc(sfc("rest", 4), replicas=2, generation=7)
            assert node.sfc_ids["rest"] == old_id
            wires["wan"].send([udp(dport=80)])
            assert [trace(d) for d in wires["lan"].receive(1)] == [[4]]
            rest = node.stats()["sfcs"]["rest"]
            assert (rest["instances"], rest["generation"], rest["rx"]) == (2, 7, 2)
            # new routing: the SFC is removed and added again, still first in rule order
            node.apply_sfc(sfc("dns", 5, "  match: [{proto: udp, dport: 53}]"))
            wires["wan"].send([udp(dport=53)])
            assert [trace(d) for d in wires["lan"].receive(1)] == [[5]]
            node.remove_sfc("dns")
            assert set(node.stats()["sfcs"]) == {"rest"}
            assert len(node.router.stats()["sfcs"]) == 1
            wires["wan"].send([udp(dport=53)])
            assert [trace(d) for d in wires["lan"].receive(1)] == [[4]]
            # a spec that does not fit is refused and changes nothing
            with pytest.raises(SpecError, match="spec.match: only one SFC"):
                node.apply_sfc(sfc("other", 6))
            assert set(node.stats()["sfcs"]) == {"rest"}
    finally:
        for w in wires.values():
            w.close()
