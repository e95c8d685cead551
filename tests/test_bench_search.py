"""bench/search.py keeps the host's CPU placements apart: a fake rig whose capacity depends on
the placement a scripted probe reports (no dataplane)."""
import itertools

import pytest

from serpens.bench import search as search_mod
from serpens.bench.common import BenchError

pytestmark = pytest.mark.unit

CAPACITY = {"near": 36.0, "far": 15.0}


class FakeHost:
    """The probe's answers in turn (the last one repeats), and a rig whose trials run at the
    capacity of the placement probed last."""

    def __init__(self, answers):
        self.answers = iter(answers)
        self.last = None
        self.now = None
        self.clock = 0.0  # the search's time: trials and sleeps advance it

    def monotonic(self):
        return self.clock

    def sleep(self, seconds):
        self.clock += seconds

    def probe(self):
        self.now = next(self.answers, self.last)
        self.last = self.now
        return self.now, (60.0 if self.now == "near" else 400.0)

    def run_at(self, pps, seconds, **kw):
        self.clock += seconds
        cap = CAPACITY.get(self.now, 1.0) * 1e6
        if pps == 0:
            return {"mpps": cap / 1e6, "loss": 0.0, "lost": 0.0}
        loss = 0.0 if pps <= cap else 1 - cap / pps
        return {"mpps": min(pps, cap) / 1e6, "loss": loss, "lost": loss}


@pytest.fixture
def host(monkeypatch):
    def make(answers):
        h = FakeHost(answers)
        monkeypatch.setattr(search_mod, "cpu_link", h.probe)
        monkeypatch.setattr(search_mod, "time", h)
        return h
    return make


def test_one_placement_throughout_gives_its_figure(host):
    h = host(["far"])  # (never near: no waiting for it)
    r = search_mod.search(h, 0.1)
    assert r["link"] == "far" and set(r["by_link"]) == {"far"} and r["moved"] == 0
    assert r["mpps"] == pytest.approx(15.0) and len(r["trials"]["values"]) == 3


def test_each_placement_gets_its_own_searches(host):
    # near for a while, then far for good: near's searches stop where the host moved
    h = host(itertools.chain(["near"] * 9, ["far"] * 400))
    r = search_mod.search(h, 0.1)
    assert r["by_link"]["far"]["mpps"] == pytest.approx(15.0)
    assert r["by_link"]["far"]["trials"]["values"] == [15.0, 15.0, 15.0]
    assert r["moved"] >= 1  # the trial the host moved the CPUs during was run again
    # no figure mixes the two: the near searches that finished before the move found near's
    assert r["by_link"]["near"]["trials"]["values"] == [36.0, 36.0]


def test_the_headline_is_near_once_it_finished_a_search(host):
    # near seen (a trial ran whole in it), far long enough for its searches, then near:
    # the search waited for it
    h = host(itertools.chain(["near"] * 3, ["far"] * 20, ["near"] * 400))
    r = search_mod.search(h, 0.1)
    assert r["link"] == "near" and r["mpps"] == pytest.approx(36.0)
    assert r["by_link"]["far"]["mpps"] == pytest.approx(15.0)


def test_a_probe_that_cannot_tell_names_no_placement(host):
    h = host(itertools.chain([None, None, "near"], itertools.cycle(["near"] * 4 + [None])))
    r = search_mod.search(h, 0.1)
    assert set(r["by_link"]) == {"near"} and r["mpps"] == pytest.approx(36.0)


def test_a_probe_that_never_tells_fails_the_run(host):
    h = host([None])
    with pytest.raises(BenchError, match="timed out"):
        search_mod.search(h, 0.1)


def test_ratios_compare_within_one_placement():
    a = {"near": {"mpps": 15.0}, "far": {"mpps": 12.0}}
    b = {"far": {"mpps": 18.0}}
    assert search_mod.same_link_ratio(a, b) == (round(12 / 18, 3), "far")
    assert search_mod.link_ratios(a, b) == {"far": round(12 / 18, 3)}
    assert search_mod.same_link_ratio(a, {}) == (None, None)
    # no shared placement: the headlines, said to be mixed
    assert search_mod.same_link_ratio(a, {}, fallback=(15.0, 5.0)) == (3.0, "mixed")
    one = {"one": {"mpps": 2.0}}   # a one-CPU machine: its only placement
    assert search_mod.same_link_ratio(one, {"one": {"mpps": 4.0}}) == (0.5, "one")
    assert search_mod.same_link("near", "near") == "near"
    assert search_mod.same_link("near", "far") == search_mod.same_link(None, None) == "mixed"


def test_a_stray_probe_does_not_make_the_search_wait(host):
    plain = host(["near"])
    search_mod.search(plain, 0.1)
    stray = host(itertools.chain(["near"] * 5, ["far"], ["near"] * 400))  # one odd probe
    r = search_mod.search(stray, 0.1)
    assert set(r["by_link"]) == {"near"} and r["moved"] >= 1
    assert stray.clock <= plain.clock + 0.3  # about one trial more, no wait for "far"


class SpellRig:
    """Latency runs (bench/sfc.py latency_at) in one placement: the first `slow` of them in a
    slow spell of the host (the load not carried: loss, and the input queue's hold as
    latency), the rest carried."""

    def __init__(self, slow):
        self.slow, self.runs = slow, 0

    def run_at(self, pps, seconds, **kw):
        self.runs += 1
        spell = self.runs <= self.slow
        loss = 0.05 if spell else 0.0
        p50 = 1700.0 + self.runs if spell else 2.0 + self.runs / 10
        return {"mpps": pps / 1e6, "loss": loss, "lost": loss,
                "latency_us": {"p50": p50, "p99": p50 * 3}}


@pytest.fixture
def near_only(monkeypatch):
    from serpens.bench import sfc as sfc_mod
    probe = lambda: ("near", 60.0)  # noqa: E731
    monkeypatch.setattr(search_mod, "cpu_link", probe)
    monkeypatch.setattr(sfc_mod, "cpu_link", probe)
    return sfc_mod


def test_a_latency_run_that_did_not_carry_its_load_is_run_again(near_only):
    rig = SpellRig(slow=2)
    r = near_only.latency_at(rig, 0.1, {"by_link": {"near": {"mpps": 10.0}}}, 0, "loss")
    assert rig.runs == 2 + near_only.LATENCY_RUNS and r["latency_overloaded_runs"] == 2
    assert r["latency_us"]["p50"] == pytest.approx(2.4)  # the median of the carried runs
    assert r["latency_loss"] == 0.0 and r["latency_mpps"] == pytest.approx(8.0)


def test_a_load_no_run_carries_gives_the_overloaded_runs_latency(near_only):
    rig = SpellRig(slow=100)  # not a spell: the load is over what the CPUs carry
    r = near_only.latency_at(rig, 0.1, {"by_link": {"near": {"mpps": 10.0}}}, 0, "loss")
    assert rig.runs == near_only.LATENCY_RUNS  # not the whole budget of 3 x as many
    assert r["latency_overloaded_runs"] == near_only.LATENCY_RUNS
    assert r["latency_us"]["p50"] == pytest.approx(1702.0) and r["latency_loss"] == 0.05


class SlowedRig:
    """Latency runs in one placement on a host that slowed the CPUs since the search: they
    carry up to `carries` Mpps, and an unpaced run gives `capacity`."""

    def __init__(self, carries, capacity):
        self.carries, self.capacity, self.loads = carries, capacity, []
        self.unpaced = 0

    def run_at(self, pps, seconds, **kw):
        self.loads.append(pps / 1e6)
        if not pps:  # (every other unpaced run gives a third less: the better one counts)
            self.unpaced += 1
            mpps = self.capacity * (1.0 if self.unpaced % 2 else 2 / 3)
            return {"mpps": mpps, "loss": 0.0, "lost": 0.0,
                    "latency_us": {"p50": None, "p99": None}}
        loss = 0.05 if pps / 1e6 > self.carries else 0.0
        p50 = 1700.0 if loss else 2.0 + len(self.loads) / 10
        return {"mpps": pps / 1e6, "loss": loss, "lost": loss,
                "latency_us": {"p50": p50, "p99": p50 * 3}}


def test_after_a_run_that_did_not_carry_its_load_the_load_follows_the_capacity_now(near_only):
    """The search found 10 Mpps under a capacity of 12; the CPUs now carry half of that: the
    runs after the first are at 80% of 10 x 6/12, and the figure says so (latency_scale)."""
    rig = SlowedRig(carries=5.0, capacity=6.0)
    found = {"by_link": {"near": {"mpps": 10.0, "capacity": 12.0}}}
    r = near_only.latency_at(rig, 0.1, found, 0, "loss")
    assert rig.loads == [8.0, 0.0, 0.0] + [4.0] * near_only.LATENCY_RUNS  # (better of two)
    assert r["latency_scale"] == 0.5 and r["latency_mpps"] == pytest.approx(4.0)
    assert r["latency_of_mpps"] == 10.0 and r["latency_overloaded_runs"] == 1
    assert r["latency_us"]["p50"] == pytest.approx(2.5) and r["latency_loss"] == 0.0


def test_a_capacity_now_near_the_searchs_is_noise_and_scales_nothing(near_only):
    """(carried_now: over 95% of the search's capacity the load stays; a load no run carries
    then gives the overloaded runs' figure, as before)"""
    rig = SlowedRig(carries=5.0, capacity=11.9)
    found = {"by_link": {"near": {"mpps": 10.0, "capacity": 12.0}}}
    r = near_only.latency_at(rig, 0.1, found, 0, "loss")
    assert rig.loads == [8.0, 0.0, 0.0, 8.0, 0.0, 0.0, 8.0] and r["latency_scale"] == 1.0
    assert r["latency_overloaded_runs"] == near_only.LATENCY_RUNS and r["latency_loss"] == 0.05


def test_a_figure_is_of_the_runs_at_the_latest_load(near_only):
    """A run carried before a slow spell and runs after it at a scaled load: the figure is the
    scaled runs' alone."""
    rig = SlowedRig(carries=9.0, capacity=6.0)
    found = {"by_link": {"near": {"mpps": 10.0, "capacity": 12.0}}}
    real = rig.run_at
    rig.run_at = lambda pps, s, **kw: real(pps, s) if len(rig.loads) != 1 else dict(
        real(pps, s), loss=0.05, lost=0.05, latency_us={"p50": 1700.0, "p99": 5100.0})
    r = near_only.latency_at(rig, 0.1, found, 0, "loss")
    assert rig.loads == [8.0, 8.0, 0.0, 0.0] + [4.0] * near_only.LATENCY_RUNS
    assert r["latency_mpps"] == pytest.approx(4.0) and r["latency_scale"] == 0.5
    # (the median of the three runs at 4.0, the 6th of the rig's runs; with the first run
    # at 8.0 among them, 2.1 us, it would be the 5th's)
    assert r["latency_us"]["p50"] == pytest.approx(2.6)


def test_a_fixed_load_is_not_scaled(near_only):
    """A latency compared with another's (null_latency_us: at the SFC's load) keeps its load."""
    rig = SlowedRig(carries=5.0, capacity=6.0)
    found = {"by_link": {"near": {"mpps": 10.0, "capacity": 12.0}}}
    r = near_only.latency_at(rig, 0.1, found, 8.0, "loss")
    assert rig.loads == [8.0] * near_only.LATENCY_RUNS and r["latency_scale"] == 1.0
    assert r["latency_overloaded_runs"] == near_only.LATENCY_RUNS


def test_the_input_queue_holds_its_time_at_any_rate():
    """bench/rig.py input_depth_at: 5 ms of arrivals at the offered rate, 65536 at least (the
    rig's paced source and the multinode gateway's driver alike)."""
    from serpens.bench.rig import INPUT_DEPTH, input_depth_at
    assert input_depth_at(0) == input_depth_at(1e6) == INPUT_DEPTH == 65536
    assert input_depth_at(34e6) == 170000  # the empty SFC's rate: 5 ms, not 1.9
    assert input_depth_at(34e6, floor=1 << 20) == 1 << 20
    assert input_depth_at(10e6, hold_s=0.01) == 100000


def test_the_rig_router_sheds_only_after_the_input_queue_could_not_have_held_the_pause():
    """bench/rig.py stall_us_for: a paused instance holds the router's RX back for as long as
    the input queue holds arrivals (5 ms), never less than a node's 2 ms."""
    from serpens.bench.rig import INPUT_HOLD_S, stall_us_for
    assert stall_us_for() == stall_us_for(INPUT_HOLD_S) == 5000
    assert stall_us_for(0.0005) == 2000
    assert stall_us_for(0.02) == 20000
