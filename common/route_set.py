"""What one gateway can hold at once (gateway/gateway.h): the set-level limits of a route set.

Both sides use it: the gateway refuses a pushed set that breaks them (gateway/routes.py), and
the leader checks each routed SFC against them before it routes it (controller/routes.py), so
it never pushes a set the gateway must refuse whole: an SFC that does not fit stays Pending.
"""
from __future__ import annotations

import ipaddress

MAX_SFCS = 16      # gateway.h SERPENS_GW_MAX_SFCS
MAX_RULES = 64     # SERPENS_GW_MAX_RULES
RULE_KEYS = ("src", "dst", "proto", "sport", "dport", "port")


class RouteSetError(ValueError):
    """A route that does not fit the set; `field` names the offending route's field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class RouteSet:
    """Routes added one at a time (in match order), each checked against those before it:
    `add` raises RouteSetError and leaves the set as it was. `ingress`: the port names a rule
    may name (None: any; a rule naming a port the gateway lacks then never matches)."""

    def __init__(self, ingress=None):
        self.ingress = None if ingress is None else frozenset(ingress)
        self.names: dict[str, int] = {}
        self.tags: dict[int, int] = {}
        self.vlans: dict[int, int] = {}
        self.default: int | None = None
        self.rules = 0

    def add(self, route, at: str | None = None) -> None:
        """Check `route` (a RouteRecord) against the set and add it. `at` names it in errors
        (default routes[i], i its place in the set)."""
        i = len(self.names)
        at = at or f"routes[{i}]"
        if len(self.names) >= MAX_SFCS:
            raise RouteSetError("routes", f"the gateway holds at most {MAX_SFCS} SFCs")
        if route.sfc in self.names:
            raise RouteSetError(f"{at}.sfc", f"{route.sfc!r} is routes[{self.names[route.sfc]}] too")
        if route.tag in self.tags:
            raise RouteSetError(f"{at}.tag", f"tag {route.tag} is routes[{self.tags[route.tag]}]'s too")
        if route.vlan:
            if not 0 < route.vlan < 4095:
                raise RouteSetError(f"{at}.vlan", f"a VLAN ID 1..4094, got {route.vlan}")
            if route.vlan in self.vlans:
                raise RouteSetError(f"{at}.vlan",
                                    f"VLAN {route.vlan} is routes[{self.vlans[route.vlan]}]'s too")
        default = not route.match and not route.vlan
        if default and self.default is not None:
            raise RouteSetError(f"{at}.match", "only one SFC may take unmatched frames, and "
                                               f"routes[{self.default}] does")
        for j, rule in enumerate(route.match):
            check_rule(rule, f"{at}.match[{j}]", self.ingress)
        if self.rules + len(route.match) > MAX_RULES:
            raise RouteSetError(f"{at}.match", f"{self.rules + len(route.match)} match rules; "
                                               f"the gateway holds at most {MAX_RULES}")
        self.names[route.sfc] = self.tags[route.tag] = i
        if route.vlan:
            self.vlans[route.vlan] = i
        if default:
            self.default = i
        self.rules += len(route.match)


def check_rule(rule, where: str, ingress=None) -> None:
    """A rule as common/spec.py normalises spec.match (src/dst prefixes, proto number,
    sport/dport [lo, hi], port name), as stored in a route record."""
    if not isinstance(rule, dict):
        raise RouteSetError(where, "a mapping of " + ", ".join(RULE_KEYS))
    for key in rule:
        if key not in RULE_KEYS:
            raise RouteSetError(f"{where}.{key}", "unknown key (known: "
                                                  f"{', '.join(sorted(RULE_KEYS))})")
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
    if "port" in rule:
        if not isinstance(rule["port"], str) or not rule["port"]:
            raise RouteSetError(f"{where}.port", "the name of an ingress port")
        if ingress is not None and rule["port"] not in ingress:
            raise RouteSetError(f"{where}.port", f"{rule['port']!r} is no gateway's ingress "
                                f"port (they have {', '.join(sorted(ingress)) or 'none'})")
