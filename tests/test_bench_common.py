"""bench/common.py's figures of the machine: stall rates are per second of the time that
actually passed, so a gap that overran the probe never reports over 1000 ms lost per s."""
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
