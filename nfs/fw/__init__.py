"""Stock firewall NF: configuration encoder (the manual is the header comment of fw.c).

    encode_config({"default": "deny",
                   "rules": [{"action": "allow", "dst": "10.0.0.0/8", "proto": "tcp",
                              "dport": "80"}]}) -> bytes for fw.c's init()

The whole dict is validated before anything is packed; the first problem found raises
ConfigError naming the field, e.g. ``rules[2].dport: range 90-80 is empty``.
"""
from __future__ import annotations

import ipaddress
import struct
from serpens.nfs import ConfigError, is_int

__all__ = ["ConfigError", "encode_config", "MAGIC", "MAX_RULES", "MAX_CAPACITY",
           "DEFAULT_CAPACITY"]

MAGIC = 0x31574653  # "SFW1" little-endian
MAX_RULES = 256
MAX_CAPACITY = 1 << 24
DEFAULT_CAPACITY = 65536
CONFIG_MAX = 8192  # bytes of NF configuration one SFC may carry (runtime_cy pool_ctl.h)

_ACTIONS = {"deny": 0, "allow": 1}
_PROTOS = {"any": 0, "icmp": 1, "tcp": 6, "udp": 17}
_RULE_KEYS = {"action", "src", "dst", "proto", "sport", "dport"}
_TOP_KEYS = {"rules", "default", "cache_capacity"}
_HDR = struct.Struct("<IBBHI")
_RULE = struct.Struct("<BBBBBHHHH")


def _port(field: str, v) -> int:
    if isinstance(v, str):
        s = v.strip()
        if not (s.isascii() and s.isdigit()):
            raise ConfigError(field, f"{v!r} is not a port number")
        v = int(s)
    if not is_int(v):
        raise ConfigError(field, f"{v!r} is not a port number")
    if not 0 <= v <= 65535:
        raise ConfigError(field, f"port {v} is outside 0-65535")
    return v


def _port_range(field: str, v) -> tuple[int, int]:
    if v is None or (isinstance(v, str) and v.strip().lower() == "any"):
        return 0, 65535
    if isinstance(v, str) and "-" in v:
        lo_s, _, hi_s = v.partition("-")
        lo, hi = _port(field, lo_s), _port(field, hi_s)
    elif isinstance(v, (list, tuple)):
        if len(v) != 2:
            raise ConfigError(field, f"a range is [lo, hi], got {len(v)} element(s)")
        lo, hi = _port(field, v[0]), _port(field, v[1])
    else:
        lo = hi = _port(field, v)
    if lo > hi:
        raise ConfigError(field, f"range {lo}-{hi} is empty")
    return lo, hi


def _network(field: str, v):
    if v is None or (isinstance(v, str) and v.strip().lower() == "any"):
        return None
    if not isinstance(v, str):
        raise ConfigError(field, f"{v!r} is not 'any' or a CIDR")
    try:
        return ipaddress.ip_network(v.strip(), strict=True)
    except ValueError as e:
        raise ConfigError(field, f"{v!r} is not a valid CIDR ({e})") from None


def _choice(field: str, v, choices: dict, default: str) -> int:
    if v is None:
        v = default
    if not isinstance(v, str) or v.strip().lower() not in choices:
        raise ConfigError(field, f"{v!r} is not one of {', '.join(choices)}")
    return choices[v.strip().lower()]


def _rule(i: int, r) -> bytes:
    where = f"rules[{i}]"
    if not isinstance(r, dict):
        raise ConfigError(where, f"a rule is a dict, got {type(r).__name__}")
    unknown = sorted(set(r) - _RULE_KEYS, key=str)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}", "unknown field (fields: "
                          f"{', '.join(sorted(_RULE_KEYS))})")
    if "action" not in r:
        raise ConfigError(f"{where}.action", "missing (allow or deny)")
    action = _choice(f"{where}.action", r["action"], _ACTIONS, "allow")
    src = _network(f"{where}.src", r.get("src"))
    dst = _network(f"{where}.dst", r.get("dst"))
    if src is not None and dst is not None and src.version != dst.version:
        raise ConfigError(f"{where}.dst", f"IPv{dst.version} CIDR {dst} with an "
                          f"IPv{src.version} src ({src}): a rule matches one family")
    proto = _choice(f"{where}.proto", r.get("proto"), _PROTOS, "any")
    sport = _port_range(f"{where}.sport", r.get("sport"))
    dport = _port_range(f"{where}.dport", r.get("dport"))
    if proto == _PROTOS["icmp"]:
        for name, rng in (("sport", sport), ("dport", dport)):
            if rng != (0, 65535):
                raise ConfigError(f"{where}.{name}", "icmp has no ports (use tcp, udp or any)")
    net = src or dst
    family = net.version if net is not None else 0
    slen = src.prefixlen if src is not None else 0
    dlen = dst.prefixlen if dst is not None else 0
    sbytes = src.network_address.packed[:(slen + 7) // 8] if src is not None else b""
    dbytes = dst.network_address.packed[:(dlen + 7) // 8] if dst is not None else b""
    return _RULE.pack(action, family, proto, slen, dlen, *sport, *dport) + sbytes + dbytes


def encode_config(cfg: dict | None = None) -> bytes:
    """Validate a firewall configuration dict and pack it for fw.c's init()."""
    cfg = {} if cfg is None else cfg
    if not isinstance(cfg, dict):
        raise ConfigError("config", f"a dict, got {type(cfg).__name__}")
    unknown = sorted(set(cfg) - _TOP_KEYS, key=str)
    if unknown:
        raise ConfigError(str(unknown[0]), f"unknown field (fields: {', '.join(sorted(_TOP_KEYS))})")
    rules = cfg.get("rules", [])
    if rules is None:
        rules = []
    if not isinstance(rules, (list, tuple)):
        raise ConfigError("rules", f"a list of rules, got {type(rules).__name__}")
    if len(rules) > MAX_RULES:
        raise ConfigError("rules", f"{len(rules)} rules, at most {MAX_RULES}")
    default = _choice("default", cfg.get("default"), _ACTIONS, "allow")
    cap = cfg.get("cache_capacity", DEFAULT_CAPACITY)
    if not is_int(cap) or not 0 <= cap <= MAX_CAPACITY:
        raise ConfigError("cache_capacity", f"{cap!r} is not an integer in 0-{MAX_CAPACITY}")
    body = b"".join(_rule(i, r) for i, r in enumerate(rules))
    out = _HDR.pack(MAGIC, default, 0, len(rules), cap) + body
    if len(out) > CONFIG_MAX:
        raise ConfigError("rules", f"the packed config is {len(out)} bytes, more than an SFC "
                          f"carries ({CONFIG_MAX}); use fewer or shorter-prefix rules")
    return out
