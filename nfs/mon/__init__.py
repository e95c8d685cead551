"""Stock monitor NF: configuration encoder and counter readers (the manual is the header
comment of mon.c).

    encode_config({"flow_capacity": 1 << 20, "merge_period_ms": 50}) -> bytes for mon.c's init()
    read_flows(StateManager(state_dir), "mon") -> {(src, dst, proto, sport, dport): (packets, bytes)}
    read_hosts(StateManager(state_dir), "mon") -> {"10.0.0.1": (packets, bytes), ...}

Every field is validated before anything is packed; a problem raises ConfigError naming the
field, e.g. ``merge_period_ms: 0 is not an integer in 1-60000``.
"""
from __future__ import annotations

import ipaddress
import struct
from serpens.nfs import ConfigError, is_int

__all__ = ["ConfigError", "encode_config", "read_flows", "read_hosts", "decode_flow_key",
           "decode_host_key", "decode_entry", "MAGIC", "DEFAULTS", "FLOWS_TABLE", "HOSTS_TABLE"]

MAGIC = 0x314E4D53  # "SMN1" little-endian
MAX_CAPACITY = 1 << 24
MAX_PERIOD_MS = 60000
DEFAULTS = {"flow_capacity": 65536, "host_capacity": 4096, "merge_period_ms": 100}
_LIMITS = {"flow_capacity": (1, MAX_CAPACITY), "host_capacity": (1, MAX_CAPACITY),
           "merge_period_ms": (1, MAX_PERIOD_MS)}
_CFG = struct.Struct("<IIII")

FLOWS_TABLE = "flows"
HOSTS_TABLE = "hosts"
_FLOW_KEY = struct.Struct("<16s16s2s2sBB2x")  # struct serpens_flow (ports in network order)
_HOST_KEY = struct.Struct("<16sB3x")         # struct mon_host
_COUNTS = struct.Struct("<QQ")               # struct mon_counts

PROTOS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6"}


def encode_config(cfg: dict | None = None) -> bytes:
    """Validate a monitor configuration dict and pack it for mon.c's init()."""
    cfg = {} if cfg is None else cfg
    if not isinstance(cfg, dict):
        raise ConfigError("config", f"a dict, got {type(cfg).__name__}")
    unknown = sorted((k for k in cfg if k not in DEFAULTS), key=str)
    if unknown:
        raise ConfigError(str(unknown[0]), f"unknown field (fields: {', '.join(DEFAULTS)})")
    values = []
    for name, default in DEFAULTS.items():
        v = cfg.get(name, default)
        lo, hi = _LIMITS[name]
        if not is_int(v) or not lo <= v <= hi:
            raise ConfigError(name, f"{v!r} is not an integer in {lo}-{hi}")
        values.append(v)
    return _CFG.pack(MAGIC, *values)


def _addr(raw: bytes, family: int) -> str:
    if family == 4:
        return str(ipaddress.IPv4Address(raw[:4]))
    if family == 6:
        return str(ipaddress.IPv6Address(raw))
    raise ValueError(f"address family {family}")


def decode_flow_key(key: bytes) -> tuple:
    """A "flows" key as (src, dst, proto, sport, dport): addresses as strings, ports in host
    order (for ICMP echo, sport is the identifier and dport 0)."""
    src, dst, sport, dport, proto, family = _FLOW_KEY.unpack(key)
    return (_addr(src, family), _addr(dst, family), proto,
            int.from_bytes(sport, "big"), int.from_bytes(dport, "big"))


def decode_host_key(key: bytes) -> str:
    addr, family = _HOST_KEY.unpack(key)
    return _addr(addr, family)


def decode_entry(table: str, key: bytes, value: bytes) -> dict | None:
    """One entry of MON's tables as plain data (the agent's ReadState; None: not MON's)."""
    packets, nbytes = _COUNTS.unpack(value[:_COUNTS.size])
    if table == FLOWS_TABLE:
        src, dst, proto, sport, dport = decode_flow_key(key)
        return {"src": src, "dst": dst, "proto": proto, "sport": sport, "dport": dport,
                "packets": packets, "bytes": nbytes}
    if table == HOSTS_TABLE:
        return {"host": decode_host_key(key), "packets": packets, "bytes": nbytes}
    return None


def _read(state_manager, nf_name: str, table: str, decode) -> dict:
    t = state_manager.open(nf_name, table)
    try:
        return {decode(k): _COUNTS.unpack(v[:_COUNTS.size]) for k, v in t.items()}
    finally:
        close = getattr(t, "close", None)
        if close is not None:
            close()


def read_flows(state_manager, nf_name: str = "mon") -> dict:
    """{(src, dst, proto, sport, dport): (packets, bytes)} of the MON named `nf_name` (its name
    in the SFC) on the node of `state_manager` (agent/state_manager.py StateManager)."""
    return _read(state_manager, nf_name, FLOWS_TABLE, decode_flow_key)


def read_hosts(state_manager, nf_name: str = "mon") -> dict:
    """{source address: (packets, bytes)}, the merged (shared) host counters: exact once every
    instance of `nf_name` stopped, at most one merge period behind while they run."""
    return _read(state_manager, nf_name, HOSTS_TABLE, decode_host_key)
