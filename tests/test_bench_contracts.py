"""Benchmarks keep their JSON contracts (DESIGN §5). Figures are not judged here."""
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.dataplane


def test_startup_bench_json_contract():
    out = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "serpensctl"), "bench", "startup",
         "--json", "--starts", "5", "--spawn-starts", "2", "--deploy-nfs", "20"],
        capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("map_us", "dlopen_us", "fork_us", "spawn_us", "map_inprocess_us", "wake_us"):
        assert result[key]["p50"] > 0 and result[key]["p99"] >= result[key]["p50"], key
    assert result["deploy_kb_per_nf"] > 0
    assert result["instance_private_kb"] >= 0
    assert result["machine"]["cores"] >= 1 and result["params"]["starts"] == 5


def test_state_bench_json_contract():
    out = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "serpensctl"), "bench", "state", "--json",
         "--seconds", "0.1", "--flows", "500", "--entries", "4096"],
        capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for nf in ("fw", "mon", "nat"):
        for key in ("serpens_mpps", "redis_mpps", "snf_mpps"):
            assert result[nf][key] > 0, (nf, key)
        assert result[nf]["serpens_out_ratio"] > 0.99  # the traffic passes every NF
        # every backend sent out what Serpens did for the same finite input (the bench fails
        # otherwise: this checks that it compared them)
        out = result[nf]["serpens_output"]
        assert 0 < out["packets"] <= result["params"]["check_frames"], nf
        assert result[nf]["redis_output"] == out and result[nf]["snf_output"] == out, nf
        # and counted the same: what its state made the NF do, not only the packets out
        counted = result[nf]["serpens_counters"]
        assert result[nf]["redis_counters"] == counted == result[nf]["snf_counters"], nf
        assert result[nf]["serpens_vs_redis"] > 0 and result[nf]["serpens_vs_snf"] > 0
    assert result["get_ns"] > 0 and result["put_ns"] > 0
    assert result["fw"]["serpens_counters"]["cache_hits"] > 0  # later rounds hit the cache
    assert result["mon"]["serpens_counters"]["new_flows"] > 0
    assert result["nat"]["serpens_counters"]["translated_out"] > 0
    assert "pinned to cpu" in result["params"]["redis"] and "unix socket" in result["params"]["redis"]


def test_state_bench_fails_when_redis_loses_writes():
    """A Redis baseline whose server dies fails the run; one whose store loses its writes (flushed between batches of the check
    input) sends out the FW's packets unchanged (its state is a verdict cache) but counts
    fewer cache hits: the run fails naming the NF and the counter."""
    script = """
import argparse, socket
from serpens.bench import state

def flush(redis):
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(redis.socket)
        s.sendall(b"*1\\r\\n$8\\r\\nFLUSHALL\\r\\n")
        assert s.recv(64).startswith(b"+OK")

def kill(redis):
    redis.proc.kill()
    redis.proc.wait()

args = argparse.Namespace(seconds=0.05, flows=500, entries=4096)
try:
    state.run(args, lose_state={"kill": kill, "flush": flush}[sys.argv[1]])
    print("passed")
except state.BenchError as e:
    print("refused:", e)
"""
    last = []
    for lose in ("kill", "flush"):  # one DPDK primary per process
        out = subprocess.run([sys.executable, "-c", "import sys" + script, lose],
                             capture_output=True, text=True, timeout=240)
        assert out.returncode == 0, out.stderr[-3000:]
        last.append(out.stdout.strip().splitlines()[-1])
    killed, flushed = last
    assert killed.startswith("refused: bench state: fw with state in redis: redis at "), killed
    assert flushed.startswith("refused: bench state: fw with state in redis counted "
                              "cache_hits = "), flushed


def test_bench_prints_a_lost_redis_as_one_line(tmp_path):
    """A state store the run cannot use ends `serpensctl bench state` with one line on stderr
    and exit status 1, no traceback (here: a redis-server that exits at once)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "redis-server").write_text("#!/bin/sh\nexit 1\n")
    (bindir / "redis-server").chmod(0o755)
    env = dict(os.environ, PATH=f"{bindir}:{os.environ.get('PATH', '')}")
    out = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "serpensctl"), "bench", "state",
         "--seconds", "0.05", "--flows", "100", "--entries", "1024"],
        capture_output=True, text=True, timeout=240, env=env)
    assert out.returncode == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert out.stderr.strip().splitlines()[-1].startswith("serpensctl: "), out.stderr


def _bench(*args, timeout=300):
    out = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "serpensctl"), "bench", *args, "--json"],
        capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_sfc_bench_json_contract():
    r = _bench("sfc", "--seconds", "0.05", "--warmup", "0.05", "--flows", "1000")
    assert r["sfc_mpps"] > 0 and r["null_sfc_mpps"] > 0 and r["testpmd_mpps"] > 0
    assert r["sfc_mpps_scraped"] > 0 and r["scrapes"] >= 1   # the same search, scraped
    assert 0 < r["latency_us"]["p50"] <= r["latency_us"]["p99"]
    assert 0 < r["null_latency_us"]["p50"] <= r["null_latency_us"]["p99"]
    assert r["params"]["sfc"] == "fw->mon->nat" and r["params"]["loss_limit"] == 0.001
    assert r["params"]["warmup"] == 0.05
    assert set(r["nf_cycles"]) == {"fw", "mon", "nat"}  # counted by the instance, per NF
    assert all(c > 0 for c in r["nf_cycles"].values())


def test_chain_bench_json_contract():
    r = _bench("chain", "--seconds", "0.05", "--warmup", "0.05", "--flows", "1000",
               "--lengths", "1,2",
               "--check-frames", "500")
    for n in ("1", "2"):
        out = r[n]["serpens"]["output"]
        assert 0 < out["packets"] < 500  # the FW passes some of the input, not all
        # every FW did work of its own (hop k denies port 100+k): each hop dropped some
        assert len(out["hop_in"]) == int(n) and all(d > 0 for d in out["hop_dropped"]), out
        assert out["hop_in"][0] == 500 and out["packets"] == out["hop_in"][-1] - out[
            "hop_dropped"][-1]
        for mode in ("serpens", "local_proxy", "global_proxy"):
            assert r[n][mode]["mpps"] > 0 and r[n][mode]["p50_us"] > 0, (n, mode)
            assert r[n][mode]["output"] == out, (n, mode)  # the same packets out, hop by hop
        for base in ("local_proxy", "global_proxy"):
            assert set(r["params"]["modes"][base]) == {"idle_us", "ring_size"}
    assert r["2"]["serpens_vs_local_proxy"] > 0 and r["2"]["serpens_vs_global_proxy"] > 0
    # at one NF the modes do the same work: no comparison is presented, the JSON says why
    assert "serpens_vs_local_proxy" not in r["1"] and "same work" in r["params"]["length_1"]
    assert r["2"]["serpens"]["output"]["packets"] < r["1"]["serpens"]["output"]["packets"]
    for mode in ("serpens", "local_proxy", "global_proxy"):
        assert r["2"][mode]["vs_own_chain_of_1"] == round(
            r["2"][mode]["mpps"] / r["1"][mode]["mpps"], 2), mode


def test_chain_bench_fails_when_a_baseline_sends_out_other_packets():
    """The equivalence check of bench chain is real: baselines whose FWs run another
    configuration (dropping everything) fail the run instead of reporting figures."""
    script = """
import sys
from serpens import nfs
from serpens.bench import chain
from serpens.bench.rig import Rig, flow_frames
from serpens.runtime_cy.builder import AreaAllocator, build_nf

areas = AreaAllocator()
fws = [build_nf(nfs.source("fw"), areas.allocate(), f"fw{k}") for k in range(2)]
from serpens.nfs import fw as fw_nf
deny_all = fw_nf.encode_config({"rules": [], "default": "deny"})
rig = Rig("chain-check", flow_frames(100), pool_size=2, idle_us=0)
try:
    settings = {m: {"idle_us": 0, "ring_size": 256} for m in chain.MODES}
    same = chain.check_equivalence(rig, 2, fws, chain.MODES, chain.check_frames(100), settings)
    print("same", same["global_proxy"]["packets"])
    chain.check_equivalence(rig, 2, fws, chain.MODES, chain.check_frames(100), settings,
                            baseline_fw_config=deny_all)
except RuntimeError as e:
    print("refused:", e)
finally:
    rig.close()
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("same ") and int(lines[0].split()[1]) > 0
    assert lines[-1].startswith("refused: bench chain: 2 FWs in local_proxy sent out "
                                "{'packets': 0"), lines


def test_chain_bench_fails_when_a_baseline_skips_hops():
    """A proxy mode that ran only the first of 4 hops fails the run: each hop has a rule of
    its own, so 1 hop sends out packets 4 do not."""
    script = """
from serpens import nfs
from serpens.bench import chain
from serpens.bench.rig import Rig, flow_frames
from serpens.runtime_cy.builder import AreaAllocator, build_nf

areas = AreaAllocator()
fws = [build_nf(nfs.source("fw"), areas.allocate(), f"fw{k}") for k in range(4)]
rig = Rig("chain-skip", flow_frames(100), pool_size=4, idle_us=0)
settings = {m: {"idle_us": 0, "ring_size": 256} for m in chain.MODES}
try:
    for mode in ("local_proxy", "global_proxy"):
        try:
            chain.check_equivalence(rig, 4, fws, ("serpens", mode), chain.check_frames(200, 4),
                                    settings, baseline_length=1)
            print("passed", mode)
        except RuntimeError as e:
            print("refused:", e)
finally:
    rig.close()
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()[-2:]
    for line, mode in zip(lines, ("local_proxy", "global_proxy")):
        assert line.startswith(f"refused: bench chain: 4 FWs in {mode} sent out "), lines


def test_scale_bench_json_contract():
    r = _bench("scale", "--before", "0.3", "--after", "0.3", "--rate", "0.2")
    assert r["reordered_flows"] == 0  # the router keeps order whatever the machine does
    assert r["rebalanced_flows"] > 0 and all(v > 0 for v in r["instances"].values())
    assert len(r["instances"]) == 2 and r["scale_out_us"] > 0
    for key in ("before_p99_us", "during_p99_us", "after_p99_us", "lost_packets"):
        assert r[key] is not None, key


def test_control_bench_json_contract():
    r = _bench("control", "--applies", "2", "--scales", "2", "--nfs", "20", "--sfcs", "5",
               "--api-seconds", "0.25", "--clients", "4")
    for key in ("apply_to_traffic_ms", "scale_ms"):
        assert 0 < r[key]["p50"] <= r[key]["p99"], key
    assert 0 < r["failover_s"] < 30 and r["traffic_kept"] is True
    assert r["api_rps"] > 0 and r["etcd_get_rps"] > 0
    assert len(r["samples"]["apply_to_traffic_ms"]) == 2 and r["params"]["nfs"] == 20


@pytest.mark.skipif(os.geteuid() != 0, reason="makes network namespaces: root")
def test_multinode_bench_json_contract():
    """A short run: every key, figures non-zero, and the frames really crossed the underlay:
    both servers decapsulated VXLAN from the gateway and the gateway sent to both."""
    r = _bench("multinode", "--seconds", "0.05", "--warmup", "0.05", "--flows", "1000",
               timeout=600)
    assert r["gateway_mpps"] > 0 and r["encap_ns"] > 0
    assert r["multi_mpps"] > 0 and r["single_mpps"] > 0
    assert r["ratio"] == round(r["multi_mpps"] / r["single_mpps"], 3)
    assert r["capacity_mpps"]["multi"] >= r["multi_mpps"] * 0.99
    assert r["capacity_mpps"]["single"] > 0
    # the SFC's output back through the gateway, measured in the same run
    assert r["multi_return_mpps"] > 0
    assert r["return_ratio"] == round(r["multi_return_mpps"] / r["single_mpps"], 3)
    assert r["capacity_mpps"]["multi_return"] >= r["multi_return_mpps"] * 0.99
    for k in ("multi", "multi_return", "single"):
        lat = r["latency_us"][k]
        assert 0 < lat["p50"] <= lat["p99"], k
    assert r["params"]["underlay"] == "memif" and r["params"]["servers"] == 2
    assert r["params"]["gateway_cpu"] in (0, 1)
    assert r["params"]["sfc"] == "fw->mon->nat" and r["params"]["loss_limit"] == 0.001
    assert r["machine"]["cores"] >= 1 and set(r["machine"]["stalls"]) >= {"cpu0"}
    detail = r["multi_detail"]
    assert len(detail["gateway"]["servers"]) == 2
    assert all(sent > 0 for sent in detail["gateway"]["servers"].values())
    for name, st in detail["servers"].items():
        # out of its own port (multi), then back to the gateway (multi_return)
        assert st["vxlan"]["rx"] > 0 and 0 < st["local_tx"] < st["tx"], name
        assert st["vxlan"]["drops"]["bad_outer"] == 0 and st["vxlan"]["drops"]["unknown_tag"] == 0
