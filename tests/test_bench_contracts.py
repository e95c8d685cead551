"""Benchmarks keep their JSON contracts (DESIGN §5). Figures are not judged here."""
import json
import os
import subprocess
import sys


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
         "--seconds", "0.2", "--flows", "500", "--entries", "4096"],
        capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for nf in ("fw", "mon", "nat"):
        for key in ("serpens_mpps", "redis_mpps", "snf_mpps"):
            assert result[nf][key] > 0, (nf, key)
        assert result[nf]["serpens_out_ratio"] > 0.99  # the traffic passes every NF
    assert result["get_ns"] > 0 and result["put_ns"] > 0
