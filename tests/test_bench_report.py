"""bench report renders the paper's figures from saved runs (tests/data/report: small real
runs of each case), and bench efficiency's trace and allocations are what its doc says."""
import argparse
import json
import os
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

DATA = os.path.join(os.path.dirname(__file__), "data", "report")
EXPECTED = {  # figure -> (case JSON, legend labels per panel)
    "fig1b": ("efficiency", [["static (peak)", "minute-level", "Serpens (per-second, measured)"]]),
    "fig11": ("startup", [["Serpens", "Load (dlopen)", "Fork", "Exec (spawn)"]] * 2),
    "fig12": ("state", [["Serpens", "Fission (Redis)", "SNF"]] * 2),
    "fig13": ("chain", [["Serpens", "Fission (global proxy)", "SAND (local proxy)"]] * 2),
    "fig14": ("scale", [["Serpens (no state migration)"]]),
    "fig15": ("e2e", [["Serpens", "Fission", "SNF", "SAND"]] * 2),
}


def _report(*args):
    exe = os.path.join(os.path.dirname(sys.executable), "serpensctl")
    return subprocess.run([exe, "bench", "report", "--json", *args], capture_output=True,
                          text=True, timeout=120)


def test_report_renders_every_figure_from_saved_json(tmp_path):
    from PIL import Image

    out = _report("--from", DATA, "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["skipped"] == []
    assert result["seconds"] < 30
    for name, (case, panels) in EXPECTED.items():
        with Image.open(tmp_path / f"{name}.png") as img:  # a PNG that opens, not empty
            assert img.format == "PNG" and img.size[0] > 300 and img.size[1] > 200
            assert len(img.getcolors(1 << 20) or range(2)) > 1, name
        meta = json.loads((tmp_path / f"{name}.json").read_text())
        assert [p["series"] for p in meta["panels"]] == panels, name
        assert (tmp_path / f"{case}.json").exists()  # the data beside the plots
    page = (tmp_path / "report.md").read_text()
    for name in EXPECTED:
        assert f"]({name}.png)" in page
    # the paper's numbers beside ours, and the machine they were measured on
    assert "| 29.6x |" in page and "| 34 us |" in page and "| 6.4x |" in page
    with open(os.path.join(DATA, "state.json")) as f:
        state = json.load(f)
    assert f"| {state['fw']['serpens_vs_redis']:.1f}x |" in page
    assert state["machine"]["cpu"] in page


def test_report_skips_a_figure_without_its_json(tmp_path):
    src = tmp_path / "runs"
    src.mkdir()
    for case in ("startup", "state"):
        shutil.copy(os.path.join(DATA, f"{case}.json"), src)
    out = _report("--from", str(src), "--out", str(tmp_path / "out"))
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert sorted(p["png"] for p in result["plots"]) == ["fig11.png", "fig12.png"]
    assert sorted(result["skipped"]) == sorted(
        f"{n}: no {c}.json in {src}" for n, (c, _) in EXPECTED.items()
        if c not in ("startup", "state"))
    assert not (tmp_path / "out" / "fig15.png").exists()
    assert "no e2e.json" in (tmp_path / "out" / "report.md").read_text()
    # the table form says the same, one line per skipped figure
    text = _report("--from", str(src), "--out", str(tmp_path / "out2"))
    assert text.returncode == 0


def test_efficiency_trace_has_the_papers_shape():
    from serpens.bench.efficiency import trace, trace_shape

    rates = trace(100, 240, seed=1)
    assert rates == trace(100, 240, seed=1)  # seeded
    assert all(max(r) == 1.0 for r in rates)
    shape = trace_shape(rates)
    assert 0.75 <= shape["under_40pct"] <= 0.95  # load under 40% about 80% of the time
    peaks = {max(range(len(r)), key=r.__getitem__) for r in rates}
    assert len(peaks) > 50  # staggered: the SFCs peak at different times


def test_efficiency_allocations():
    from serpens.bench.efficiency import allocations

    # one SFC, 120 trace steps of 0.5 s: 10 pps for the first minute, a 100 pps spike in the
    # second; capacity 100 pps per core
    pps = [[10.0] * 60 + [100.0] + [10.0] * 59]
    a = allocations(pps, 100.0, 0.5)
    assert a["static"] == pytest.approx(1.0 * 120 * 0.5)
    assert a["minute"] == pytest.approx(0.1 * 30 + 1.0 * 30)
    assert a["demand"] == pytest.approx((119 * 10 + 100) * 0.5 / 100)
