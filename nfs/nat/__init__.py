"""Stock NAT NF (NAPT44): configuration encoder (the manual is the header comment of nat.c).

    encode_config({"internal": "10.0.0.0/8", "external_ips": ["192.0.2.1"],
                   "port_range": "1024-65535", "idle_timeout": 120}) -> bytes for nat.c's init()

The whole dict is validated before anything is packed; the first problem found raises
ConfigError naming the field, e.g. ``port_range: 70000 is not a port``.
"""
from __future__ import annotations

import ipaddress
import math
import struct
from serpens.nfs import ConfigError, is_int

__all__ = ["ConfigError", "encode_config", "decode_config", "MAGIC", "MAX_EXTERNAL_IPS",
           "MAX_FLOWS", "DEFAULT_PORT_RANGE", "DEFAULT_IDLE_TIMEOUT", "DEFAULT_MAX_FLOWS",
           "TABLES", "BITMAP_BYTES"]

MAGIC = 0x31544E53  # "SNT1" little-endian
MAX_EXTERNAL_IPS = 16
MAX_FLOWS = 1 << 22
MAX_IDLE_TIMEOUT = 604800  # seconds (7 days)
DEFAULT_PORT_RANGE = (1024, 65535)
DEFAULT_IDLE_TIMEOUT = 300
DEFAULT_MAX_FLOWS = 65536
BITMAP_BYTES = 8192  # value of the "ports" table: bit p set = port p free
TABLES = ("out", "in", "ports")

_HDR = struct.Struct("<I4sBBHHHII")
_REQUIRED = ("internal", "external_ips")
_FIELDS = {"internal", "external_ips", "port_range", "idle_timeout", "max_flows"}


def _port(field: str, v) -> int:
    if isinstance(v, str):
        s = v.strip()
        if not (s.isascii() and s.isdigit()):
            raise ConfigError(field, f"{v!r} is not a port")
        v = int(s)
    if not is_int(v):
        raise ConfigError(field, f"{v!r} is not a port")
    if not 1 <= v <= 65535:
        raise ConfigError(field, f"{v} is not a port" + (" (0 cannot be handed out)"
                                                          if v == 0 else ""))
    return v


def _port_range(v) -> tuple[int, int]:
    field = "port_range"
    if v is None:
        return DEFAULT_PORT_RANGE
    if isinstance(v, str):
        lo_s, sep, hi_s = v.partition("-")
        if not sep:
            raise ConfigError(field, f"{v!r} is not a range lo-hi")
        lo, hi = _port(field, lo_s), _port(field, hi_s)
    elif isinstance(v, (list, tuple)):
        if len(v) != 2:
            raise ConfigError(field, f"a range is [lo, hi], got {len(v)} element(s)")
        lo, hi = _port(field, v[0]), _port(field, v[1])
    else:
        raise ConfigError(field, f"{v!r} is not a range lo-hi")
    if lo > hi:
        raise ConfigError(field, f"range {lo}-{hi} is empty")
    return lo, hi


def _ipv4(field: str, v) -> ipaddress.IPv4Address:
    if not isinstance(v, str):
        raise ConfigError(field, f"{v!r} is not an IPv4 address")
    try:
        return ipaddress.IPv4Address(v.strip())
    except ValueError:
        raise ConfigError(field, f"{v!r} is not an IPv4 address") from None


def _internal(v) -> ipaddress.IPv4Network:
    if not isinstance(v, str):
        raise ConfigError("internal", f"{v!r} is not an IPv4 CIDR")
    try:
        net = ipaddress.ip_network(v.strip(), strict=True)
    except ValueError as e:
        raise ConfigError("internal", f"{v!r} is not a valid CIDR ({e})") from None
    if net.version != 4:
        raise ConfigError("internal", f"{v!r} is IPv6; this NAT is NAPT44 (IPv4 only)")
    return net


def _external_ips(v, internal) -> list[ipaddress.IPv4Address]:
    if isinstance(v, str):
        v = [v]  # a single address is accepted as a list of one
    if not isinstance(v, (list, tuple)):
        raise ConfigError("external_ips", f"a list of IPv4 addresses, got {type(v).__name__}")
    if not 1 <= len(v) <= MAX_EXTERNAL_IPS:
        raise ConfigError("external_ips", f"{len(v)} addresses, need 1 to {MAX_EXTERNAL_IPS}")
    out = []
    for i, a in enumerate(v):
        field = f"external_ips[{i}]"
        ip = _ipv4(field, a)
        if int(ip) == 0:
            raise ConfigError(field, "0.0.0.0 is not an address")
        if ip in internal:
            raise ConfigError(field, f"{ip} lies inside internal {internal}")
        if ip in out:
            raise ConfigError(field, f"{ip} is listed twice")
        out.append(ip)
    return out


def _idle_timeout(v) -> int:
    field = "idle_timeout"
    if v is None:
        v = DEFAULT_IDLE_TIMEOUT
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConfigError(field, f"{v!r} is not a number of seconds")
    ms = round(v * 1000)
    if not 1 <= ms <= MAX_IDLE_TIMEOUT * 1000:
        raise ConfigError(field, f"{v} s is outside 0.001-{MAX_IDLE_TIMEOUT} s")
    return ms


def encode_config(cfg: dict) -> bytes:
    """Validate a NAT configuration dict and pack it for nat.c's init()."""
    if not isinstance(cfg, dict):
        raise ConfigError("config", f"a dict, got {type(cfg).__name__}")
    unknown = sorted(set(cfg) - _FIELDS, key=str)
    if unknown:
        raise ConfigError(str(unknown[0]), f"unknown field (fields: {', '.join(sorted(_FIELDS))})")
    for f in _REQUIRED:
        if cfg.get(f) is None:
            raise ConfigError(f, "missing (required)")
    internal = _internal(cfg["internal"])
    ext = _external_ips(cfg["external_ips"], internal)
    lo, hi = _port_range(cfg.get("port_range"))
    timeout_ms = _idle_timeout(cfg.get("idle_timeout"))
    cap = cfg.get("max_flows", DEFAULT_MAX_FLOWS)
    if not is_int(cap) or not 1 <= cap <= MAX_FLOWS:
        raise ConfigError("max_flows", f"{cap!r} is not an integer in 1-{MAX_FLOWS}")
    return _HDR.pack(MAGIC, internal.network_address.packed, internal.prefixlen, len(ext),
                     lo, hi, 0, timeout_ms, cap) + b"".join(ip.packed for ip in ext)


def decode_config(data: bytes) -> dict:
    """The inverse of encode_config (for tools and tests): the normalised dict."""
    magic, net, plen, n, lo, hi, _, ms, cap = _HDR.unpack_from(data)
    if magic != MAGIC or len(data) != _HDR.size + 4 * n:
        raise ConfigError("config", "not a packed NAT configuration")
    ips = [str(ipaddress.IPv4Address(data[_HDR.size + 4 * i:_HDR.size + 4 * i + 4]))
           for i in range(n)]
    return {"internal": f"{ipaddress.IPv4Address(net)}/{plen}", "external_ips": ips,
            "port_range": f"{lo}-{hi}", "idle_timeout": ms / 1000, "max_flows": cap}
