"""Frames for tests, built with scapy from explicit addresses only.

An `Ether()` without a destination makes scapy resolve one on the host's network (an ARP or
neighbour solicitation with a 2 s timeout, for every frame); `eth()` names both MACs, and
`forbid_address_resolution()` (conftest.py) turns any such lookup into an error. Besides the
link layer, the frames of the test NFs `mark` (tests/nfs/mark.c) and `tag` (tests/nfs/tag.c).
"""
import struct

from scapy.config import conf
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Dot1Q, Ether

MAC_A, MAC_B = "02:00:00:00:00:01", "02:00:00:00:00:02"  # locally administered
BROADCAST = "ff:ff:ff:ff:ff:ff"


def eth(src: str = MAC_A, dst: str = MAC_B, **kw) -> Ether:
    return Ether(src=src, dst=dst, **kw)


def forbid_address_resolution():
    """Make scapy's neighbour lookup (what an Ether without dst asks for) fail the test."""
    def refuse(*_):
        raise AssertionError("a frame without a destination MAC: scapy would resolve it on "
                             "the host's network (build it with support.packets.eth())")
    conf.neighbor.resolve = refuse


# ---- mark: appends its id to a trace in the UDP payload ----------------------------------

def udp(dport=80, src="10.0.0.1", vlan=None, sport=1234, seq=0) -> bytes:
    """A frame for `mark`: 32 bytes of UDP payload, a sequence number at bytes 16..19."""
    l2 = eth() / Dot1Q(vlan=vlan) if vlan else eth()
    payload = bytes(16) + struct.pack("<I", seq) + bytes(12)
    return bytes(l2 / IP(src=src, dst="10.9.9.9") / UDP(sport=sport, dport=dport) / payload)


def trace(data: bytes) -> list:
    """The ids of the `mark` NFs the frame went through, in order."""
    payload = bytes(Ether(data)[UDP].payload)
    return list(payload[1:1 + payload[0]])


# ---- tag: writes the instance that handled a frame into its payload -----------------------

def flow_frame(flow: int, seq: int) -> bytes:
    """Frame `seq` of flow `flow` (its source address and port name the flow)."""
    return bytes(eth() / IP(src=f"10.0.{flow // 256}.{flow % 256}", dst="10.9.9.9")
                 / UDP(sport=1000 + flow, dport=80) / struct.pack("<II", 0, seq))


def flow_decode(data: bytes):
    """(flow, instance `tag` wrote, seq) of a frame made by flow_frame()."""
    p = Ether(data)
    inst, seq = struct.unpack("<II", bytes(p[UDP].payload)[:8])
    return p[UDP].sport - 1000, inst, seq
