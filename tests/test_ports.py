"""Real ports: the router on net_af_packet over a veth pair the test makes, and clear errors
for a port that does not exist."""
import os
import socket
import struct
import subprocess
import time
import uuid

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from serpens.agent.instance_manager import InstanceManager
from serpens.runtime_cy import _dataplane as dp
from serpens.runtime_cy.sfc import NF, compile_sfc

pytestmark = pytest.mark.dataplane

DPORT = 47001  # our test traffic; the kernel may send its own frames on the veth too


@pytest.fixture
def veth():
    tag = uuid.uuid4().hex[:6]
    a, b = f"sva{tag}", f"svb{tag}"
    subprocess.run(["ip", "link", "add", a, "type", "veth", "peer", "name", b], check=True)
    try:
        for dev in (a, b):
            subprocess.run(["ip", "link", "set", dev, "up"], check=True)
            subprocess.run(["sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1"])
        yield a, b
    finally:
        subprocess.run(["ip", "link", "del", a], check=False)


def test_router_over_af_packet_on_a_veth(dataplane, pool, build, veth):
    inside, outside = veth
    port = dp.port_attach(f"net_af_packet{os.getpid() % 1000},iface={inside}",
                          dataplane.mempool)
    router = dp.Router(port, port)
    router.launch(dataplane.config.router_lcore)
    manager = InstanceManager(pool, router, compile_sfc(NF(build("tag.c"))), warm_s=60).start()
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
    s.bind((outside, 0))
    s.settimeout(0.2)
    try:
        frames = [bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                        / IP(src="10.1.1.1", dst="10.2.2.2") / UDP(sport=1000 + i % 8, dport=DPORT)
                        / struct.pack("<II", 0, i)) for i in range(40)]
        for f in frames:
            s.send(f)
        seen, deadline = [], time.monotonic() + 10
        while len(seen) < len(frames) and time.monotonic() < deadline:
            try:
                data = s.recv(2048)
            except socket.timeout:
                continue
            p = Ether(data)
            # Frames we sent are seen again on this socket (outgoing); the router's have a tag.
            if UDP in p and p[UDP].dport == DPORT and bytes(p[UDP].payload)[:4] != bytes(4):
                seen.append(struct.unpack("<II", bytes(p[UDP].payload)[:8]))
        assert sorted(seq for _, seq in seen) == list(range(40))
        assert len({inst for inst, _ in seen}) == 1 and manager.starts == 1
    finally:
        s.close()
        manager.close()
        router.stop()
        dp.port_close(port)


def test_a_missing_port_is_refused_by_name(dataplane):
    with pytest.raises(OSError, match="net_af_packet9: cannot attach"):
        dp.port_attach("net_af_packet9,iface=no-such-iface0", dataplane.mempool)
    with pytest.raises(OSError, match="no DPDK port named net_null7"):
        dp.port_open("net_null7", dataplane.mempool)
