"""serpensctl usage: what SFCs used (Serpens.GetUsage; docs/observability.md "Usage").

    serpensctl usage [SFC] [--since T] [-o table|json | --json]

T is a time (ISO 8601, e.g. 2026-11-30T18:00:00Z; without a zone: UTC), Unix seconds, or a
duration back from now (90s, 15m, 2h, 1h30m). Figures count from the start of T's minute, at
most 24 h back; without --since they are the totals since metering began. Exit code 3 when
a node did not answer (the figures lack its part; it is named on stderr and in the JSON).
"""
from __future__ import annotations

import datetime
import json
import math
import re
import sys
import time

from serpens.cli.control import EXIT_UNREACHABLE, _run, _UsageError

_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def register(sub) -> None:
    p = sub.add_parser("usage", help="per-SFC usage: packets, bytes, CPU time, state "
                                     "byte-seconds (totals, or since a time)")
    p.add_argument("sfc", nargs="?", default="", help="one SFC (default: all)")
    p.add_argument("--since", default="",
                   help="from this time: ISO 8601, Unix seconds, or a duration back (2h, "
                        "15m, 1h30m); at most 24 h back")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    p.add_argument("--json", dest="output", action="store_const", const="json",
                   help="the same as -o json")
    p.set_defaults(func=_run(_usage))


# a Timestamp's range (protobuf: years 1-9999); the controller keeps usage for a day anyway
_SINCE_RANGE = (-62135596800, 253402300799)


def parse_since(text: str, now: float | None = None) -> float:
    """Unix time of a --since value; _UsageError naming --since if it is none of the forms
    or no time a request can carry."""
    try:
        when = _since(text, time.time() if now is None else now)
    except (OverflowError, ValueError):  # (hours past any float, digits past int's limit)
        when = math.nan
    if not (math.isfinite(when) and _SINCE_RANGE[0] <= when <= _SINCE_RANGE[1]):
        raise _UsageError(f"--since: {text.strip()!r} is no time (Unix seconds, not "
                          f"milliseconds?)")
    return when


def _since(text: str, now: float) -> float:
    text = text.strip()
    m = _DURATION.match(text)
    if text and m and any(m.groups()):
        h, mi, s = (int(g or 0) for g in m.groups())
        return now - (h * 3600 + mi * 60 + s)
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise _UsageError(f"--since: not a time, Unix seconds or a duration (2h, 15m): "
                          f"{text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp()


def _iso(ts) -> str:
    return datetime.datetime.fromtimestamp(ts.seconds, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def _figures(u) -> dict:
    return {"packets": u.packets, "bytes": u.bytes, "cpu_seconds": u.cpu_seconds,
            "state_byte_seconds": u.state_byte_seconds}


def _usage(stub, args) -> int:
    from serpens.proto.serpens.v1 import serpens_pb2 as pb
    request = pb.GetUsageRequest(sfc=args.sfc)
    if args.since:
        request.since.FromSeconds(int(parse_since(args.since)))
    reply = stub.GetUsage(request, timeout=args.timeout)
    for why in reply.unreachable:
        print(f"serpensctl: node {why} (its usage is missing)", file=sys.stderr)
    if args.output == "json":
        print(json.dumps({
            "since": _iso(reply.since) if reply.HasField("since") else None,
            "read_at": _iso(reply.read_at), "unreachable": list(reply.unreachable),
            "sfcs": [dict(_figures(s.total), sfc=s.sfc,
                          nodes={n: _figures(u) for n, u in sorted(s.nodes.items())})
                     for s in reply.sfcs]}, indent=2, sort_keys=True))
        return EXIT_UNREACHABLE if reply.unreachable else 0
    print(f"since {_iso(reply.since)}" if reply.HasField("since")
          else "totals since metering began", f"(read {_iso(reply.read_at)})")
    rows = [("SFC", "PACKETS", "BYTES", "CPU-SECONDS", "STATE-BYTE-SECONDS", "NODES")]
    for s in reply.sfcs:
        t = s.total
        rows.append((s.sfc, str(t.packets), str(t.bytes), f"{t.cpu_seconds:.6f}",
                     f"{t.state_byte_seconds:.0f}", ",".join(sorted(s.nodes)) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) if i in (0, 5) else c.rjust(w)
                        for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    return EXIT_UNREACHABLE if reply.unreachable else 0
