"""Route sets applied to the gateway's packet loop as a whole (gateway/routes.py): frames on
ring-backed ports classified in route order, by ingress port, to the one default; SFCs
replaced and removed; the same set twice changes nothing; a bad set is refused whole."""
import collections

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Dot1Q, Ether
from scapy.layers.vxlan import VXLAN

from serpens.common.records import RouteRecord, RouteServer
from serpens.gateway.routes import GatewayRoutes, RouteSetError

from support.packets import eth, flow_frame
from support.sites import GatewaySite, unique_tag

pytestmark = pytest.mark.dataplane

S1, S2, S3 = (RouteServer(f"node{k}", f"192.168.60.1{k}", f"02:00:00:00:60:1{k}", 1)
              for k in (1, 2, 3))
MUTATORS = {"set_server", "remove_server", "add_sfc", "remove_sfc", "set_route",
            "set_default_sfc", "set_tag", "set_rules"}


class Recording:
    """The dp.Gateway, with the changes made to it written down."""

    def __init__(self, gw):
        self._gw, self.calls = gw, []

    def __getattr__(self, name):
        attr = getattr(self._gw, name)
        if name not in MUTATORS:
            return attr

        def call(*args):
            self.calls.append((name, *args))
            return attr(*args)
        return call


@pytest.fixture
def site(dataplane, request):
    s = GatewaySite(dataplane, f"r{unique_tag()}", ingress=2)
    s.rec = Recording(s.gw)
    s.routes = GatewayRoutes(s.rec, {"wan": s.ins[0].port, "dmz": s.ins[1].port})
    yield s
    s.close()


def route(sfc, tag, match=(), vlan=0, servers=(S1,), vni=0):
    """A route as the controller stores it (through its JSON form, as pushed)."""
    r = RouteRecord(sfc=sfc, tag=tag, vni=vni, match=tuple(match), vlan=vlan,
                    servers=tuple(servers))
    return RouteRecord.decode(r.encode())


def tags_of(site, frames, wire=None):
    return [Ether(w)[VXLAN].reserved1 for w in site.encap(frames, wire)]


DNS = bytes(eth() / IP(src="1.1.1.1", dst="10.1.1.1") / UDP(sport=999, dport=53))
WEB = bytes(eth() / IP(src="1.1.1.1", dst="10.1.1.1") / UDP(sport=999, dport=80))
ELSE = bytes(eth() / IP(src="1.1.1.1", dst="172.16.0.1") / UDP(sport=999, dport=80))
TAGGED = bytes(eth() / Dot1Q(vlan=42) / IP(src="1.1.1.1", dst="10.1.1.1") / UDP(dport=53))


def test_routes_classify_in_the_order_given_with_tags_and_the_one_default(site):
    dns = route("dns", 11, [{"proto": 17, "dport": [53, 53]}])
    net = route("net", 12, [{"dst": "10.0.0.0/8"}])
    vlan = route("vlan", 13, vlan=42)
    rest = route("rest", 14)
    site.routes.apply([dns, net, vlan, rest])
    assert tags_of(site, [DNS, WEB, ELSE, TAGGED]) == [11, 12, 14, 13]
    site.routes.apply([net, dns, vlan, rest])  # the DNS frame is 10/8's first now
    assert tags_of(site, [DNS, WEB, ELSE, TAGGED]) == [12, 12, 14, 13]
    site.routes.apply([net, dns, vlan])  # no default: the rest is unmatched
    assert tags_of(site, [DNS, ELSE]) == [12]
    assert site.gw.stats()["drops"]["unmatched"] == 1


def test_a_rule_port_names_an_ingress_port_and_an_unknown_one_never_matches(site):
    wan, dmz = site.ins
    site.routes.apply([route("from-dmz", 21, [{"port": "dmz"}]),
                       route("elsewhere", 22, [{"port": "lan", "dport": [80, 80]}]),
                       route("rest", 23)])
    assert tags_of(site, [WEB, DNS], dmz) == [21, 21]
    assert tags_of(site, [WEB, DNS], wan) == [23, 23]  # `lan` is no port of this gateway


def test_servers_follow_the_routes_and_leave_with_the_last_one(site):
    site.routes.apply([route("a", 31, [{"dport": [53, 53]}], servers=(S1, S2)),
                       route("b", 32, servers=(S2, S3))])
    assert set(site.gw.stats()["servers"]) == {S1.ip, S2.ip, S3.ip}
    frames = [flow_frame(f, 0) for f in range(200)]
    assert {Ether(w)[IP].dst for w in site.encap(frames)} == {S2.ip, S3.ip}
    site.routes.apply([route("b", 32, servers=(S3,))])
    assert set(site.gw.stats()["servers"]) == {S3.ip}
    assert {Ether(w)[IP].dst for w in site.encap(frames)} == {S3.ip}
    assert ("remove_sfc", 0) in site.rec.calls  # a's slot freed


def test_a_route_replaced_or_removed_takes_effect_and_frees_its_slot(site):
    site.routes.apply([route("a", 41, [{"dport": [53, 53]}]), route("b", 42)])
    assert tags_of(site, [DNS, WEB]) == [41, 42]
    site.routes.apply([route("a", 43, [{"dport": [53, 53]}], vni=5), route("b", 42)])
    out = [Ether(w)[VXLAN] for w in site.encap([DNS])]
    assert [(v.reserved1, v.vni) for v in out] == [(43, 5)]
    assert {s["tag"] for s in site.gw.stats()["sfcs"].values()} == {42, 43}
    site.routes.apply([route("b", 42)])
    assert tags_of(site, [DNS, WEB]) == [42, 42]  # the default takes what a took
    assert [s["tag"] for s in site.gw.stats()["sfcs"].values()] == [42]
    site.routes.apply([])
    assert site.gw.stats()["sfcs"] == {} and site.gw.stats()["servers"] == {}
    assert site.encap([DNS, WEB]) == []
    # every slot is free again: the gateway's 16 SFCs fit
    site.routes.apply([route(f"s{k}", 100 + k, [{"dport": [k, k]}]) for k in range(16)])
    assert len(site.gw.stats()["sfcs"]) == 16


def test_the_same_set_twice_changes_nothing_and_moves_no_flow(site):
    routes = [route("a", 51, [{"dst": "10.0.0.0/8"}], servers=(S1, S2, S3)),
              route("b", 52, vlan=42, servers=(S2,)), route("c", 53)]
    site.routes.apply(routes)
    flows = [flow_frame(f, 0) for f in range(300)]
    first = {Ether(w)[UDP].sport: Ether(w)[IP].dst for w in site.encap(flows)}
    assert len(set(first.values())) == 3
    stats = site.gw.stats()["sfcs"]
    sfc_a = next(k for k, s in stats.items() if s["tag"] == 51)
    table = site.gw.route_table(sfc_a)
    site.rec.calls.clear()
    site.routes.apply([RouteRecord.decode(r.encode()) for r in routes])  # equal, not the same
    assert site.rec.calls == []
    assert site.gw.route_table(sfc_a) == table
    again = {Ether(w)[UDP].sport: Ether(w)[IP].dst for w in site.encap(flows)}
    assert again == first
    after = site.gw.stats()["sfcs"][sfc_a]
    assert after["moved_flows"] == 0 and after["new_flows"] == stats[sfc_a]["new_flows"]


def test_a_weight_change_republishes_only_that_route_and_keeps_live_flows(site):
    site.routes.apply([route("a", 61, servers=(S1, S2))])
    flows = [flow_frame(f, 0) for f in range(300)]
    first = {Ether(w)[UDP].sport: Ether(w)[IP].dst for w in site.encap(flows)}
    site.rec.calls.clear()
    heavy = RouteServer(S3.node, S3.ip, S3.mac, 5)
    site.routes.apply([route("a", 61, servers=(S1, S2, heavy))])
    assert [c[0] for c in site.rec.calls] == ["set_server", "set_route"]
    again = {Ether(w)[UDP].sport: Ether(w)[IP].dst for w in site.encap(flows)}
    assert again == first  # live flows keep their server
    new = collections.Counter(Ether(w)[IP].dst for w in
                              site.encap([flow_frame(f, 0) for f in range(300, 1000)]))
    assert new[S3.ip] > new[S1.ip] + new[S2.ip]  # new flows follow the weights 1:1:5


@pytest.mark.parametrize("bad, field", [
    ([route("x", 71), route("y", 71, [{"dport": [1, 1]}])], "routes[1].tag"),
    ([route("x", 71), route("y", 72)], "routes[1].match"),
    ([route("x", 71, vlan=7), route("y", 72, vlan=7)], "routes[1].vlan"),
    ([route("x", 71), route("x", 72, vlan=3)], "routes[1].sfc"),
    ([route("x", 71), route("y", 72, [{"dport": [90, 80]}])], "routes[1].match[0].dport"),
    ([route("x", 71), route("y", 72, [{"src": "10.0.0.0/8", "dst": "::/0"}])],
     "routes[1].match[0].dst"),
    ([route("x", 71), route("y", 72, [{"dport": [1, 1], "vlan": 3}])],
     "routes[1].match[0].vlan"),
    ([route("x", 71), route("y", 72, [{"proto": 300}])], "routes[1].match[0].proto"),
    ([route("x", 71, servers=(S1,)),
      route("y", 72, [{"dport": [1, 1]}],
            servers=(RouteServer("n", S1.ip, "02:00:00:00:00:99", 1),))],
     "routes[1].servers[0].mac"),
    ([route("x", 71, servers=(RouteServer("n", S1.ip, S1.mac, 5000),))],
     "routes[0].servers[0].weight"),
    ([route(f"s{k}", 100 + k, [{"dport": [k, k]}]) for k in range(17)], "routes"),
])
def test_a_bad_set_is_refused_whole_naming_the_field(site, bad, field):
    good = [route("dns", 81, [{"dport": [53, 53]}]), route("rest", 82, servers=(S2,))]
    site.routes.apply(good)
    site.rec.calls.clear()
    with pytest.raises(RouteSetError) as e:
        site.routes.apply(bad)
    assert e.value.field == field, str(e.value)
    assert site.rec.calls == [], "a refused set changed the data path"
    assert site.routes.routes == tuple(good)
    out = site.encap([DNS, WEB])
    assert [(Ether(w)[VXLAN].reserved1, Ether(w)[IP].dst) for w in out] == \
        [(81, S1.ip), (82, S2.ip)]


def servers(prefix, n=64):
    return tuple(RouteServer(f"n{k}", f"192.168.{prefix}.{k + 1}", f"02:00:00:00:{prefix:02x}:{k:02x}",
                             1) for k in range(n))


def test_a_full_set_of_servers_can_be_replaced_by_another(site):
    site.routes.apply([route("dns", 81, [{"dport": [53, 53]}], servers=servers(61))])
    site.routes.apply([route("dns", 81, [{"dport": [53, 53]}], servers=servers(62))])
    assert set(site.routes.servers) == {s.ip for s in servers(62)}
    assert {Ether(w)[IP].dst for w in site.encap([DNS])} <= set(site.routes.servers)


@pytest.mark.parametrize("ip", ["255.255.255.255", "224.0.0.5", "0.0.0.0", "192.168.60.1"])
def test_a_server_address_no_server_can_have_is_refused(site, ip):
    routes = GatewayRoutes(site.rec, {}, own_ip="192.168.60.1")  # the gateway's underlay
    with pytest.raises(RouteSetError) as e:
        routes.apply([route("x", 71, servers=(RouteServer("n", ip, S1.mac, 1),))])
    assert e.value.field == "routes[0].servers[0].ip", str(e.value)
    assert site.rec.calls == []


def test_sfcs_are_not_freed_while_the_loop_may_still_use_them(site):
    site.routes.apply([route("dns", 81, [{"dport": [53, 53]}]), route("rest", 82)])
    dns = site.routes.sfcs["dns"].id
    site.rec.quiesce = lambda timeout=1.0: False   # the loop did not come round
    with pytest.raises(RuntimeError, match="did not quiesce"):
        site.routes.apply([route("rest", 82)])
    assert not [c for c in site.rec.calls if c[0] == "remove_sfc"]
    assert site.routes.sfcs["dns"].id == dns  # kept, unrouted: removed by the next push
    del site.rec.quiesce
    site.routes.apply([route("rest", 82)])
    assert ("remove_sfc", dns) in site.rec.calls and "dns" not in site.routes.sfcs
    assert [Ether(w)[VXLAN].reserved1 for w in site.encap([DNS])] == [82]
