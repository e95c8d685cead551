"""Stock IDS NF: configuration encoder (the manual is the header comment of ids.c).

    encode_config({"patterns": ["/etc/passwd", b"\\x90\\x90\\x90\\x90"], "action": "drop"})
        -> bytes for ids.c's init()

The whole dict is validated before anything is packed; the first problem found raises
ConfigError naming the field, e.g. ``patterns[17]: empty pattern``. Patterns are packed
sorted and without duplicates (the NF builds its automaton level by level from the sorted
list), so two configs listing the same patterns in any order pack to the same bytes and
share one automaton in the node's state table.
"""
from __future__ import annotations

import struct

__all__ = ["ConfigError", "encode_config", "pack", "MAGIC", "MAX_PATTERNS", "MAX_PATTERN_LEN",
           "CONFIG_MAX", "ACTIONS"]

MAGIC = 0x31444953  # "SID1" little-endian
MAX_PATTERNS = 10000
MAX_PATTERN_LEN = 255
from serpens.nfs import ConfigError
from serpens.runtime_cy.constants import CONFIG_MAX  # bytes of NF config one SFC carries
ACTIONS = {"alert": 0, "drop": 1}
STREAMS = {"off": 0, "tcp": 1}   # TCP flows scanned as streams (ids.c "TCP streams")
_FIELDS = {"patterns", "action", "stream"}
_HDR = struct.Struct("<IBBH")


def _pattern(field: str, v) -> bytes:
    if isinstance(v, str):
        try:
            v = v.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ConfigError(field, f"not encodable as UTF-8 ({e.reason})") from None
    elif isinstance(v, (bytes, bytearray, memoryview)):
        v = bytes(v)
    else:
        raise ConfigError(field, f"a str or bytes pattern, got {type(v).__name__}")
    if not v:
        raise ConfigError(field, "empty pattern")
    if len(v) > MAX_PATTERN_LEN:
        raise ConfigError(field, f"{len(v)} bytes, at most {MAX_PATTERN_LEN}")
    return v


def pack(patterns, action: str = "alert", stream: str = "tcp") -> bytes:
    """The packed form of already valid patterns (bytes), action and stream mode, with no
    size limit: encode_config() is the checked way in."""
    unique = sorted(set(patterns))
    out = bytearray(_HDR.pack(MAGIC, ACTIONS[action], STREAMS[stream], len(unique)))
    for p in unique:
        out.append(len(p))
        out += p
    return bytes(out)


def encode_config(cfg: dict) -> bytes:
    """Validate an IDS configuration and pack it for ids.c's init()."""
    if not isinstance(cfg, dict):
        raise ConfigError("config", f"a mapping, got {type(cfg).__name__}")
    for key in cfg:
        if key not in _FIELDS:
            raise ConfigError(str(key), f"unknown field (known: {', '.join(sorted(_FIELDS))})")
    action = cfg.get("action", "alert")
    if not isinstance(action, str) or action.strip().lower() not in ACTIONS:
        raise ConfigError("action", f"alert or drop, got {action!r}")
    action = action.strip().lower()
    stream = cfg.get("stream", "tcp")
    if not isinstance(stream, str) or stream.strip().lower() not in STREAMS:
        raise ConfigError("stream", f"tcp or off, got {stream!r}")
    stream = stream.strip().lower()
    if "patterns" not in cfg:
        raise ConfigError("patterns", "required: a list of str or bytes patterns")
    raw = cfg["patterns"]
    if isinstance(raw, (str, bytes, bytearray)) or not isinstance(raw, (list, tuple)):
        raise ConfigError("patterns", f"a list of str or bytes patterns, got {type(raw).__name__}")
    if not raw:
        raise ConfigError("patterns", "at least one pattern")
    if len(raw) > MAX_PATTERNS:
        raise ConfigError("patterns", f"{len(raw)} patterns, at most {MAX_PATTERNS}")
    patterns = [_pattern(f"patterns[{i}]", v) for i, v in enumerate(raw)]
    packed = pack(patterns, action, stream)
    if len(packed) > CONFIG_MAX:
        raise ConfigError("patterns", f"{len(set(patterns))} patterns pack to {len(packed)} "
                          f"bytes; an SFC carries at most {CONFIG_MAX} bytes of NF configuration "
                          "(1 + length bytes per pattern, 8 bytes of header)")
    return packed
