"""Benchmarks, run as `serpensctl bench <case> [--json]` (DESIGN §5)."""

CASES = {
    "startup": "serpens.bench.startup",
    "state": "serpens.bench.state",
    "sfc": "serpens.bench.sfc",
    "budget": "serpens.bench.budget",
    "chain": "serpens.bench.chain",
    "scale": "serpens.bench.scale",
    "control": "serpens.bench.control",
    "faults": "serpens.bench.faults",
    "multinode": "serpens.bench.multinode",
    "migrate": "serpens.bench.migrate",
    "efficiency": "serpens.bench.efficiency",
    "report": "serpens.bench.report",
    "e2e": "serpens.bench.e2e",
}
