"""Issue 13's records and spec fields (DESIGN §7): gateways, routes, node underlays, an SFC's
per-node status; spec.vni, spec.placement, `output: gateway`, Node spec.underlay. A value of
the wrong shape is refused naming the field."""
import json

import pytest

from serpens.common.keys import Keys
from serpens.common.node_spec import parse_node
from serpens.common.records import (GatewayRecord, MalformedRecord, NodeRecord, RouteRecord,
                                    RouteServer, SFCStatus, Underlay, decode)
from serpens.common.spec import SpecError, parse_sfc

pytestmark = pytest.mark.unit

ROUTE = RouteRecord(sfc="edge", tag=7, vni=3, match=({"dst": "10.0.0.0/8", "proto": "udp"},),
                    vlan=0, servers=(RouteServer("s1", "10.9.0.2", "02:00:00:00:00:02", 2),
                                     RouteServer("s2", "10.9.0.3", "02:00:00:00:00:03", 1)))
GATEWAY = GatewayRecord(name="gw", address="10.9.0.1:50071",
                        underlay=Underlay("10.9.0.1", "02:00:00:00:00:01", 1450),
                        ingress=("wan",), term=12, reported_at=3.0)


def test_gateway_route_underlay_and_multi_node_status_round_trip():
    status = SFCStatus("Running", node="s1", generation=2, instances=3,
                       nodes=(("s1", 2), ("s2", 1)))
    node = NodeRecord(name="s1", address="10.9.0.2:50061",
                      underlay=Underlay("10.9.0.2", "02:00:00:00:00:02"))
    for kind, record, name in (("route", ROUTE, "edge"), ("gateway", GATEWAY, "gw"),
                               ("status", status, "edge"), ("node", node, "s1")):
        assert decode(kind, record.encode(), name) == record
    assert RouteRecord.from_message(ROUTE.to_message()) == ROUTE
    assert dict(status.to_message().nodes) == {"s1": 2, "s2": 1}
    # one node: no `nodes` written, and older readers' records still decode
    assert "nodes" not in json.loads(SFCStatus("Running", node="s1").encode())
    assert "underlay" not in json.loads(NodeRecord(name="s1", address="a:1").encode())


@pytest.mark.parametrize("change, error", [
    ({"tag": 0}, "tag: 0 is out of range"),
    ({"tag": 1 << 24}, "tag: 16777216 is out of range"),
    ({"vni": -1}, "vni: -1 is out of range"),
    ({"sfc": "other"}, "under the key of 'edge'"),
    ({"match": [1]}, "match: not a list of rules"),
    ({"servers": [{"node": "s1", "ip": "10.9.0.999", "mac": "02:00:00:00:00:02",
                   "weight": 1}]}, "servers[0].ip"),
    ({"servers": [{"node": "s1", "ip": "10.9.0.2", "mac": "02-00", "weight": 1}]},
     "servers[0].mac"),
    ({"servers": [{"node": "s1", "ip": "10.9.0.2", "mac": "02:00:00:00:00:02",
                   "weight": 0}]}, "servers[0].weight"),
    ({"servers": [{"node": "../x", "ip": "10.9.0.2", "mac": "02:00:00:00:00:02",
                   "weight": 1}]}, "servers[0].node"),
])
def test_a_malformed_route_is_refused_naming_the_field(change, error):
    value = dict(ROUTE.to_dict(), **change)
    with pytest.raises(MalformedRecord, match=error.replace("[", r"\[").replace("]", r"\]")):
        RouteRecord.decode(json.dumps(value), "edge")


def test_a_pushed_route_is_checked_like_a_stored_one():
    message = ROUTE.to_message()
    message.match_json = "{not json"
    with pytest.raises(MalformedRecord, match="match_json"):
        RouteRecord.from_message(message)
    message = ROUTE.to_message()
    message.tag = 0
    with pytest.raises(MalformedRecord, match="tag"):
        RouteRecord.from_message(message)


def test_gateway_records_need_an_address_and_an_underlay():
    value = GATEWAY.to_dict()
    for change, error in (({"address": ""}, "address"), ({"underlay": {"ip": "x"}},
                                                          "underlay.ip"),
                          ({"underlay": {"ip": "10.0.0.1", "mac": "02:00:00:00:00:01",
                                         "mtu": 50}}, "underlay.mtu")):
        with pytest.raises(MalformedRecord, match=error):
            GatewayRecord.decode(json.dumps(dict(value, **change)), "gw")


def test_keys_of_gateways_and_routes():
    keys = Keys("/t/")
    assert (keys.gateway("gw"), keys.route("edge")) == ("/t/gateways/gw", "/t/routes/edge")
    assert (keys.split("/t/gateways/gw"), keys.split("/t/routes/edge")) == \
        (("gateway", "gw"), ("route", "edge"))


SFC = """apiVersion: serpens/v1
kind: SFC
metadata: {name: edge}
spec:
  nfs: {fw: {stock: fw}}
  chain: [fw]
"""


def test_sfc_specs_take_a_vni_a_spread_and_the_gateway_as_output():
    spec = parse_sfc(SFC + "  output: gateway\n  vni: 42\n  placement: {spread: 3}\n")
    assert (spec.output, spec.vni, spec.spread) == ("gateway", 42, 3)
    assert (parse_sfc(SFC).vni, parse_sfc(SFC).spread) == (0, 1)
    for extra, field in (("  vni: 16777216\n", "spec.vni"), ("  vni: true\n", "spec.vni"),
                         ("  placement: {spread: 0}\n", "spec.placement.spread"),
                         ("  placement: {spread: 65}\n", "spec.placement.spread"),
                         ("  placement: {nodes: 2}\n", "spec.placement.nodes"),
                         ("  placement: 2\n", "spec.placement")):
        with pytest.raises(SpecError, match=field.replace(".", r"\.")):
            parse_sfc(SFC + extra)


NODE = """apiVersion: serpens/v1
kind: Node
metadata: {name: s1}
spec:
  ports: {wan: net_null0, lan: net_null1, fabric: "net_af_packet0,iface=eth0"}
  output: lan
"""


def test_a_node_underlay_is_a_port_that_is_no_input():
    node = parse_node(NODE + "  underlay: {port: fabric, ip: 10.9.0.2, mtu: 1450}\n")
    assert node.input == ("wan", "lan")
    assert (node.underlay.port, node.underlay.ip, node.underlay.mtu) == \
        ("fabric", "10.9.0.2", 1450)
    assert parse_node(NODE).underlay is None
    for extra, field in (("  underlay: {port: nope, ip: 10.9.0.2}\n", "spec.underlay.port"),
                         ("  underlay: {port: fabric, ip: 10.9.0}\n", "spec.underlay.ip"),
                         ("  underlay: {port: fabric, ip: 224.0.0.1}\n", "spec.underlay.ip"),
                         ("  underlay: {port: fabric, ip: 10.9.0.2, mtu: 67}\n",
                          "spec.underlay.mtu"),
                         ("  underlay: {port: fabric, ip: 10.9.0.2, vlan: 3}\n",
                          "spec.underlay.vlan"),
                         ("  underlay: {port: fabric, ip: 10.9.0.2}\n  input: [wan, fabric]\n",
                          r"spec.input\[1\]")):
        with pytest.raises(SpecError, match=field.replace(".", r"\.") if "[" not in field
                           else field):
            parse_node(NODE + extra)


def test_a_pushed_route_nested_too_deeply_is_refused_naming_the_field():
    message = ROUTE.to_message()
    message.match_json = "[" * 100000 + "]" * 100000
    with pytest.raises(MalformedRecord, match="match_json"):
        RouteRecord.from_message(message)
