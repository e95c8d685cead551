"""serpensctl's control-plane commands: apply, get, delete and scale, over the controller's
gRPC API (proto/serpens/v1/serpens.proto).

    serpensctl [--context NAME] apply -f FILE [--wait]   # kind SFC or NF; `---` separates several
    serpensctl get nfs|sfcs|nodes|gateways [NAME] [-o table|json|yaml]
    serpensctl describe nf|sfc|node NAME       # an SFC's: per-node instances, its route
    serpensctl state dump SFC NF [--table T] [--limit N] [--no-merge] [-o table|json]
    serpensctl state snapshot SFC NF -f FILE    # a consistent copy of all the NF's tables
    serpensctl state restore SFC NF -f FILE [--force]  # make a snapshot the NF's state
                                                # (--force: even one of another NF's code)
    serpensctl state reset SFC NF [--table T]   # delete tables (broken, unwanted): start empty
    serpensctl watch [-o table|json]
    serpensctl delete nf|sfc NAME
    serpensctl scale SFC --replicas N [--min N] [--max N]

A kind NF file names its C source relative to itself; serpensctl reads it and sends its text:
    apiVersion: serpens/v1
    kind: NF
    metadata: {name: mine}          # or `name: mine`
    description: counts packets     # optional
    source: ./mine.c

Exit codes: 0 success, 1 the controller refused or failed the request (its message is printed),
2 bad usage or an unreadable file, 3 the controller or its store could not be reached.
"""
from __future__ import annotations

import json
import os
import sys

import yaml

from serpens.common.argtypes import number
from serpens.common.limits import LIMITS

EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3
WAIT = number(float, 0, above=True)  # --wait-timeout
REPLICAS = number(int, 0, LIMITS.replicas)
_KINDS = {"nf": "nfs", "nfs": "nfs", "sfc": "sfcs", "sfcs": "sfcs", "node": "nodes",
          "nodes": "nodes", "gateway": "gateways", "gateways": "gateways"}


class _UsageError(Exception):
    pass


def register(sub) -> None:
    p = sub.add_parser("apply", help="create or update NFs and SFCs from a YAML/JSON file")
    p.add_argument("-f", "--file", required=True, help="the spec file ('-': stdin)")
    p.add_argument("--wait", action="store_true",
                   help="wait until every SFC applied runs (or failed), showing progress")
    p.add_argument("--wait-timeout", type=WAIT, default=120.0)
    p.set_defaults(func=_run(_apply))
    p = sub.add_parser("get", help="show NFs, SFCs, nodes or gateways")
    p.add_argument("kind", choices=sorted(_KINDS))
    p.add_argument("name", nargs="?")
    p.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
    p.set_defaults(func=_run(_get))
    p = sub.add_parser("describe", help="everything about one NF, SFC or node")
    p.add_argument("kind", choices=("nf", "sfc", "node"))
    p.add_argument("name")
    p.set_defaults(func=_run(_describe))
    p = sub.add_parser("state", help="NF state on a node that runs an SFC")
    p.add_argument("action", choices=("dump", "snapshot", "restore", "reset"))
    p.add_argument("sfc")
    p.add_argument("nf", help="the NF's name in the SFC spec")
    p.add_argument("-f", "--file", help="snapshot: file written; restore: file read")
    p.add_argument("--table", default="",
                   help="dump, reset: one table (default: all of the NF's)")
    p.add_argument("--limit", type=number(int, 1, LIMITS.read_entries), default=1000,
                   help="entries per table")
    p.add_argument("--force", action="store_true",
                   help="restore: even a snapshot of other code than the NF runs")
    p.add_argument("--no-merge", dest="merge", action="store_false",
                   help="dump: read the tables as they are, without having the instances "
                        "merge first (eventual counters then lag up to 100 ms)")
    p.add_argument("--node", default="",
                   help="the server, of an SFC served by several (default: its first); each "
                        "holds the state of the flows it serves")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    p.set_defaults(func=_run(_state))
    p = sub.add_parser("watch", help="print changes to NFs, SFCs and nodes as they happen")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    p.set_defaults(func=_run(_watch))
    p = sub.add_parser("delete", help="delete an NF or an SFC")
    p.add_argument("kind", choices=("nf", "sfc"))
    p.add_argument("name")
    p.set_defaults(func=_run(_delete))
    p = sub.add_parser("scale", help="set an SFC's desired instances")
    p.add_argument("sfc")
    p.add_argument("--replicas", type=REPLICAS, required=True)
    p.add_argument("--min", type=REPLICAS, dest="min_replicas")
    p.add_argument("--max", type=REPLICAS, dest="max_replicas")
    p.set_defaults(func=_run(_scale))


def target(args):
    """The controller to call, from --config/--context/--server/--insecure (cli/config.py);
    None (after printing why) when they do not name one."""
    from serpens.cli import config
    try:
        return config.resolve(args.config, args.context, args.server, args.insecure)
    except config.ConfigError as e:
        print(f"serpensctl: {e}", file=sys.stderr)
        return None


def _run(command):
    """Open a channel to the controller, run `command(stub, args)`, map failures to exit codes."""
    def run(args) -> int:
        import grpc

        from serpens.proto.serpens.v1 import serpens_pb2_grpc
        to = target(args)
        if to is None:
            return EXIT_USAGE
        with to.channel() as channel:
            stub = serpens_pb2_grpc.SerpensStub(channel)
            try:
                return command(stub, args)
            except _UsageError as e:
                print(f"serpensctl: {e}", file=sys.stderr)
                return EXIT_USAGE
            except grpc.RpcError as e:
                code = e.code()
                where = getattr(e, "serpens_where", "")   # (the document of a file refused)
                print(f"serpensctl: {where + ': ' if where else ''}{code.name}: {e.details()}",
                      file=sys.stderr)
                if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    return EXIT_UNREACHABLE
                return EXIT_FAILED
    return run


def _read(path: str, limit: int) -> tuple[str, str]:
    """(text, the directory relative paths in it are taken from); at most `limit` characters
    are read: a file that goes on (/dev/zero) is refused, not read to the end."""
    try:
        if path == "-":
            if sys.stdin is None:
                raise _UsageError("-: no standard input")
            text, base = sys.stdin.read(limit + 1), os.getcwd()
        else:
            with open(path) as f:
                text, base = f.read(limit + 1), os.path.dirname(os.path.abspath(path))
        if len(text) > limit:
            raise _UsageError(f"{path}: over {limit} characters")
        return text, base
    except OSError as e:
        raise _UsageError(f"{path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise _UsageError(f"{path}: not a text file (UTF-8)") from None


def _apply(stub, args) -> int:
    import grpc

    from serpens.proto.serpens.v1 import serpens_pb2 as pb
    from serpens.common.documents import SpecError, check_text
    text, base_dir = _read(args.file, 16 * LIMITS.spec_bytes)
    try:  # bounded before it is parsed, as the controller does (a file holds a few documents)
        check_text(text, 16 * LIMITS.spec_bytes)
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except SpecError as e:
        raise _UsageError(f"{args.file}: {e}") from None
    except yaml.YAMLError as e:
        raise _UsageError(f"{args.file}: not valid YAML or JSON: {e}") from None
    if not docs:
        raise _UsageError(f"{args.file}: no documents (an NF or an SFC) to apply")
    # Every document is checked (and its NF source read) before the first is sent: a typo
    # in the third must not leave the first two applied. Then the NFs go first (an SFC may
    # name them): one the controller refuses (its compiler's errors) stops every SFC.
    requests = []
    for i, doc in enumerate(docs):
        where = args.file + (f" (document {i + 1})" if len(docs) > 1 else "")
        requests.append((where, *_request(doc, where, text if len(docs) == 1 else None,
                                          base_dir)))
    _check_deployed(stub, args, requests)
    requests.sort(key=lambda r: not isinstance(r[1], pb.DeployNFRequest))
    applied = []
    for where, request, _ in requests:
        try:
            if isinstance(request, pb.DeployNFRequest):
                nf = stub.DeployNF(request, timeout=args.timeout)
                print(f"nf/{nf.name} deployed (revision {nf.revision})")
            else:
                sfc = stub.ApplySFC(request, timeout=args.timeout)
                print(f"sfc/{sfc.name} applied (revision {sfc.revision})")
                applied.append(sfc)
        except grpc.RpcError as e:
            if len(docs) > 1:
                e.serpens_where = where
            raise
    if args.wait:
        return max([_wait_running(stub, sfc, args) for sfc in applied], default=0)
    return 0


def _check_deployed(stub, args, requests):
    """Every deployed NF the SFCs of a file name (`nf: NAME`) is deployed, or deployed by
    the file itself: else _UsageError naming the document, before anything is sent."""
    from serpens.proto.serpens.v1 import serpens_pb2 as pb
    in_file = {r.name for _, r, _ in requests if isinstance(r, pb.DeployNFRequest)}
    wanted = [(where, step, name) for where, _, names in requests
              for step, name in names if name not in in_file]
    if not wanted or len(requests) == 1:   # (one document: the controller says it)
        return
    have = {nf.name for nf in stub.ListNFs(pb.ListNFsRequest(), timeout=args.timeout).nfs}
    for where, step, name in wanted:
        if name not in have:
            raise _UsageError(f"{where}: spec.nfs.{step}.nf: no deployed NF named {name!r}, "
                              "nor one this file deploys; nothing was applied")


def _request(doc, where: str, text: str | None, base_dir: str):
    """(the DeployNFRequest or ApplySFCRequest of one document, the (step, deployed NF)
    pairs an SFC names: checked only when it is one of several); `text`: the file's, when
    it is the only document. _UsageError naming `where` and the field."""
    from serpens.common.spec import SpecError, parse_sfc
    from serpens.proto.serpens.v1 import serpens_pb2 as pb
    kind = doc.get("kind") if isinstance(doc, dict) else None
    if kind == "NF":
        metadata = doc.get("metadata") or {}
        name = doc.get("name") or (metadata.get("name") if isinstance(metadata, dict) else None)
        source = doc.get("source")
        if not isinstance(name, str) or not isinstance(source, str):
            raise _UsageError(f"{where}: a kind NF needs `name` (or metadata.name) and "
                              "`source` (the path of its C file)")
        description = doc.get("description") or ""
        if not isinstance(description, str):
            raise _UsageError(f"{where}: description: a string, got {description!r}")
        try:
            src_text, _ = _read(os.path.join(base_dir, source), LIMITS.nf_source_bytes)
        except _UsageError as e:
            raise _UsageError(f"{where}: source: {e}") from None
        return pb.DeployNFRequest(name=name, source=src_text, description=description), ()
    if kind == "SFC" or text is not None:
        # One document goes as written (the server's errors then match the file); one of
        # several is sent as its JSON, YAML dates and times (values or keys) as their text,
        # for the server to judge.
        if text is not None:
            return pb.ApplySFCRequest(spec=text), ()
        spec = json.dumps(_text_keys(doc), default=str)
        try:  # as the controller will (a later document's typo stops the earlier ones)
            parsed = parse_sfc(spec, allow_source=False)
        except SpecError as e:
            raise _UsageError(f"{where}: {e}") from None
        return pb.ApplySFCRequest(spec=spec), [(step, nf.deployed) for step, nf in
                                                parsed.nfs.items() if nf.deployed]
    raise _UsageError(f"{where}: kind must be NF or SFC, got {kind!r}")


def _text_keys(node):
    """`node` with every mapping key that YAML made something else (a date, a number) as
    its text: JSON keys are text."""
    if isinstance(node, dict):
        return {k if isinstance(k, str) else str(k): _text_keys(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_text_keys(v) for v in node]
    return node


def _wait_running(stub, sfc, args) -> int:
    """Until the SFC runs its applied generation (0) or failed (1), a line a second."""
    import time

    from serpens.proto.serpens.v1 import serpens_pb2 as pb
    t0 = last = time.monotonic()
    while True:
        got = stub.GetSFC(pb.GetSFCRequest(name=sfc.name), timeout=args.timeout)
        st = got.status
        if st.phase == "Running" and st.generation >= sfc.generation:
            print(f"sfc/{sfc.name} running on {st.node} ({st.instances} instances, "
                  f"{time.monotonic() - t0:.1f} s)")
            return 0
        if st.phase == "Failed":
            print(f"sfc/{sfc.name} failed: {st.message}", file=sys.stderr)
            return EXIT_FAILED
        now = time.monotonic()
        if now - t0 > args.wait_timeout:
            print(f"sfc/{sfc.name}: still {st.phase} after {args.wait_timeout:g} s "
                  f"({st.message or 'no message'})", file=sys.stderr)
            return EXIT_FAILED
        if now - last >= 1.0:
            last = now
            print(f"  sfc/{sfc.name}: {st.phase}{' - ' + st.message if st.message else ''} "
                  f"({now - t0:.0f} s)", flush=True)
        time.sleep(0.05)


def _get(stub, args) -> int:
    from google.protobuf.json_format import MessageToDict

    from serpens.proto.serpens.v1 import serpens_pb2 as pb
    kind = _KINDS[args.kind]
    if kind in ("nodes", "gateways"):
        items = list(stub.ListNodes(pb.ListNodesRequest(), timeout=args.timeout).nodes
                     if kind == "nodes" else
                     stub.ListGateways(pb.ListGatewaysRequest(), timeout=args.timeout).gateways)
        if args.name:
            items = [n for n in items if n.name == args.name]
            if not items:
                print(f"serpensctl: NOT_FOUND: name: no {kind[:-1]} named {args.name!r}",
                      file=sys.stderr)
                return EXIT_FAILED
    elif args.name:
        get = stub.GetNF if kind == "nfs" else stub.GetSFC
        request = pb.GetNFRequest if kind == "nfs" else pb.GetSFCRequest
        items = [get(request(name=args.name), timeout=args.timeout)]
    elif kind == "nfs":
        items = list(stub.ListNFs(pb.ListNFsRequest(), timeout=args.timeout).nfs)
    else:
        items = list(stub.ListSFCs(pb.ListSFCsRequest(), timeout=args.timeout).sfcs)
    if args.output != "table":
        dicts = [MessageToDict(m, preserving_proto_field_name=True) for m in items]
        out = dicts[0] if args.name else dicts
        print(json.dumps(out, indent=2, sort_keys=True) if args.output == "json"
              else yaml.safe_dump(out, sort_keys=True), end="\n" if args.output == "json" else "")
        return 0
    _print_table(kind, items)
    return 0


def _print_table(kind: str, items) -> None:
    if kind == "nfs":
        rows = [("NAME", "REVISION", "IMAGE", "SHA256", "UPDATED", "DESCRIPTION")]
        rows += [(m.name, str(m.revision), f"{m.image_size} B", m.source_sha256[:12],
                  _when(m.updated), m.description) for m in items]
    elif kind == "sfcs":
        rows = [("NAME", "REVISION", "REPLICAS", "MIN-MAX", "NFS", "PHASE", "NODE", "UPDATED",
                 "RESTORED", "CHECKPOINT")]
        rows += [(m.name, str(m.revision), str(m.scale.replicas),
                  f"{m.scale.min_replicas}-{m.scale.max_replicas}", ",".join(m.nfs) or "-",
                  m.status.phase, sfc_nodes(m.status) or "-", _when(m.updated),
                  restored(m.status), checkpoint(m.status)) for m in items]
    elif kind == "gateways":
        rows = [("NAME", "ADDRESS", "UNDERLAY", "TERM", "LAST REPORT")]
        rows += [_gateway_row(m) for m in items]
    else:
        rows = [("NAME", "REVISION", "CORDONED", "RECORD")]
        rows += [(m.name, str(m.revision), "yes" if getattr(m, "cordoned", False) else "-",
                  m.record_json) for m in items]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def restored(status) -> str:
    """After a lost node: whose checkpoint it restarted from and how old it was ("-": not
    restored; "empty" when there was no checkpoint)."""
    if not status.restored_of:
        return "-"
    if status.restored_age_ms < 0:
        return f"of {status.restored_of}: empty"
    return f"of {status.restored_of}: {status.restored_age_ms / 1000:.1f}s old"


def checkpoint(status, now: float | None = None) -> str:
    """Its checkpoints: how old the last acknowledged one is, "failing" when the last ones
    failed ("-": it takes none; "none yet" before the first)."""
    import time
    if not status.checkpoint_to and not status.checkpoint_error:
        return "-"
    now = time.time() if now is None else now
    age = f"{max(0.0, now - status.checkpoint_unix_ms / 1000):.0f}s ago" \
        if status.checkpoint_unix_ms else "none yet"
    return (f"failing, last {age}" if status.checkpoint_unix_ms else "failing, none yet") \
        if status.checkpoint_error else age


def sfc_nodes(status) -> str:
    """Where an SFC runs: its node, or its nodes ("a,b") when several serve it."""
    return ",".join(sorted(status.nodes)) if status.nodes else status.node


def _gateway_row(m) -> tuple:
    import time

    from serpens.common.records import GatewayRecord, MalformedRecord
    try:
        g = GatewayRecord.decode(m.record_json, m.name)
    except MalformedRecord as e:
        return (m.name, f"(malformed record: {e})", "-", "-", "-")
    # (the record says when it last reported, not when it registered: labelled as such)
    age = f"{max(0.0, time.time() - g.reported_at):.0f}s ago" if g.reported_at else "-"
    return (g.name, g.address, f"{g.underlay.ip} {g.underlay.mac} mtu {g.underlay.mtu}",
            str(g.term or "-"), age)


def _when(ts) -> str:
    return ts.ToDatetime().strftime("%Y-%m-%d %H:%M:%S") if ts.seconds else "-"


def _describe(stub, args) -> int:
    from serpens.proto.serpens.v1 import serpens_pb2 as pb
    from serpens.cli.status import node_records
    from serpens.common.records import SFCLoad
    nodes = {n.name: n for n in stub.ListNodes(pb.ListNodesRequest(), timeout=args.timeout).nodes}
    if args.kind == "nf":
        nf = stub.GetNF(pb.GetNFRequest(name=args.name), timeout=args.timeout)
        users = [s.name for s in stub.ListSFCs(pb.ListSFCsRequest(), timeout=args.timeout).sfcs
                 if nf.name in s.nfs]
        _fields([("Name", nf.name), ("Description", nf.description or "-"),
                 ("Revision", nf.revision), ("Image", f"{nf.image_size} bytes"),
                 ("Source SHA-256", nf.source_sha256), ("Created", _when(nf.created)),
                 ("Updated", _when(nf.updated)), ("Used by", ", ".join(users) or "-")])
        print(f"Source:\n{_indent(nf.source)}")
    elif args.kind == "sfc":
        sfc = stub.GetSFC(pb.GetSFCRequest(name=args.name), timeout=args.timeout)
        st, sc = sfc.status, sfc.scale
        where = node_records([nodes[st.node]]) if st.node in nodes else {}
        load = where[st.node].load.sfcs.get(sfc.name) if where else None
        auto = f", autoscaled at {sc.target_pps:g} packets/s each" if sc.target_pps else ""
        served = sorted(st.nodes.items()) if st.nodes else []
        if served:  # several nodes serve it: the sum of their rates
            records = node_records([nodes[n] for n, _ in served if n in nodes])
            rates = [r.load.sfcs[sfc.name] for r in records.values() if sfc.name in r.load.sfcs]
            load = SFCLoad(in_pps=sum(r.in_pps for r in rates),
                           out_pps=sum(r.out_pps for r in rates)) if rates else None
        _fields([("Name", sfc.name), ("Generation", sfc.generation),
                 ("Revision", sfc.revision), ("Phase", st.phase),
                 ("Message", st.message or "-"), ("Node", sfc_nodes(st) or "-"),
                 ("Running generation", st.generation or "-"),
                 ("Instances", f"{st.instances} running, {sc.replicas} wanted "
                               f"(min {sc.min_replicas}, max {sc.max_replicas}{auto})"
                  + (" = " + ", ".join(f"{n} {i}" for n, i in served) if served else "")),
                 ("Rate", f"{load.in_pps:g} packets/s in, {load.out_pps:g} out"
                  if load else "-"),
                 ("Deployed NFs", ", ".join(sfc.nfs) or "-"),
                 ("Checkpoints", "-" if checkpoint(st) == "-" else
                  f"to {st.checkpoint_to or '-'}, last {checkpoint(st)}"
                  + (f" ({st.checkpoint_error})" if st.checkpoint_error else "")),
                 ("Restored", restored(st) + (f" ({st.restore})" if st.restore else "")),
                 ("Cannot drain", st.stuck or "-"),
                 ("Last move", f"{st.moves} done" + (f", not every flow moved: "
                                                     f"{st.move_error}" if st.move_error
                                                     else "") if st.moves else "-"),
                 ("Route", _route(sfc.route) if sfc.HasField("route") else "-"),
                 ("Created", _when(sfc.created)), ("Updated", _when(sfc.updated))])
        print(f"Spec:\n{_indent(sfc.spec)}")
    else:
        if args.name not in nodes:
            print(f"serpensctl: NOT_FOUND: name: no node named {args.name!r}", file=sys.stderr)
            return EXIT_FAILED
        print(yaml.safe_dump(json.loads(nodes[args.name].record_json), sort_keys=True), end="")
    return 0


def _route(route) -> str:
    """An SFC's route through the gateway: tag, VNI, and its servers with their weights."""
    servers = ", ".join(f"{s.node} {s.ip} weight {s.weight}" for s in route.servers)
    return f"tag {route.tag}, vni {route.vni}" + (f", vlan {route.vlan}" if route.vlan else "") \
        + f"; servers: {servers or 'none yet'}"


def _state(stub, args) -> int:
    from serpens.proto.serpens.v1 import serpens_pb2 as pb
    if args.action == "reset":
        reply = stub.ResetState(pb.ResetStateRequest(sfc=args.sfc, nf=args.nf, table=args.table,
                                                     node=args.node),
                                timeout=max(args.timeout, 60))
        print(f"{args.sfc}.{args.nf} on {reply.node}: "
              + (f"deleted {', '.join(reply.tables)}" if reply.tables else "no tables to delete"))
        return 0
    if args.action != "dump":
        return _snapshot_or_restore(stub, args)
    if args.limit < 1:
        raise _UsageError(f"--limit: at least 1, got {args.limit}")
    reply = stub.ReadState(pb.ReadStateRequest(sfc=args.sfc, nf=args.nf, table=args.table,
                                               limit=args.limit, merge=args.merge,
                                               node=args.node),
                           timeout=args.timeout)
    if args.output == "json":
        print(json.dumps({"node": reply.node, "tables": [
            {"name": t.name, "flags": t.flags, "key_size": t.key_size,
             "value_size": t.value_size, "capacity": t.capacity, "count": t.count,
             "entries": [json.loads(e.decoded) if e.decoded else
                         {"key": e.key.hex(), "value": e.value.hex()} for e in t.entries]}
            for t in reply.tables]}, indent=2, sort_keys=True))
        return 0
    for t in reply.tables:
        print(f"{args.sfc}.{args.nf}/{t.name} on {reply.node}: {t.count} of {t.capacity} "
              f"entries ({t.key_size}-byte keys, {t.value_size}-byte values)"
              + (f", first {len(t.entries)} shown" if len(t.entries) < t.count else ""))
        for e in t.entries:
            if e.decoded:
                print("  " + "  ".join(f"{k}={v}" for k, v in json.loads(e.decoded).items()))
            else:
                print(f"  {e.key.hex()} = {e.value.hex()}")
    if not reply.tables:
        print(f"{args.sfc}.{args.nf}: no state tables on {reply.node}")
    return 0


def _snapshot_or_restore(stub, args) -> int:
    """A snapshot file is the serialized serpens.v1.StateSnapshot."""
    from serpens.common import bulk
    from serpens.proto.serpens.v1 import serpens_pb2 as pb
    if not args.file:
        raise _UsageError(f"state {args.action}: -f FILE is required")
    if args.action == "snapshot":
        snap = stub.SnapshotState(pb.SnapshotStateRequest(sfc=args.sfc, nf=args.nf,
                                                          node=args.node),
                                  timeout=max(args.timeout, 120))
        data = snap.SerializeToString()
        try:
            with open(args.file, "wb") as f:
                f.write(data)
        except OSError as e:
            raise _UsageError(f"{args.file}: {e.strerror}") from None
        print(f"{args.sfc}.{args.nf} on {snap.node}: {len(snap.tables)} tables, "
              f"{sum(t.size for t in snap.tables)} bytes ({len(data)} in {args.file})")
        return 0
    from serpens.common.rpc import MAX_MESSAGE
    try:
        with open(args.file, "rb") as f:
            data = f.read(MAX_MESSAGE + 1)  # (no request carries more: refused, not read on)
        if len(data) > MAX_MESSAGE:
            raise _UsageError(f"{args.file}: over {MAX_MESSAGE} bytes: not a snapshot")
        snap = pb.StateSnapshot.FromString(data)
        if not snap.tables:   # (an empty file parses as an empty snapshot)
            raise _UsageError(f"{args.file}: not a state snapshot (it holds no tables)")
    except OSError as e:
        raise _UsageError(f"{args.file}: {e.strerror}") from None
    except _UsageError:
        raise
    except Exception as e:  # protobuf's DecodeError
        raise _UsageError(f"{args.file}: not a state snapshot ({e})") from None
    reply = stub.RestoreState(bulk.pieces(pb.RestoreStateRequest(
        sfc=args.sfc, nf=args.nf, snapshot=snap, force=args.force, node=args.node)),
        timeout=max(args.timeout, 120))
    print(f"{args.sfc}.{args.nf} on {reply.node}: {reply.tables} tables restored from "
          f"{snap.sfc}.{snap.nf} of {snap.node}")
    return 0


def _watch(stub, args) -> int:
    from serpens.proto.serpens.v1 import serpens_pb2 as pb
    for ev in stub.Watch(pb.WatchRequest()):
        if args.output == "json":
            print(json.dumps({"type": ev.type, "kind": ev.kind, "name": ev.name,
                              "revision": ev.revision,
                              "record": json.loads(ev.json) if ev.json else None}), flush=True)
        else:
            print(f"{ev.revision:>8}  {ev.type:<6}  {ev.kind + '/' + ev.name if ev.kind else '-'}"
                  f"  {_summary(ev)}", flush=True)
    return 0


def _summary(ev) -> str:
    if not ev.json:
        return "(list everything again)" if ev.type == "reset" else ""
    record = json.loads(ev.json)
    if ev.kind == "status":
        return f"{record['phase']} on {record['node'] or '-'}: {record['instances']} " \
               f"instances{' - ' + record['message'] if record['message'] else ''}"
    if ev.kind == "sfc":
        return f"generation {record['generation']}, replicas {record['scale']['replicas']}"
    if ev.kind == "node":
        return ", ".join(f"{n} {s['in_pps']:g}/s" for n, s in
                         record.get("load", {}).get("sfcs", {}).items()) or "no SFCs"
    return record.get("description", "")


def _fields(pairs) -> None:
    width = max(len(k) for k, _ in pairs) + 2
    for key, value in pairs:
        print(f"{key + ':':<{width}}{value}")


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.rstrip().splitlines())


def _delete(stub, args) -> int:
    from serpens.proto.serpens.v1 import serpens_pb2 as pb
    if args.kind == "nf":
        stub.DeleteNF(pb.DeleteNFRequest(name=args.name), timeout=args.timeout)
    else:
        stub.DeleteSFC(pb.DeleteSFCRequest(name=args.name), timeout=args.timeout)
    print(f"{args.kind}/{args.name} deleted")
    return 0


def _scale(stub, args) -> int:
    from serpens.proto.serpens.v1 import serpens_pb2 as pb
    for flag, value in (("--replicas", args.replicas), ("--min", args.min_replicas),
                        ("--max", args.max_replicas)):
        if value is not None and value < 0:
            raise _UsageError(f"{flag}: must not be negative, got {value}")
    request = pb.ScaleRequest(sfc=args.sfc, replicas=args.replicas)
    if args.min_replicas is not None:
        request.min_replicas = args.min_replicas
    if args.max_replicas is not None:
        request.max_replicas = args.max_replicas
    sfc = stub.Scale(request, timeout=args.timeout)
    print(f"sfc/{sfc.name} scaled to {sfc.scale.replicas} "
          f"(min {sfc.scale.min_replicas}, max {sfc.scale.max_replicas}; "
          f"revision {sfc.revision})")
    return 0
