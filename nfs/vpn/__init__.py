"""Configuration of the stock VPN NF (ESP tunnel mode, AES-128-GCM); the manual is the header
comment of vpn.c.

    encode_config({"spi": 0x1000, "key": "00112233445566778899aabbccddeeff" "01020304",
                   "tunnel_src": "192.0.2.1", "tunnel_dst": "198.51.100.1"}) -> 36 bytes

`key` is the 16-byte AES key followed by the 4-byte salt (RFC 4106), as 40 hex digits: the
same bytes scapy's SecurityAssociation takes as crypt_key for 'AES-GCM'.
"""
from __future__ import annotations

import ipaddress
import struct

__all__ = ["ConfigError", "CONFIG_LEN", "FIELDS", "encode_config"]

CONFIG_LEN = 36
CONFIG_VERSION = 1
FIELDS = ("spi", "key", "tunnel_src", "tunnel_dst")
SEQ_TABLE = "esp_seq"  # the state table of sequence numbers (key: SPI, value: uint64)


class ConfigError(ValueError):
    """A configuration the VPN NF would refuse; the message starts with the field's name."""


def _spi(v) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"spi: an integer 256..{2**32 - 1}, got {type(v).__name__}")
    if not 256 <= v <= 2**32 - 1:
        raise ConfigError(f"spi: an integer 256..{2**32 - 1} (0..255 are reserved), got {v}")
    return v


def _key(v) -> bytes:
    want = "key: 20 bytes (16 key + 4 salt) as hex"
    if not isinstance(v, str):
        raise ConfigError(f"{want}, got {type(v).__name__}")
    try:
        raw = bytes.fromhex(v)
    except ValueError:
        raise ConfigError(f"{want}, got non-hex text") from None
    if len(raw) != 20 or len(v) != 40:  # no spaces inside: exactly 40 hex digits
        raise ConfigError(f"{want}, got {len(raw)}")
    return raw


def _endpoint(field: str, v) -> bytes:
    if not isinstance(v, str):
        raise ConfigError(f"{field}: an IPv4 address, got {type(v).__name__}")
    try:
        a = ipaddress.IPv4Address(v)
    except ValueError:
        raise ConfigError(f"{field}: an IPv4 address, got {v!r}") from None
    if a.is_unspecified or a.is_multicast or a == ipaddress.IPv4Address("255.255.255.255"):
        raise ConfigError(f"{field}: a unicast IPv4 address, got {v}")
    return a.packed


def encode_config(cfg: dict) -> bytes:
    """Validate a VPN configuration and pack it for vpn.c's init(); ConfigError names the
    offending field."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"config: a mapping with {', '.join(FIELDS)}, got {type(cfg).__name__}")
    unknown = sorted(set(cfg) - set(FIELDS), key=str)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown field (fields: {', '.join(FIELDS)})")
    for f in FIELDS:
        if f not in cfg:
            raise ConfigError(f"{f}: missing")
    spi = _spi(cfg["spi"])
    key = _key(cfg["key"])
    src = _endpoint("tunnel_src", cfg["tunnel_src"])
    dst = _endpoint("tunnel_dst", cfg["tunnel_dst"])
    out = struct.pack("!B3xI", CONFIG_VERSION, spi) + key + src + dst
    assert len(out) == CONFIG_LEN
    return out
