"""A route set applied to the gateway's packet loop as a whole (CONTRACT13 "Gateway").

The controller pushes every route each time (common/records.py RouteRecord: an SFC's tag,
VNI, classification and weighted servers). `GatewayRoutes.apply` checks the whole set first
(RouteSetError naming `routes[i].field`; nothing is applied) and then changes only what
differs from the set in effect, so pushing the same set again touches nothing on the data
path, and a change moves no flow it need not move:

  1. servers new (or with a new MAC) are set;
  2. SFCs leaving (absent, or with another tag or VNI) are unrouted, the loop quiesced, and
     they are removed (dp.Gateway.remove_sfc's discipline);
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
from dataclasses import dataclass

from serpens.common.records import RouteRecord

MAX_SFCS = 16      # gateway.h SERPENS_GW_MAX_SFCS
MAX_RULES = 64     # SERPENS_GW_MAX_RULES
MAX_SERVERS = 64   # SERPENS_GW_MAX_SERVERS
MAX_WEIGHT = 1000  # dp.Gateway.set_route
_RULE_KEYS = ("src", "dst", "proto", "sport", "dport", "port")


class RouteSetError(ValueError):
    """A route set refused whole; `field` names the offending route's field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class _SFC:
    id: int
    tag: int
    vni: int


class GatewayRoutes:
    """The route set in effect on `gateway` (a dp.Gateway). `ingress`: ingress port name ->
    DPDK port id (what match rules' `port` names). Not thread-safe: one caller at a time."""

    def __init__(self, gateway, ingress: dict[str, int]):
        self.gw = gateway
        self.ingress = dict(ingress)
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
        names, tags, vlans, default, macs = {}, {}, {}, None, {}
        nrules = 0
        for i, r in enumerate(routes):
            at = f"routes[{i}]"
            if r.sfc in names:
                raise RouteSetError(f"{at}.sfc", f"{r.sfc!r} is routes[{names[r.sfc]}] too")
            names[r.sfc] = i
            if r.tag in tags:
                raise RouteSetError(f"{at}.tag", f"tag {r.tag} is routes[{tags[r.tag]}]'s too")
            tags[r.tag] = i
            if r.vlan:
                if not 0 < r.vlan < 4095:
                    raise RouteSetError(f"{at}.vlan", f"a VLAN ID 1..4094, got {r.vlan}")
                if r.vlan in vlans:
                    raise RouteSetError(f"{at}.vlan",
                                        f"VLAN {r.vlan} is routes[{vlans[r.vlan]}]'s too")
                vlans[r.vlan] = i
            if not r.match and not r.vlan:
                if default is not None:
                    raise RouteSetError(f"{at}.match", f"only one SFC may take unmatched "
                                                       f"frames, and routes[{default}] does")
                default = i
            for j, rule in enumerate(r.match):
                _check_rule(rule, f"{at}.match[{j}]")
            nrules += len(r.match)
            seen = set()
            for j, s in enumerate(r.servers):
                where = f"{at}.servers[{j}]"
                if s.ip in seen:
                    raise RouteSetError(f"{where}.ip", f"{s.ip} is listed twice")
                seen.add(s.ip)
                if s.weight > MAX_WEIGHT:
                    raise RouteSetError(f"{where}.weight", f"at most {MAX_WEIGHT}, got {s.weight}")
                if macs.setdefault(s.ip, (s.mac, where))[0] != s.mac:
                    raise RouteSetError(f"{where}.mac", f"{s.ip} is {macs[s.ip][0]} in "
                                                        f"{macs[s.ip][1]}")
        if nrules > MAX_RULES:
            raise RouteSetError("routes", f"{nrules} match rules; the gateway holds at most "
                                          f"{MAX_RULES}")
        if len(macs) > MAX_SERVERS or len(set(macs) | set(self.servers)) > MAX_SERVERS:
            raise RouteSetError("routes", f"{len(macs)} servers, {len(self.servers)} in "
                                          f"effect: the gateway holds at most {MAX_SERVERS} "
                                          "at once")

    # ---- applying ---------------------------------------------------------------------------

    def apply(self, routes) -> None:
        """Make `routes` (RouteRecords, in match order) the set in effect, or raise
        RouteSetError and change nothing."""
        routes = tuple(routes)
        self.check(routes)
        wanted = {r.sfc: r for r in routes}
        servers = {s.ip: s.mac for r in routes for s in r.servers}
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
            self.gw.quiesce()
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
        for ip in [ip for ip in self.servers if ip not in servers]:
            self.gw.remove_server(ip)
            del self.servers[ip]
        self.routes = routes

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


def _check_rule(rule, where: str) -> None:
    """A rule as common/spec.py normalises spec.match (src/dst prefixes, proto number,
    sport/dport [lo, hi], port name), as stored in a route record."""
    if not isinstance(rule, dict):
        raise RouteSetError(where, "a mapping of " + ", ".join(_RULE_KEYS))
    for key in rule:
        if key not in _RULE_KEYS:
            raise RouteSetError(f"{where}.{key}", "unknown key (known: "
                                                  f"{', '.join(sorted(_RULE_KEYS))})")
    versions = {}
    for key in ("src", "dst"):
        if key in rule:
            try:
                versions[key] = ipaddress.ip_network(str(rule[key]), strict=False).version
            except ValueError:
                raise RouteSetError(f"{where}.{key}", f"an IPv4 or IPv6 prefix, got "
                                                      f"{rule[key]!r}") from None
    if len(set(versions.values())) > 1:
        raise RouteSetError(f"{where}.dst", "the same IP version as src")
    if "proto" in rule:
        p = rule["proto"]
        if isinstance(p, bool) or not isinstance(p, int) or not 0 < p < 256:
            raise RouteSetError(f"{where}.proto", f"a protocol number 1..255, got {p!r}")
    for key in ("sport", "dport"):
        if key in rule:
            v = rule[key]
            if not (isinstance(v, (list, tuple)) and len(v) == 2
                    and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
                    and 0 <= v[0] <= v[1] <= 65535):
                raise RouteSetError(f"{where}.{key}", f"a port range [lo, hi] in 0..65535, "
                                                      f"got {v!r}")
    if "port" in rule and (not isinstance(rule["port"], str) or not rule["port"]):
        raise RouteSetError(f"{where}.port", "the name of an ingress port")
