"""A tap on a host interface (an AF_PACKET socket): send frames out of it and collect what
crosses it, in order, in both directions (a veth's host end sees what its peer sends as
incoming and what the bridge forwards to the peer as outgoing)."""
from __future__ import annotations

import socket
import time

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
RCVBUF = 8 << 20   # enough for a test's bursts: the kernel drops what does not fit


class Tap:
    def __init__(self, interface: str):
        self.interface = interface
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        self.sock.bind((interface, 0))
        self.sock.settimeout(0.05)

    def send(self, frames, per_ms: int = 32):
        """Send `frames`, `per_ms` a millisecond (a receiving af_packet ring is finite)."""
        for i, frame in enumerate(frames):
            self.sock.send(frame)
            if i % per_ms == per_ms - 1:
                time.sleep(0.001)

    def drain(self):
        """Forget what arrived so far."""
        self.collect(lambda _: False, until=lambda _: False, seconds=0.05)

    def collect(self, keep=lambda frame: True, until=lambda got: False, seconds=5.0,
                outgoing: bool | None = None) -> list[bytes]:
        """Frames `keep` accepts, in arrival order, until `until(frames)` or `seconds` pass;
        `outgoing` True/False: only frames leaving / entering by this interface."""
        got: list[bytes] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not until(got):
            try:
                data, address = self.sock.recvfrom(65536)
            except socket.timeout:
                continue
            if outgoing is not None and (address[2] == PACKET_OUTGOING) != outgoing:
                continue
            if keep(data):
                got.append(data)
        return got

    def close(self):
        self.sock.close()
