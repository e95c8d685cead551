"""bench/common.py's figures of the machine: stall rates are per second of the time that
actually passed, so a gap that overran the probe never reports over 1000 ms lost per s. And
the benchmarks' options: a count or a time that cannot work is refused before anything runs."""
import os
import subprocess
import sys

import pytest

from serpens.bench.common import stall_rates

pytestmark = pytest.mark.unit


def test_stall_rates_divide_by_the_time_that_passed():
    # a 1 s probe during which the host took the CPU for 2.6 s in one gap: 3.6 s passed
    r = stall_rates(gaps=1, total_us=2_600_000, max_us=2_600_000, elapsed_us=3_600_000)
    assert r["lost_ms_per_s"] == pytest.approx(722.22, abs=0.01)
    assert r["gaps_per_s"] == pytest.approx(0.3, abs=0.05)
    assert r["max_us"] == 2_600_000


def test_stall_rates_never_exceed_the_whole_second():
    # the elapsed time can never be shorter than the gaps in it; if a caller passes one
    # (clock mix-up), the rate is still capped at the whole time
    r = stall_rates(gaps=3, total_us=2_649_000, max_us=2_000_000, elapsed_us=1_000_000)
    assert r["lost_ms_per_s"] <= 1000


def test_stall_rates_of_a_quiet_second():
    r = stall_rates(gaps=10, total_us=800, max_us=120, elapsed_us=1_000_020)
    assert r == {"gaps_per_s": 10.0, "lost_ms_per_s": 0.8, "max_us": 120}


@pytest.mark.parametrize("case, option, value, words", [
    ("sfc", "--searches", "0", "whole number of at least 1, got 0"),
    ("state", "--flows", "-5", "whole number of at least 1, got -5"),
    ("chain", "--seconds", "0", "number above 0, got 0"),
    ("e2e", "--seconds", "nan", "number above 0, got nan"),
    ("budget", "--warmup", "-0.1", "number of at least 0, got -0.1"),
    ("multinode", "--flows", "many", "whole number of at least 1, got 'many'"),
])
def test_a_bench_option_that_cannot_work_is_refused_naming_it(case, option, value, words):
    # (a search of 0 searches used to run on and on; 0 flows or seconds divide by zero)
    out = subprocess.run([os.path.join(os.path.dirname(sys.executable), "serpensctl"), "bench",
                          case, option, value], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2, out.stderr
    assert f"argument {option}: expected a {words}" in out.stderr, out.stderr


def test_latency_of_a_log_is_the_percentile_and_mean_of_its_records(monkeypatch):
    # bench/rig.py latency_us reads the router's records as an array; its figures are those of
    # common.percentiles over the records one by one (a frame stamped upstream may count as
    # sent before it arrived: a negative latency, not a huge unsigned one)
    import random
    import struct
    import types

    from serpens.bench import rig
    from serpens.bench.common import percentiles
    from serpens.runtime_cy import _dataplane as dp

    hz = 2_600_000_000
    monkeypatch.setattr(rig, "dp", types.SimpleNamespace(tsc_hz=lambda: hz,
                                                         LAT_REC_FORMAT=dp.LAT_REC_FORMAT))
    rng = random.Random(7)
    rx = [rng.randrange(1 << 40) for _ in range(10001)]
    tx = [r + rng.randrange(-3000, 5_000_000) for r in rx]
    recs = b"".join(struct.pack(dp.LAT_REC_FORMAT, r, t, 1, k) for k, (r, t) in
                    enumerate(zip(rx, tx)))
    lat = [(t - r) / (hz / 1e6) for r, t in zip(rx, tx)]
    points = (0.5, 50, 99, 99.9)
    want = {k.replace(".", "_"): v for k, v in percentiles(lat, *points).items()}
    assert rig.latency_us(recs, points) == {**want, "mean": round(sum(lat) / len(lat), 2)}
    assert min(lat) < 0 and rig.latency_us(recs, (0,))["p0"] == round(min(lat), 2)
    assert rig.latency_us(b"", points) == {"p0_5": None, "p50": None, "p99": None,
                                           "p99_9": None, "mean": None}
