"""Usage metering on a real node (agent/usage.py, Node.usage_counters): a capture replayed
through FW -> MON -> NAT is metered to the packet and the byte, its instances' CPU time is
counted, state byte-seconds follow the tables' bytes and time, and totals go on across an SFC
replaced or removed and a node started again on the same usage file."""
import os
import time

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.utils import rdpcap, wrpcap

from serpens.agent.node import Node
from serpens.common.node_spec import parse_node
from serpens.common.spec import parse_sfc
from serpens.runtime_cy import _dataplane as dp

from support.cluster import wait_until
from support.node_specs import NODE, sfc
from support.packets import eth
from support.sites import Wire, unique_tag

pytestmark = pytest.mark.dataplane

PER_FLOW = dp.PER_FLOW | dp.READ | dp.WRITE
EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "fw-mon-nat.yaml")


def capture(path) -> list[bytes]:
    """A capture of frames of many sizes, some of them the firewall drops; written as pcap
    and read back, as a user's capture would be."""
    pkts = [eth() / IP(src=f"10.0.0.{i % 30 + 1}", dst="8.8.8.8") / UDP(sport=2000 + i % 7)
            / bytes(i % 1400) for i in range(300)]
    pkts += [eth() / IP(src="10.0.0.1", dst="1.2.3.4") / TCP(dport=23) / bytes(i * 10)
             for i in range(12)]                                           # denied: telnet
    pkts += [eth() / IP(src="192.0.2.1", dst="9.9.9.9") / UDP() / bytes(5)] * 4  # not ours
    wrpcap(str(path), pkts)
    return [bytes(p) for p in rdpcap(str(path))]


@pytest.fixture
def wires(dataplane, request):
    tag = unique_tag()
    ws = {name: Wire(dataplane, f"u{tag}{name}") for name in ("wan", "lan", "dmz")}
    yield ws
    for w in ws.values():
        w.close()


def node_with(dataplane, pool, areas, wires, sfcs, usage_path):
    return Node(parse_node(NODE), sfcs, dataplane=dataplane, pool=pool, areas=areas,
                ports={n: w.port for n, w in wires.items()}, usage_s=0,
                usage_path=str(usage_path))


def fw_mon_nat(name):
    return parse_sfc(open(EXAMPLE).read().replace("name: fw-mon-nat", f"name: {name}"),
                     base_dir=os.path.dirname(EXAMPLE))


def test_usage_totals_equal_the_packets_and_bytes_sent(dataplane, pool, areas, wires,
                                                        tmp_path):
    frames = capture(tmp_path / "in.pcap")
    name = f"use-{os.getpid() % 10**5}"
    t0 = time.monotonic()
    with node_with(dataplane, pool, areas, wires, [fw_mon_nat(name)],
                   tmp_path / "usage.json") as node:
        node.scale(name, 1)  # (not on demand: a burst beyond the hold queue would wait)
        wires["wan"].send(frames)
        out = wires["lan"].receive(300)  # the firewall lets the 300 UDP frames through
        wait_until(lambda: node.usage_counters()[name]["packets"] == len(frames), 10,
                   lambda: str(node.stats()))
        node.meter.sample()
        wall = time.monotonic() - t0
        u = node.usage()[name]
        assert u["packets"] == len(frames) == 316
        assert u["bytes"] == sum(map(len, frames))
        assert sum(map(len, out)) < u["bytes"]  # NF drops are processed, and billed, too
        stats = node.stats()["sfcs"][name]
        assert (stats["out"], stats["dropped"]) == (300, 16)
        # its instance's time inside batches: some, and no more than the time that passed
        # (a batch of this chain takes microseconds; the bound is only "plausible")
        assert 0 < u["cpu_seconds"] < wall
        assert u["cpu_seconds"] / len(frames) < 0.001
        # the same again: exact increments
        wires["wan"].send(frames[:50])
        wait_until(lambda: node.usage_counters()[name]["packets"] == len(frames) + 50, 10)
        node.meter.sample()
        again = node.usage()[name]
        assert again["packets"] - u["packets"] == 50
        assert again["bytes"] - u["bytes"] == sum(map(len, frames[:50]))
        assert again["cpu_seconds"] > u["cpu_seconds"]


def test_state_byte_seconds_grow_with_time_and_table_size(dataplane, pool, areas, wires,
                                                          tmp_path):
    tag = os.getpid() % 10**5
    small, big = f"s{tag}", f"b{tag}"
    state_dir = dataplane.config.state_dir
    tables = [dp.StateTable(state_dir, f"{small}.mark", "t", PER_FLOW, 16, 16, 1000),
              dp.StateTable(state_dir, f"{big}.mark", "t", PER_FLOW, 16, 16, 64000)]
    sizes = [os.path.getsize(t.path) for t in tables]
    assert sizes[1] > 10 * sizes[0]
    try:
        with node_with(dataplane, pool, areas, wires,
                       [sfc(small, 1, "  tag: 11"), sfc(big, 2, "  tag: 12")],
                       tmp_path / "usage.json") as node:
            assert {n: c["state_bytes"] for n, c in node.usage_counters().items()} == \
                {small: sizes[0], big: sizes[1]}
            before = time.monotonic()
            node.meter.sample()
            after_first = time.monotonic()
            time.sleep(0.3)
            before_second = time.monotonic()
            node.meter.sample()
            after = time.monotonic()
            first = node.usage()
            # bytes x the time between the two samples (taken between these clocks)
            for name, size in ((small, sizes[0]), (big, sizes[1])):
                bs = first[name]["state_byte_seconds"]
                assert size * (before_second - after_first) <= bs <= size * (after - before)
            time.sleep(0.1)
            node.meter.sample()
            second = node.usage()
            for name in (small, big):  # it grows with time...
                assert second[name]["state_byte_seconds"] > first[name]["state_byte_seconds"]
            # ... and with the tables' size, whatever the periods were
            ratio = second[big]["state_byte_seconds"] / second[small]["state_byte_seconds"]
            assert ratio == pytest.approx(sizes[1] / sizes[0], rel=1e-6)
    finally:
        for t in tables:
            t.close()
        for name in (small, big):
            node_state = os.path.join(state_dir, f"{name}.mark")
            for f in os.listdir(node_state):
                os.unlink(os.path.join(node_state, f))
            os.rmdir(node_state)


def test_totals_go_on_across_a_replaced_sfc_a_removed_one_and_a_new_node(
        dataplane, pool, areas, wires, tmp_path):
    name = f"keep-{os.getpid() % 10**5}"
    frames = capture(tmp_path / "in.pcap")[:100]
    path = tmp_path / "usage.json"
    with node_with(dataplane, pool, areas, wires, [sfc(name, 1)], path) as node:
        node.scale(name, 1)
        wires["wan"].send(frames)
        wait_until(lambda: node.usage_counters()[name]["packets"] == 100, 10)
        node.meter.sample()
        cpu = node.usage()[name]["cpu_seconds"]
        assert cpu > 0
        # applied again with other routing: a new router slot and instance manager
        node.apply_sfc(sfc(name, 1, "  tag: 21"))
        node.meter.sample()
        assert node.usage()[name]["packets"] == 100
        assert node.usage()[name]["cpu_seconds"] == cpu
        node.apply_sfc(sfc(name, 1), replicas=1)
        wires["wan"].send(frames[:10])
        wait_until(lambda: node.usage_counters()[name]["packets"] == 110, 10)
        node.remove_sfc(name)
        node.meter.sample()
        gone = node.usage()[name]
        assert gone["packets"] == 110 and gone["bytes"] == sum(map(len, frames + frames[:10]))
        assert gone["cpu_seconds"] > cpu
    # a new node (an agent started again) on the same file: the totals, then more
    with node_with(dataplane, pool, areas, wires, [sfc(name, 1)], path) as node:
        assert node.usage()[name] == gone
        node.scale(name, 1)
        wires["wan"].send(frames[:5])
        wait_until(lambda: node.usage_counters()[name]["packets"] == 5, 10)
        node.meter.sample()
        assert node.usage()[name]["packets"] == 115
        since = node.meter.usage(name, time.time() - 120)[0][name]
        assert since["packets"] == 115  # all of it within the last two minutes


def test_totals_are_kept_on_a_hugetlbfs_state_directory(tmp_path):
    """hugetlbfs has no write(): the file goes through a mapping, a huge page long, and
    reads back the same."""
    from serpens.agent.usage import UsageMeter

    from support.mounts import small_fs

    counters = {"a": {"packets": 7, "bytes": 448, "cpu_seconds": 0.5, "state_bytes": 0}}
    with small_fs("hugetlbfs", "8M") as fs:
        path = os.path.join(fs, ".usage-n.json")
        meter = UsageMeter(lambda: counters, path, period_s=0)
        meter.sample()
        assert os.path.getsize(path) == 2 << 20 and os.listdir(fs) == [".usage-n.json"]
        again = UsageMeter(dict, path, period_s=0)
        assert again.usage()[0] == meter.usage()[0] == {
            "a": {"packets": 7, "bytes": 448, "cpu_seconds": 0.5, "state_byte_seconds": 0.0}}


def test_cpu_seconds_hold_an_nf_s_work_and_stay_after_its_instance_crashed(
        dataplane, pool, areas, wires, tmp_path):
    """The `crash` test NF spins 2 ms per 'S' frame: 20 of them are at least 40 ms of the
    instance's time, and no more than the time that passed. A 'K' frame kills the instance:
    what it used stays, and the frame it died with is not billed."""
    from support.packets import eth as frame_eth
    crash = os.path.join(os.path.dirname(__file__), "nfs", "crash.c")
    name = f"cpu-{os.getpid() % 10**5}"
    spec = parse_sfc(f"""
apiVersion: serpens/v1
kind: SFC
metadata: {{name: {name}}}
spec:
  nfs:
    crash: {{source: {crash}}}
  chain: [crash]
  faults: {{batch_ms: 500}}
""")

    def cmd(c, i=0):
        return bytes(frame_eth() / IP(src="10.0.0.1", dst="10.9.9.9") / UDP(sport=1000 + i)
                     / (c + b"..."))

    with node_with(dataplane, pool, areas, wires, [spec], tmp_path / "usage.json") as node:
        node.scale(name, 1)
        t0 = time.monotonic()
        wires["wan"].send([cmd(b"S", i) for i in range(20)])
        wait_until(lambda: node.usage_counters()[name]["packets"] == 20, 10)
        wall = time.monotonic() - t0
        cpu = node.usage_counters()[name]["cpu_seconds"]
        assert 20 * 0.002 * 0.99 <= cpu <= wall  # (1%: the NF's clock and the TSC's rate)
        wires["wan"].send([cmd(b"K")])
        wait_until(lambda: node.stats()["sfcs"][name]["crashes"] == 1, 10)
        after = node.usage_counters()[name]
        assert after["cpu_seconds"] >= cpu and after["packets"] == 20
