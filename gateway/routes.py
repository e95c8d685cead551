"""A route set applied to the gateway's packet loop as a whole (CONTRACT13 "Gateway").

The controller pushes every route each time (common/records.py RouteRecord: an SFC's tag,
VNI, classification and weighted servers). `GatewayRoutes.apply` checks the whole set first
(RouteSetError naming `routes[i].field`; nothing is applied) and then changes only what
differs from the set in effect, so pushing the same set again touches nothing on the data
path, and a change moves no flow it need not move:

  1. servers new (or with a new MAC) are set (when the old and the new together exceed the
     gateway's 64, the old leave first: their flows move to the servers left);
  2. SFCs leaving (absent, or with another tag or VNI) are unrouted, the loop quiesced, and
     they are removed (dp.Gateway.remove_sfc's discipline; a loop that does not quiesce
     leaves them unrouted, not freed, and the push fails, to be retried);
  3. SFCs new are added; every SFC whose servers or weights changed gets its route (Maglev
     table) republished: live flows keep their server while it stays;
  4. the classification (rules in route order, VLAN tags, the default) is set if it changed;
  5. servers no route names any more are removed.

Classification follows the router's: a route's `vlan` tags, its `match` rules in order, the
one route with neither takes what nothing else does. A rule's `port` names an ingress port of
this gateway; a rule naming a port it lacks never matches (it is left out).
"""
from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass

from serpens.common.records import RouteRecord
from serpens.common.route_set import (MAX_RULES, MAX_SFCS, RouteSet,  # noqa: F401
                                      RouteSetError)

log = logging.getLogger(__name__)

MAX_SERVERS = 64   # SERPENS_GW_MAX_SERVERS
MAX_WEIGHT = 1000  # dp.Gateway.set_route


@dataclass(frozen=True)
class _SFC:
    id: int
    tag: int
    vni: int


class GatewayRoutes:
    """The route set in effect on `gateway` (a dp.Gateway). `ingress`: ingress port name ->
    DPDK port id (what match rules' `port` names); `own_ip`: the gateway's underlay address
    (no server may have it). Not thread-safe: one caller at a time."""

    def __init__(self, gateway, ingress: dict[str, int], own_ip: str | None = None):
        self.gw = gateway
        self.ingress = dict(ingress)
        self.own_ip = None if own_ip is None else ipaddress.IPv4Address(own_ip)
        self.sfcs: dict[str, _SFC] = {}
        self.weights: dict[str, dict[str, int]] = {}   # SFC -> {server ip: weight}
        self.servers: dict[str, str] = {}              # server ip -> MAC
        self.nodes: dict[str, dict[str, str]] = {}     # SFC -> {server ip: node} (reports)
        self._rules: list = []
        self._tags: dict[int, int] = {}                # VLAN -> SFC id
        self._default = -1
        self.routes: tuple[RouteRecord, ...] = ()

    # ---- checking ---------------------------------------------------------------------------

    def check(self, routes) -> None:
        """RouteSetError naming the first field that cannot be applied."""
        if len(routes) > MAX_SFCS:
            raise RouteSetError("routes", f"{len(routes)} routes; the gateway holds at most "
                                          f"{MAX_SFCS} SFCs")
        accepted, macs = RouteSet(), {}
        for i, r in enumerate(routes):
            at = f"routes[{i}]"
            accepted.add(r, at)
            seen = set()
            for j, s in enumerate(r.servers):
                where = f"{at}.servers[{j}]"
                ip = ipaddress.IPv4Address(s.ip)
                if ip.is_multicast or ip.is_unspecified or int(ip) == 0xFFFFFFFF or \
                        (self.own_ip is not None and ip == self.own_ip):
                    raise RouteSetError(f"{where}.ip", f"a server's unicast underlay address, "
                                        f"got {ip}" + (" (the gateway's own)"
                                                       if ip == self.own_ip else ""))
                if s.ip in seen:
                    raise RouteSetError(f"{where}.ip", f"{s.ip} is listed twice")
                seen.add(s.ip)
                if s.weight > MAX_WEIGHT:
                    raise RouteSetError(f"{where}.weight", f"at most {MAX_WEIGHT}, got {s.weight}")
                if macs.setdefault(s.ip, (s.mac, where))[0] != s.mac:
                    raise RouteSetError(f"{where}.mac", f"{s.ip} is {macs[s.ip][0]} in "
                                                        f"{macs[s.ip][1]}")
        # servers leaving are removed before new ones are set (apply), so only the new set
        # counts
        if len(macs) > MAX_SERVERS:
            raise RouteSetError("routes", f"{len(macs)} servers: the gateway holds at most "
                                          f"{MAX_SERVERS}")

    # ---- applying ---------------------------------------------------------------------------

    def apply(self, routes) -> None:
        """Make `routes` (RouteRecords, in match order) the set in effect, or raise
        RouteSetError and change nothing."""
        routes = tuple(routes)
        self.check(routes)
        wanted = {r.sfc: r for r in routes}
        servers = {s.ip: s.mac for r in routes for s in r.servers}
        if len(set(servers) | set(self.servers)) > MAX_SERVERS:
            # no room for the new beside the old: the old go first (their flows move to the
            # servers left; routes get the new ones below)
            self._remove_servers(servers)
        for ip, mac in servers.items():
            if self.servers.get(ip) != mac:
                self.gw.set_server(ip, mac)
                self.servers[ip] = mac
        leaving = [name for name, s in self.sfcs.items()
                   if name not in wanted or (s.tag, s.vni) != (wanted[name].tag,
                                                               wanted[name].vni)]
        if leaving:
            gone = {self.sfcs[name].id for name in leaving}
            self._classify([r for r in self._rules if r["sfc"] not in gone],
                           {v: s for v, s in self._tags.items() if s not in gone},
                           -1 if self._default in gone else self._default)
            if not self.gw.quiesce():
                # the loop may still hold frames of these SFCs: freeing their slots now could
                # hand them to another SFC. They stay (unrouted) until the next push.
                raise RuntimeError("the gateway loop did not quiesce: SFCs "
                                   f"{', '.join(sorted(leaving))} not removed yet")
            for name in leaving:
                self.gw.remove_sfc(self.sfcs.pop(name).id)
                del self.weights[name]
        for r in routes:
            if r.sfc not in self.sfcs:
                self.sfcs[r.sfc] = _SFC(self.gw.add_sfc(r.tag, r.vni), r.tag, r.vni)
            weights = {s.ip: s.weight for s in r.servers}
            if self.weights.get(r.sfc) != weights:
                self.gw.set_route(self.sfcs[r.sfc].id, weights)
                self.weights[r.sfc] = weights
        self.nodes = {r.sfc: {s.ip: s.node for s in r.servers} for r in routes}
        self._classify(*self._classification(routes))
        self._remove_servers(servers)
        self.routes = routes

    def _remove_servers(self, keep) -> None:
        """Remove the servers not in `keep` (their flows move to the others)."""
        for ip in [ip for ip in self.servers if ip not in keep]:
            self.gw.remove_server(ip)
            del self.servers[ip]
            for weights in self.weights.values():
                weights.pop(ip, None)

    def _classification(self, routes):
        rules, tags, default = [], {}, -1
        for r in routes:
            sfc = self.sfcs[r.sfc].id
            for rule in r.match:
                rule = {k: tuple(v) if k in ("sport", "dport") else v for k, v in rule.items()}
                port = rule.pop("port", None)
                if port is not None:
                    if port not in self.ingress:
                        continue  # names a port this gateway lacks: never matches
                    rule["in_port"] = self.ingress[port]
                rules.append(dict(rule, sfc=sfc))
            if r.vlan:
                tags[r.vlan] = sfc
            if not r.match and not r.vlan:
                default = sfc
        return rules, tags, default

    def _classify(self, rules, tags, default):
        """Set what differs: rules, then tags, then the default."""
        if rules != self._rules:
            self.gw.set_rules(rules)
            self._rules = rules
        for vlan, sfc in tags.items():
            if self._tags.get(vlan) != sfc:
                self.gw.set_tag(vlan, sfc)
        for vlan in set(self._tags) - set(tags):
            self.gw.set_tag(vlan, -1)
        self._tags = dict(tags)
        if default != self._default:
            self.gw.set_default_sfc(default)
            self._default = default
