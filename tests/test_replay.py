"""serpensctl replay: an SFC offline over a capture, through real net_pcap ports."""
import json
import os
import subprocess
import sys

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import rdpcap, wrpcap

from serpens.agent.sfc_builder import build_sfc
from serpens.common.spec import SpecError, load_sfc, parse_sfc

from support.harness import PacketHarness
from support.packets import eth

pytestmark = pytest.mark.dataplane

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "fw-mon-nat.yaml")
SERPENSCTL = os.path.join(os.path.dirname(sys.executable), "serpensctl")


def traffic():
    pkts = [eth() / IP(src=f"10.0.0.{i % 20 + 1}", dst="8.8.8.8") / UDP(sport=1000 + i % 20, dport=53)
            / b"query" for i in range(200)]
    pkts += [eth() / IP(src="10.0.0.1", dst="1.2.3.4") / TCP(dport=23)] * 5      # denied
    pkts += [eth() / IP(src="192.0.2.1", dst="9.9.9.9") / UDP()] * 3             # not ours
    return [bytes(p) for p in pkts]


def serpensctl(*args):
    return subprocess.run([SERPENSCTL, *args], capture_output=True, text=True, timeout=120)


def test_replay_equals_the_packet_harness(tmp_path, pool, areas):
    frames = traffic()
    wrpcap(str(tmp_path / "in.pcap"), [Ether(f) for f in frames])
    out = serpensctl("replay", "--sfc", EXAMPLE, "--in", str(tmp_path / "in.pcap"),
                     "--out", str(tmp_path / "out.pcap"), "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    replayed = [bytes(p) for p in rdpcap(str(tmp_path / "out.pcap"))]

    spec = load_sfc(EXAMPLE)
    spec = parse_sfc(open(EXAMPLE).read().replace("name: fw-mon-nat", "name: replay-ref"),
                     base_dir=os.path.dirname(EXAMPLE))  # fresh state for the reference run
    built = build_sfc(spec, areas)
    try:
        with PacketHarness(pool, built.compiled) as h:
            expected = [r.data for r in h.run(frames) if r.verdict == "out"]
    finally:
        built.close(areas)
    assert replayed == expected
    assert result["router"] == {"rx": 208, "out": 200, "dropped": 8, "tx_failed": 0}
    fw, mon, nat = result["nfs"]
    assert (fw["name"], fw["in"], fw["dropped"], fw["counters"]["denied"]) == ("fw", 208, 8, 8)
    assert mon["in"] == 200 and nat["counters"]["translated_out"] == 200


@pytest.mark.parametrize("edit,field", [
    (("kind: SFC", "kind: NF"), "kind"),
    (("[fw, mon, nat]", "[fw, mon, nat, ids]"), "spec.chain[3]"),
    (("[fw, mon, nat]", "[fw, nat]"), "spec.nfs.mon"),
    (("port_range: 1024-65535", "port_range: 1024-70000"), "spec.nfs.nat.config.port_range"),
    (("stock: mon", "stock: monitor"), "spec.nfs.mon.stock"),
])
def test_bad_specs_are_refused_naming_the_field(tmp_path, edit, field):
    text = open(EXAMPLE).read().replace(*edit)
    with pytest.raises(SpecError) as e:
        parse_sfc(text)
    assert e.value.field == field
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    out = serpensctl("replay", "--sfc", str(bad), "--in", "/nonexistent", "--out", "/tmp/x")
    assert out.returncode == 2 and field in out.stderr


def test_replay_of_a_missing_capture_fails_clearly(tmp_path):
    out = serpensctl("replay", "--sfc", EXAMPLE, "--in", str(tmp_path / "none.pcap"),
                     "--out", str(tmp_path / "out.pcap"))
    assert out.returncode == 1 and "no capture" in out.stderr
