"""The usage meter's bookkeeping (agent/usage.py): counters that go back count from zero, totals
and the per-minute history are written atomically and read back by a new meter, `since` sums
whole minutes within the history, a damaged file is set aside rather than trusted, and an
instance's CPU figure never goes back nor beyond its wall time."""
import json
import os

import pytest

from serpens.agent.usage import BusyCycles, UsageMeter

pytestmark = pytest.mark.unit


class Counters:
    """What Node.usage_counters() returns, set by the test."""

    def __init__(self):
        self.now = {}

    def set(self, name, packets, nbytes, cpu=0.0, state=0):
        self.now[name] = {"packets": packets, "bytes": nbytes, "cpu_seconds": cpu,
                          "state_bytes": state}

    def __call__(self):
        return {n: dict(c) for n, c in self.now.items()}


class Clock:
    def __init__(self, t=1_800_000_000.0):
        self.t = t

    def __call__(self):
        return self.t


def test_deltas_add_up_and_a_reset_counts_from_zero(tmp_path):
    c, clock = Counters(), Clock()
    m = UsageMeter(c, str(tmp_path / "u.json"), period_s=0, clock=clock)
    c.set("a", 10, 1000, 0.5)
    m.sample()
    c.set("a", 25, 2500, 0.75)
    m.sample()
    c.set("a", 4, 400, 0.25)  # the SFC's counters started again (a new router slot)
    m.sample()
    u = m.usage()[0]["a"]
    assert (u["packets"], u["bytes"]) == (29, 2900)
    assert u["cpu_seconds"] == pytest.approx(1.0)


def test_totals_and_history_survive_a_new_meter(tmp_path):
    path = str(tmp_path / "u.json")
    c, clock = Counters(), Clock()
    m = UsageMeter(c, path, period_s=0, clock=clock)
    c.set("a", 100, 6400)
    m.sample()
    clock.t += 600  # ten minutes later
    c.set("a", 150, 9600)
    c.set("b", 7, 70)
    m.sample()
    saved = json.load(open(path))
    assert saved["totals"]["a"][:2] == [150, 9600]
    assert not [f for f in os.listdir(tmp_path) if f != "u.json"]  # no temporary left
    # an agent started again: its node's counters start from zero
    c2 = Counters()
    m2 = UsageMeter(c2, path, period_s=0, clock=clock)
    assert m2.usage()[0]["a"]["packets"] == 150
    c2.set("a", 3, 30)
    m2.sample()
    assert m2.usage()[0]["a"]["packets"] == 153
    # since: whole minutes; what came before the window is not in it
    rows, start = m2.usage(since=clock.t - 60)
    assert start == (clock.t - 60) // 60 * 60
    assert rows["a"]["packets"] == 53 and rows["b"]["packets"] == 7
    assert m2.usage("b", since=clock.t - 3600)[0] == {"b": m2.usage()[0]["b"]}
    with pytest.raises(ValueError, match="since: at most 24 h back"):
        m2.usage(since=clock.t - 25 * 3600)
    with pytest.raises(ValueError, match="since: in the future"):
        m2.usage(since=clock.t + 3600)


def test_state_byte_seconds_integrate_the_bytes_over_time(tmp_path, monkeypatch):
    c, clock = Counters(), Clock()
    mono = [100.0]
    monkeypatch.setattr("serpens.agent.usage.time.monotonic", lambda: mono[0])
    m = UsageMeter(c, str(tmp_path / "u.json"), period_s=0, clock=clock)
    c.set("a", 0, 0, state=1000)
    m.sample()
    mono[0] += 2
    c.set("a", 0, 0, state=3000)  # the table grew: the period is billed at the mean
    m.sample()
    mono[0] += 1
    m.sample()
    assert m.usage()[0]["a"]["state_byte_seconds"] == pytest.approx(2 * 2000 + 1 * 3000)
    del c.now["a"]  # removed: its state is billed no more
    mono[0] += 10
    m.sample()
    m.sample()
    assert m.usage()[0]["a"]["state_byte_seconds"] == pytest.approx(7000)


def test_a_damaged_file_is_set_aside_not_trusted(tmp_path):
    path = tmp_path / "u.json"
    path.write_text('{"format": 1, "totals": {"a": [1, 2, -3, 4]}, "minutes": []}')
    m = UsageMeter(Counters(), str(path), period_s=0)
    assert m.usage()[0] == {}
    assert (tmp_path / "u.json.bad").exists()


def test_old_sfcs_are_forgotten_after_the_history(tmp_path):
    c, clock = Counters(), Clock()
    m = UsageMeter(c, str(tmp_path / "u.json"), period_s=0, clock=clock)
    c.set("old", 5, 50)
    m.sample()
    del c.now["old"]
    c.set("new", 1, 10)
    clock.t += 25 * 3600
    m.sample()
    assert set(m.usage()[0]) == {"new"}


class FakeCtl:
    busy_cycles = 0


def test_an_instance_s_cpu_figure_never_goes_back_nor_beyond_its_wall_time():
    busy, ctl = BusyCycles(), FakeCtl()
    busy.begin(1, ctl)
    ctl.busy_cycles = 1000
    assert busy.cycles() == 1000
    ctl.busy_cycles = 10  # an NF scribbled on its control block
    assert busy.cycles() == 1000
    ctl.busy_cycles = 10**18  # ... or claims more than the time that passed
    assert busy.cycles() < 10**15  # (the TSC cycles since begin(): far fewer)
    busy.end(1, 2000)
    other = BusyCycles()
    other.begin(1, FakeCtl())
    other.end(1, 500)
    assert other.cycles() == 500


def test_nothing_new_is_not_written_again_until_a_minute_passed(tmp_path):
    path = tmp_path / "u.json"
    c, clock = Counters(), Clock()
    m = UsageMeter(c, str(path), period_s=0, clock=clock)
    c.set("a", 1, 64)
    m.sample()
    first = os.stat(path).st_ino  # (each write renames a new file over it)
    clock.t += 1
    m.sample()
    assert os.stat(path).st_ino == first
    c.set("a", 2, 128)
    m.sample()
    assert os.stat(path).st_ino != first
    second = os.stat(path).st_ino
    clock.t += 60
    m.sample()
    assert os.stat(path).st_ino != second
