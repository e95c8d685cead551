"""report: the paper's evaluation figures as PNG plots and a Markdown page, ours beside its.

`serpensctl bench report [--from DIR] [--out DIR]`: with --from, reads the saved results
DIR/<case>.json (`serpensctl bench <case> --json` output: its last line); without, runs each
case first (`serpensctl bench <case> --json`, one process each: one DPDK primary per
process; startup with --sweep) and saves its JSON in --out. Then one PNG per paper figure it
reproduces (fig1b efficiency, fig11 startup, fig12 state, fig13 chain, fig14 scale, fig15
e2e), each with a sidecar fig<N>.json naming its panels and series (what the plot shows, for
tests and readers), and report.md: per figure the paper's numbers (§II-B3, §V) and ours side
by side, and the machine each case ran on. A figure whose JSON is missing is skipped with a
line saying so.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

# what each figure reads: (case, extra arguments when the report runs the case)
FIGURES = {
    "fig1b": ("efficiency", []),
    "fig11": ("startup", ["--sweep"]),
    "fig12": ("state", []),
    "fig13": ("chain", []),
    "fig14": ("scale", []),
    "fig15": ("e2e", []),
}
STARTUP_METHODS = (("map", "Serpens"), ("dlopen", "Load (dlopen)"), ("fork", "Fork"),
                   ("spawn", "Exec (spawn)"))
STATE_BACKENDS = (("serpens", "Serpens"), ("redis", "Fission (Redis)"), ("snf", "SNF"))
CHAIN_MODES = (("serpens", "Serpens"), ("global_proxy", "Fission (global proxy)"),
               ("local_proxy", "SAND (local proxy)"))
E2E_PLATFORMS = (("serpens", "Serpens"), ("fission_like", "Fission"), ("snf_like", "SNF"),
                 ("sand_like", "SAND"))
EFFICIENCY = (("static", "static (peak)"), ("minute", "minute-level"),
              ("serpens", "Serpens (per-second, measured)"))


def add_arguments(p):
    p.add_argument("--from", dest="from_dir", default=None,
                   help="read DIR/<case>.json instead of running the cases")
    p.add_argument("--out", default="bench-report", help="where the report goes")


# ---- plotting ---------------------------------------------------------------------------------

def _axes(title: str, panels: list[str]):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    fig.suptitle(title)
    for ax, t in zip(axes[0], panels):
        ax.set_title(t, fontsize=10)
    return fig, list(axes[0])


def _bars(ax, groups: list[str], series: list[tuple[str, list]], ylabel: str, log=False):
    width = 0.8 / max(1, len(series))
    for k, (label, values) in enumerate(series):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(groups))]
        ax.bar(xs, [v if v is not None else 0 for v in values], width, label=label)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize=8)


def _save(fig, out: str, name: str) -> dict:
    """Write the PNG and its sidecar (panel titles and legend labels, read off the figure)."""
    path = os.path.join(out, f"{name}.png")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    meta = {"png": os.path.basename(path), "title": fig._suptitle.get_text(),
            "panels": [{"title": ax.get_title(),
                        "series": [t.get_text() for t in ax.get_legend().get_texts()]
                        if ax.get_legend() else []} for ax in fig.axes]}
    with open(os.path.join(out, f"{name}.json"), "w") as f:
        json.dump(meta, f, indent=1)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return meta


def plot_fig1b(r: dict, out: str) -> dict:
    fig, (ax,) = _axes(f"Fig. 1b: core utilisation, {r['params']['sfcs']} SFCs "
                       f"(heavy-tailed trace)", ["utilisation = demand / core-seconds held"])
    labels = [label for _, label in EFFICIENCY]
    for k, ((key, label), color) in enumerate(zip(EFFICIENCY, ("C0", "C1", "C2"))):
        ax.bar([k], [r["utilisation"][key]], color=color, label=label)
    ax.set_xticks(range(len(labels)), [lbl.split(" (")[0] for lbl in labels])
    ax.set_ylabel("utilisation")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    return _save(fig, out, "fig1b")


def plot_fig11(r: dict, out: str) -> dict:
    sw = r["sweep"]
    fig, (a, b) = _axes("Fig. 11: resource overhead of startup methods",
                        ["(a) CPU time of n starts", "(b) memory of n deployed instances"])
    for (key, label), marker, dash in zip(STARTUP_METHODS, "osD^", ("-", "--", "-", "--")):
        style = {"marker": marker, "linestyle": dash, "label": label, "fillstyle": "none"}
        cpu = sw["cpu_ms"].get(key, [])
        a.plot([p["n"] for p in cpu], [p["cpu_ms"] for p in cpu], **style)
        mem = sw["memory_kb"].get(key, [])  # (equal series overlap: dashes show both)
        b.plot([p["n"] for p in mem], [p["kb"] / 1024 for p in mem], **style)
    for ax, ylabel in ((a, "CPU time (ms)"), (b, "memory (MiB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("instances")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
    return _save(fig, out, "fig11")


def plot_fig12(r: dict, out: str) -> dict:
    nfs = r["params"].get("nfs", [k for k in ("fw", "mon", "nat", "ids", "vpn") if k in r])
    fig, (a, b) = _axes("Fig. 12: NF performance by where the state lives",
                        ["(a) throughput (one core)", "(b) mean latency at 80% of max"])
    groups = [n.upper() for n in nfs]
    _bars(a, groups, [(label, [r[n][f"{key}_mpps"] for n in nfs])
                      for key, label in STATE_BACKENDS], "Mpps", log=True)
    _bars(b, groups, [(label, [r[n].get("latency_us", {}).get(key, {}).get("mean")
                               for n in nfs]) for key, label in STATE_BACKENDS], "us", log=True)
    return _save(fig, out, "fig12")


def plot_fig13(r: dict, out: str) -> dict:
    lengths = sorted((k for k in r if k.isdigit()), key=int)
    fig, (a, b) = _axes("Fig. 13: SFCs of n firewalls on one core",
                        ["(a) throughput", "(b) median latency at half of max"])
    for key, label in CHAIN_MODES:
        xs = [int(n) for n in lengths if key in r[n]]
        a.plot(xs, [r[str(n)][key]["mpps"] for n in xs], marker="o", label=label)
        b.plot(xs, [r[str(n)][key]["p50_us"] for n in xs], marker="o", label=label)
    for ax, ylabel in ((a, "Mpps"), (b, "p50 latency (us)")):
        ax.set_xticks([int(n) for n in lengths])
        ax.set_xlabel("SFC length (NFs)")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
    return _save(fig, out, "fig13")


def plot_fig14(r: dict, out: str) -> dict:
    fig, (ax,) = _axes("Fig. 14: latency while scaling out a stateful NF",
                       ["p99 latency around the scale-out"])
    phases = ["before", "during", "after"]
    _bars(ax, phases, [("Serpens (no state migration)",
                        [r[f"{p}_p99_us"] for p in phases])], "p99 latency (us)")
    return _save(fig, out, "fig14")


def plot_fig15(r: dict, out: str) -> dict:
    plats = [(k, label) for k, label in E2E_PLATFORMS if k in r]
    fig, (a, b) = _axes("Fig. 15: FW->MON->NAT end to end",
                        ["(a) throughput", "(b) mean latency at 80% of max"])
    for i, (key, label) in enumerate(plats):
        a.bar([i], [r[key]["mpps"]], color=f"C{i}", label=label)
        b.bar([i], [r[key]["latency_us"]["mean"]], color=f"C{i}", label=label)
    for ax, ylabel in ((a, "Mpps"), (b, "mean latency (us)")):
        ax.set_xticks(range(len(plats)), [label for _, label in plats])
        ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
    return _save(fig, out, "fig15")


PLOTS = {"fig1b": plot_fig1b, "fig11": plot_fig11, "fig12": plot_fig12, "fig13": plot_fig13,
         "fig14": plot_fig14, "fig15": plot_fig15}


# ---- the page: the paper's numbers and ours ---------------------------------------------------

def _x(v):
    return f"{v:.1f}x" if isinstance(v, (int, float)) else "-"


def _pct(v):
    return f"{v:.1%}" if isinstance(v, (int, float)) else "-"


def _ratio(a, b):
    return a / b if a and b else None


def rows_fig1b(r):
    u = r["utilisation"]
    return [("utilisation, static peak allocation", "-", f"{u['static']:.2f}"),
            ("utilisation, minute-level", "-", f"{u['minute']:.2f}"),
            ("utilisation, Serpens per-second (measured)", "-", f"{u['serpens']:.2f}"),
            ("gain, minute -> second granularity", "+30% (avg)",
             _pct(_ratio(u["serpens"], u["minute"]) - 1 if u["minute"] else None)),
            ("SFC load under 40% of its peak", "80% of the time",
             _pct(r["trace"]["under_40pct"])),
            ("SFCs (asked for, run)", "-",
             f"{r['params']['sfcs_requested']}, {r['params']['sfcs']}"),
            ("packets out / offered", "-",
             _pct(r["packets"]["out"] / max(1, r["packets"]["sent"]
                                            + r["packets"]["lost_at_input"])))]


def rows_fig11(r):
    rows = [("Serpens start (p50)", "34 us", f"{r['map_us']['p50']} us"),
            ("Load / dlopen start (p50)", "138 us", f"{r['dlopen_us']['p50']} us"),
            ("Fork start (p50)", "16 ms", f"{r['fork_us']['p50'] / 1000:.2f} ms"),
            ("Exec / spawn start (p50)", "160 ms", f"{r['spawn_us']['p50'] / 1000:.1f} ms"),
            ("memory per deployed NF", "~20 KB", f"{r['deploy_kb_per_nf']} KB")]
    if "sweep" in r:
        cpu = r["sweep"]["cpu_ms"]
        top = {k: v[-1] for k, v in cpu.items() if v}
        rows += [(f"CPU time of {p['n']} {k} starts", "-", f"{p['cpu_ms']:.1f} ms")
                 for k, p in top.items()]
    return rows


PAPER_FIG12 = {"fw": ("35.1x", "80.4%"), "mon": ("48.1x", "91.8%"), "nat": ("19.5x", "90.6%"),
               "ids": ("6.4x", "77.4%"), "vpn": ("7.5x", "84.9%")}


def rows_fig12(r):
    rows = []
    for nf in r["params"].get("nfs", [k for k in PAPER_FIG12 if k in r]):
        f = r[nf]
        paper = PAPER_FIG12.get(nf, ("-", "-"))
        rows.append((f"{nf.upper()} throughput, Serpens / Fission (Redis)", paper[0],
                     _x(f["serpens_vs_redis"])))
        if "latency_reduction_vs_redis" in f:
            rows.append((f"{nf.upper()} mean latency reduction vs Fission", paper[1],
                         _pct(f["latency_reduction_vs_redis"])))
        if "latency_reduction_p50_vs_redis" in f:
            rows.append((f"{nf.upper()} median latency reduction vs Fission", "-",
                         _pct(f["latency_reduction_p50_vs_redis"])))
    if "mon" in r:
        rows.append(("MON throughput, Serpens / SNF", "24.3x", _x(r["mon"]["serpens_vs_snf"])))
        if "latency_reduction_vs_snf" in r["mon"]:
            rows.append(("MON mean latency reduction vs SNF", "83.9%",
                         _pct(r["mon"]["latency_reduction_vs_snf"])))
    return rows


def rows_fig13(r):
    lengths = sorted((k for k in r if k.isdigit() and k != "1"), key=int)
    g = [r[n].get("serpens_vs_global_proxy") for n in lengths]
    s = [r[n].get("serpens_vs_local_proxy") for n in lengths]
    span = (lambda v: f"{min(v):.1f}x - {max(v):.1f}x" if v and None not in v else "-")
    return [(f"throughput vs Fission, {lengths[0]}-{lengths[-1]} NFs", "2.3x - 2.7x", span(g)),
            (f"throughput vs SAND, {lengths[0]}-{lengths[-1]} NFs", "1.6x - 2.1x", span(s))] \
        if lengths else []


def rows_fig14(r):
    return [("Serpens p99 latency during scale-out", "60 - 63 us", f"{r['during_p99_us']} us"),
            ("Serpens p99 latency before", "-", f"{r['before_p99_us']} us"),
            ("packets lost, flows reordered", "-",
             f"{r['lost_packets']}, {r['reordered_flows']}")]


def rows_fig15(r):
    rows = []
    paper = {"fission_like": ("29.6x", "97.4%"), "snf_like": ("14.5x", "95.8%"),
             "sand_like": ("29.3x", "96.6%")}
    for key, label in E2E_PLATFORMS[1:]:
        if key in r:
            rows.append((f"throughput, Serpens / {label}", paper[key][0], _x(r[key]["speedup"])))
            rows.append((f"mean latency reduction vs {label}", paper[key][1],
                         _pct(r[key]["latency_reduction"])))
            if "latency_reduction_p50" in r[key]:
                rows.append((f"median latency reduction vs {label}", "-",
                             _pct(r[key]["latency_reduction_p50"])))
    if "serpens" in r:
        rows += [("Serpens SFC throughput", "2.4 Mpps", f"{r['serpens']['mpps']} Mpps"),
                 ("Serpens SFC mean latency", "83 us", f"{r['serpens']['latency_us']['mean']} us")]
    return rows


ROWS = {"fig1b": rows_fig1b, "fig11": rows_fig11, "fig12": rows_fig12, "fig13": rows_fig13,
        "fig14": rows_fig14, "fig15": rows_fig15}
TITLES = {"fig1b": "Fig. 1b: resource utilisation by scaling granularity",
          "fig11": "Fig. 11: startup methods", "fig12": "Fig. 12: state localisation",
          "fig13": "Fig. 13: service chaining", "fig14": "Fig. 14: scaling",
          "fig15": "Fig. 15: end to end"}


NOTES = {  # what differs from the paper's setup, by design (docs/baselines.md has more)
    "fig1b": "The router takes at most 16 SFCs (SERPENS_ROUTER_MAX_SFCS): the 100 asked for "
             "run as 16. The trace plays faster than its own clock (`params.speedup`); "
             "minute-level allocation uses 60-trace-second windows. Serpens' core-seconds "
             "are measured (every CPU cycle its instances ran, wake-ups and idle polling "
             "included; `core_seconds.serpens_metered` counts time inside batches only): at a "
             "few kpps per SFC, waking instances costs more than their packets do.",
    "fig11": "Memory: a Serpens image and a Load-style .so hold the same bytes per NF (their "
             "lines overlap); Fork and Exec hold a process each.",
    "fig12": "The stock IDS keeps per TCP flow where its scan stands (a pattern split across "
             "segments is found: the paper's IDS keeps per-flow connection objects) and sees "
             "TCP segments here; the stock VPN takes one block of sequence numbers per batch "
             "from a global counter.",
    "fig14": "Serpens alone: no state-migration baselines (OpenNF, S6, CHC, SNF) are built here.",
}


def _machine(r: dict) -> str:
    m = r.get("machine", {})
    load = f", load average {m['loadavg_1m']} when it began" if "loadavg_1m" in m else ""
    return f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, kernel {m.get('kernel', '?')}{load}"


def write_page(out: str, done: dict, skipped: list[str], source: str):
    lines = ["# Serpens: the paper's evaluation, reproduced", "",
             f"Results from {source}; plots by `serpensctl bench report`. The paper's numbers "
             "are from its §II-B3 and §V (a testbed of four servers: the NFs' two with two "
             "Xeon E5-2650 v4 CPUs, 12 cores each, and 10 GbE NICs); ours from the "
             "machine named under each figure. Each case's JSON (`<case>.json`) is beside "
             "this page; docs/baselines.md describes each baseline's design.", ""]
    for name, (case, r) in done.items():
        lines += [f"## {TITLES[name]}", "", f"![{name}]({name}.png)", "",
                  f"`serpensctl bench {case}` on {_machine(r)}.", ""]
        if name in NOTES:
            lines += [NOTES[name], ""]
        lines += ["| figure | paper | ours |", "|---|---|---|"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in ROWS[name](r)]
        lines.append("")
    if skipped:
        lines += ["## Not plotted", ""] + [f"- {s}" for s in skipped] + [""]
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(lines))


# ---- running ----------------------------------------------------------------------------------

def run_case(case: str, extra: list[str], out: str) -> str:
    """`serpensctl bench <case> --json` in its own process; its JSON saved as out/<case>.json."""
    exe = os.path.join(os.path.dirname(sys.executable), "serpensctl")
    proc = subprocess.run([exe, "bench", case, "--json", *extra], capture_output=True,
                          text=True)
    if proc.returncode:
        raise RuntimeError((proc.stderr.strip().splitlines() or ["failed"])[-1])
    path = os.path.join(out, f"{case}.json")
    with open(path, "w") as f:
        f.write(proc.stdout.strip().splitlines()[-1] + "\n")
    return path


def run(args) -> dict:
    t0 = time.monotonic()
    os.makedirs(args.out, exist_ok=True)
    done, skipped, plots = {}, [], []
    for name, (case, extra) in FIGURES.items():
        if args.from_dir:
            path = os.path.join(args.from_dir, f"{case}.json")
            if not os.path.exists(path):
                skipped.append(f"{name}: no {case}.json in {args.from_dir}")
                continue
        else:
            try:
                path = run_case(case, extra, args.out)
            except RuntimeError as e:
                skipped.append(f"{name}: serpensctl bench {case} failed: {e}")
                continue
        with open(path) as f:
            r = json.load(f)
        try:
            meta = PLOTS[name](r, args.out)
        except (KeyError, TypeError) as e:  # a JSON of an older version of the case
            skipped.append(f"{name}: {case}.json lacks {e}")
            continue
        if args.from_dir and os.path.abspath(args.from_dir) != os.path.abspath(args.out):
            with open(os.path.join(args.out, f"{case}.json"), "w") as f:
                json.dump(r, f, sort_keys=True)
        done[name] = (case, r)
        plots.append(meta)
    write_page(args.out, done, skipped,
               f"saved runs in `{args.from_dir}`" if args.from_dir else "runs made for it")
    return {"out": args.out, "plots": plots, "skipped": skipped,
            "seconds": round(time.monotonic() - t0, 2)}


def print_table(r: dict):
    for meta in r["plots"]:
        print(f"{os.path.join(r['out'], meta['png'])}: {meta['title']}")
    for line in r["skipped"]:
        print(f"skipped {line}")
    print(f"{os.path.join(r['out'], 'report.md')} ({r['seconds']} s)")
