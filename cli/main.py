"""serpensctl -- command-line entry point.

Exit codes: 0 success, 1 the operation failed, 2 bad usage.
"""
from __future__ import annotations

import argparse
import importlib
import json
import signal
import sys

from serpens.bench import CASES


def _bench(args) -> int:
    module = importlib.import_module(CASES[args.case])
    result = module.run(args)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        module.print_table(result)
    return 0


def build_parser():
    ap = argparse.ArgumentParser(prog="serpensctl", description="Serpens command line")
    sub = ap.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="run a benchmark against its baselines")
    cases = bench.add_subparsers(dest="case", required=True)
    for name, module_name in CASES.items():
        module = importlib.import_module(module_name)
        p = cases.add_parser(name, help=module.__doc__.splitlines()[0])
        p.add_argument("--json", action="store_true",
                       help="print one JSON object as the last line of stdout")
        module.add_arguments(p)
        p.set_defaults(func=_bench)
    return ap


def _exit_on_sigterm(signum, frame):
    # Unwind normally so DPDK primaries remove their hugepage files (atexit handlers).
    raise SystemExit(128 + signum)


def main(argv=None) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
