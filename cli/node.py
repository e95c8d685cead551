"""`serpensctl node`: run one server's data plane from a Node config and SFC specs, printing
per-port and per-SFC counters every second until Ctrl-C (or --seconds)."""
from __future__ import annotations

import json
import time

from serpens.common.argtypes import number


def register(sub):
    p = sub.add_parser("node", help="run a node's data plane from specs (ports, SFCs)")
    p.add_argument("--node", required=True, help="Node config (YAML or JSON)")
    p.add_argument("--sfc", action="append", required=True, help="an SFC spec; repeatable")
    p.add_argument("--seconds", type=number(float, 0, above=True),
                   help="stop after this long (default: Ctrl-C)")
    p.add_argument("--json", action="store_true", help="print the final counters as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from serpens.agent.node import start_from_files

    node, code = start_from_files("serpensctl", args.node, args.sfc)
    if node is None:
        return code
    try:
        deadline = time.monotonic() + args.seconds if args.seconds else None
        while deadline is None or time.monotonic() < deadline:
            time.sleep(1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic())))
            if not args.json:
                print_counters(node.stats())
        if args.json:
            print(json.dumps(node.stats(), sort_keys=True))
    except KeyboardInterrupt:
        pass
    finally:
        node.close()
    return 0


def print_counters(st: dict):
    ports = "  ".join(f"{n} rx {c['rx']} tx {c['tx']}" + (f" unmatched {c['unmatched']}"
                                                          if c["unmatched"] else "")
                      for n, c in st["ports"].items())
    sfcs = "  ".join(f"{n}: in {c['rx']} out {c['out']} dropped {c['dropped']} "
                     f"x{c['instances']}" for n, c in st["sfcs"].items())
    print(f"[{st['node']}] {ports} | {sfcs}", flush=True)
