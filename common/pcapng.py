"""A pcapng writer with a comment per packet (serpensctl capture). pcapng is a few blocks:
a section header, one interface description (Ethernet, nanosecond timestamps) and an
enhanced packet block per frame whose opt_comment says where the capture saw it."""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO, Iterable

LINKTYPE_ETHERNET = 1


@dataclass
class CapturedFrame:
    data: bytes       # the bytes captured (at most the snap length)
    orig_len: int     # the frame's length on the wire
    time_ns: int      # since the epoch
    comment: str = ""


def _block(kind: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    size = len(body) + 12
    return struct.pack("<II", kind, size) + body + struct.pack("<I", size)


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def header(snaplen: int = 65535) -> bytes:
    """The section header and the one interface (if_tsresol 9: nanoseconds)."""
    shb = _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    opts = _option(9, b"\x09") + _option(0, b"")
    idb = _block(0x00000001, struct.pack("<HHI", LINKTYPE_ETHERNET, 0, snaplen) + opts)
    return shb + idb


def packet(f: CapturedFrame) -> bytes:
    data = f.data + b"\0" * (-len(f.data) % 4)
    body = struct.pack("<IIIII", 0, f.time_ns >> 32, f.time_ns & 0xFFFFFFFF, len(f.data),
                       f.orig_len) + data
    if f.comment:
        body += _option(1, f.comment.encode()) + _option(0, b"")
    return _block(0x00000006, body)


class PcapngWriter:
    def __init__(self, out: BinaryIO, snaplen: int = 65535):
        self.out = out
        out.write(header(snaplen))

    def write(self, f: CapturedFrame):
        self.out.write(packet(f))


def write_pcapng(path: str, frames: Iterable[CapturedFrame]):
    with open(path, "wb") as out:
        w = PcapngWriter(out)
        for f in frames:
            w.write(f)
