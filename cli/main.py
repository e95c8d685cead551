"""serpensctl -- command-line entry point.

Exit codes: 0 success, 1 the operation failed, 2 bad usage, 3 the controller (or its store)
could not be reached (apply, get, delete, scale; see cli/control.py).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys

from serpens.bench import CASES
from serpens.cli import config
from serpens.cli import control as control_cmd
from serpens.cli import drain as drain_cmd
from serpens.cli import capture as capture_cmd
from serpens.cli import node as node_cmd
from serpens.cli import status as status_cmd
from serpens.cli import usage as usage_cmd
from serpens.common.argtypes import number


def _bench(args) -> int:
    from serpens.bench.common import BenchError

    module = importlib.import_module(CASES[args.case])
    try:
        result = module.run(args)
    except BenchError as e:  # no figures, for a reason the message gives in full
        print(f"serpensctl: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        module.print_table(result)
    return 0


def _replay(args) -> int:
    from serpens.agent.replay import replay
    from serpens.common.spec import SpecError, load_sfc
    from serpens.runtime_cy.errors import NFBuildError, NFRefusedError

    try:
        spec = load_sfc(args.sfc)
    except SpecError as e:
        print(f"serpensctl: invalid SFC spec {args.sfc}: {e}", file=sys.stderr)
        return 2
    try:
        result = replay(spec, args.input, args.output, state_dir=args.state_dir)
    except (NFBuildError, NFRefusedError) as e:
        print(f"serpensctl: an NF of {spec.name} was refused: {e}", file=sys.stderr)
        output = getattr(e, "output", "")
        if output:
            print(output, file=sys.stderr)
        return 1
    except (OSError, RuntimeError) as e:
        print(f"serpensctl: replay failed: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, sort_keys=True))
        return 0
    r = result["router"]
    print(f"{spec.name}: {r['rx']} packets in, {r['out']} out, {r['dropped']} dropped "
          f"-> {args.output}")
    print(f"{'nf':<16}{'in':>10}{'out':>10}{'dropped':>10}  counters")
    for nf in result["nfs"]:
        named = ", ".join(f"{k}={v}" for k, v in nf["counters"].items() if v)
        print(f"{nf['name']:<16}{nf['in']:>10}{nf['out']:>10}{nf['dropped']:>10}  {named}")
    return 0


def build_parser():
    ap = argparse.ArgumentParser(prog="serpensctl", description="Serpens command line")
    ap.add_argument("--config", default=config.default_path(),
                    help="contexts file (default: $SERPENS_CONFIG or ~/.serpens/config; "
                         "`serpens up` writes it)")
    ap.add_argument("--context", default="", help="the context to use (default: current)")
    ap.add_argument("--server", default=os.environ.get("SERPENS_SERVER", ""),
                    help="the controller's gRPC address (default: the context's, or "
                         "$SERPENS_SERVER)")
    ap.add_argument("--insecure", action="store_true",
                    help="plain text without a context (a controller run with --insecure)")
    ap.add_argument("--timeout", type=number(float, 0, 86400, above=True), default=60.0,
                    help="seconds a controller call may take (default %(default)s)")
    sub = ap.add_subparsers(dest="command", required=True)
    rp = sub.add_parser("replay", help="run an SFC offline over a pcap capture")
    rp.add_argument("--sfc", required=True, help="SFC spec (YAML or JSON)")
    rp.add_argument("--in", dest="input", required=True, help="input capture (pcap)")
    rp.add_argument("--out", dest="output", required=True,
                    help="capture of the packets that leave the SFC")
    rp.add_argument("--state-dir", help="keep NF state here (default: fresh, discarded)")
    rp.add_argument("--json", action="store_true", help="print per-NF counters as JSON")
    rp.set_defaults(func=_replay)
    node_cmd.register(sub)
    control_cmd.register(sub)
    drain_cmd.register(sub)
    capture_cmd.register(sub)
    status_cmd.register(sub)
    usage_cmd.register(sub)
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
    if args.command in ("get", "describe", "status", "top", "state", "watch", "usage"):
        # `serpensctl get ... | head` ends quietly (commands running a DPDK primary keep the
        # default, so that they still clean up when their reader goes)
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
