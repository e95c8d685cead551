"""`serpensctl capture` and `serpensctl trace` (docs/observability.md "Capture and trace"):
Serpens.Capture streamed into a pcapng file (one comment per packet: node, instance, NF,
verdict, reason) or printed as each traced packet's path through the chain."""
from __future__ import annotations

import json
import os
import sys

from serpens.common.argtypes import number
from serpens.common.limits import LIMITS
from serpens.common.pcapng import CapturedFrame, PcapngWriter

from .control import _run, _UsageError

COUNT = number(int, 1, LIMITS.capture_count)
SECONDS = number(float, 0, LIMITS.capture_seconds, above=True)


NODE_HELP = "the server, of an SFC served by several (default: its first)"


def register(sub) -> None:
    p = sub.add_parser("capture", help="write the packets passing a point of an SFC to pcapng")
    p.add_argument("sfc")
    p.add_argument("--nf", default="", help="the NF (name in the SFC spec); default: the SFC")
    p.add_argument("--at", choices=("in", "out", "drop"), default="out")
    p.add_argument("-c", "--count", type=COUNT, default=1000, help="stop after this many packets")
    p.add_argument("--seconds", type=SECONDS, default=60.0, help="stop after this long")
    p.add_argument("--max-bytes", type=number(int, 1, 2**63 - 1), default=64 << 20,
                   help="stop after this many bytes")
    p.add_argument("-s", "--snaplen", type=number(int, 1, LIMITS.capture_snaplen), default=2048,
                   help="bytes kept per packet")
    p.add_argument("-w", "--write", required=True, help="the pcapng file to write ('-': stdout)")
    p.add_argument("--node", default="", help=NODE_HELP)
    p.set_defaults(func=_run(_capture))
    p = sub.add_parser("trace", help="the next packets' path through an SFC's chain")
    p.add_argument("sfc")
    p.add_argument("-c", "--count", type=COUNT, default=1)
    p.add_argument("--seconds", type=SECONDS, default=60.0, help="give up after this long")
    p.add_argument("--node", default="", help=NODE_HELP)
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    p.set_defaults(func=_run(_trace))


def _comment(p) -> str:
    words = [f"node={p.node}", f"instance={'router' if p.router else p.instance}", f"at={p.at}"]
    if p.nf:
        words.append(f"nf={p.nf}")
    words.append(f"verdict={p.verdict}")
    if p.reason:
        words.append(f"reason={p.reason}")
    return " ".join(words)


def _writable(path: str) -> None:
    """-w PATH can be written (checked before the call; the file is made only once the
    capture answers, so a refused request leaves an earlier capture of that name whole)."""
    if not path:
        raise _UsageError("-w: a file name, or '-' for stdout")
    if os.path.isdir(path):
        raise _UsageError(f"-w {path}: is a directory")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise _UsageError(f"-w {path}: no directory {folder}")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise _UsageError(f"-w {path}: not writable")


def _capture(stub, args) -> int:
    from serpens.proto.serpens.v1 import serpens_pb2 as pb
    request = pb.CaptureRequest(sfc=args.sfc, nf=args.nf, at=args.at, count=args.count,
                                seconds=args.seconds, max_bytes=args.max_bytes,
                                snaplen=args.snaplen, node=args.node)
    to_stdout = args.write == "-"
    if not to_stdout:
        _writable(args.write)
    out, w = None, None
    summary, written = None, 0

    def start():
        nonlocal out, w
        try:
            out = sys.stdout.buffer if to_stdout else open(args.write, "wb")
        except OSError as e:
            raise _UsageError(f"-w {args.write}: {e.strerror}") from None
        w = PcapngWriter(out, args.snaplen)

    stream = stub.Capture(request)
    try:
        for ev in stream:
            if w is None:  # the request was taken: now the file
                start()
            if ev.HasField("packet"):
                p = ev.packet
                w.write(CapturedFrame(p.data, p.orig_len, p.time_ns, _comment(p)))
                written += 1
            elif ev.HasField("summary"):
                summary = ev.summary
        if w is None:  # (an answer without events: still a whole, empty file)
            start()
        out.flush()
    except KeyboardInterrupt:  # Ctrl-C: what was written is a whole file; say so, as tcpdump
        stream.cancel()        # (the node stops copying once the call is gone)
        if w is None:
            print("\ninterrupted before the capture began: nothing written", file=sys.stderr)
            return 130
        out.flush()
        where = "stdout" if to_stdout else args.write
        print(f"\ninterrupted: {written} packets written to {where}", file=sys.stderr)
        return 130
    except _UsageError:
        stream.cancel()
        raise
    except OSError as e:  # writing (a full disk: /dev/full)
        stream.cancel()
        raise _UsageError(f"-w {args.write}: {e.strerror}") from None
    finally:
        if out is not None and out is not sys.stdout.buffer:
            out.close()
    if summary is not None:
        print(f"{summary.packets} packets ({summary.bytes} bytes) from node {summary.node}, "
              f"stopped on {summary.stopped}; {summary.lost} copies lost to full rings",
              file=sys.stderr)
    return 0


def _trace(stub, args) -> int:
    from serpens.proto.serpens.v1 import serpens_pb2 as pb
    request = pb.CaptureRequest(sfc=args.sfc, count=args.count, seconds=args.seconds,
                                trace=True, snaplen=128, node=args.node)
    n = 0
    for ev in stub.Capture(request):
        if not ev.HasField("trace"):
            continue
        t, n = ev.trace, n + 1
        steps = [{"nf": s.nf, "label": s.label, "reason": s.reason,
                  "call_ns": s.call_ns, "batch": s.batch} for s in t.steps]
        if args.output == "json":
            print(json.dumps({"packet": n, "node": t.packet.node, "instance": t.packet.instance,
                              "len": t.packet.orig_len, "summary": _describe(t.packet.data),
                              "steps": steps}), flush=True)
            continue
        print(f"packet {n}: {t.packet.orig_len} bytes on node {t.packet.node} instance "
              f"{t.packet.instance}: {_describe(t.packet.data)}")
        for s in steps:
            why = f" ({s['reason']})" if s["reason"] else ""
            print(f"  {s['nf'] or '(selector)':<16} -> {s['label']}{why}  "
                  f"{s['call_ns']} ns for a batch of {s['batch']}")
    return 0


def _describe(frame: bytes) -> str:
    """One line, as scapy sums a frame up: "Ether / IP / UDP 10.0.0.1:1234 > ..."."""
    try:
        import scapy.layers.inet  # noqa: F401 - binds IP, UDP, TCP, ICMP to Ether: decoded
        import scapy.layers.inet6  # noqa: F401
        from scapy.layers.l2 import Ether
        return Ether(frame).summary()
    except Exception:  # scapy is optional for the CLI: the length is enough then
        return f"{len(frame)} bytes"
