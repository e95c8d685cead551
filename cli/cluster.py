"""serpens up / down: a whole Serpens cluster on this machine (etcd, a controller, an agent).

    serpens up       # start everything, apply examples/fw-mon-nat.yaml, show it running
    serpens status   # what runs and how fast (serpensctl status)
    serpens down     # stop everything `up` started

`up` starts etcd (its data on tmpfs under --dir), `serpens-controller` and `serpens-agent`
(the node of examples/node-local.yaml: a capture replayed at a steady rate into the router, a
null device out), each detached with its log in --dir, waits for each to answer, applies the
SFC through the controller's API like any client would, and waits until its packets leave
the node. The processes' PIDs go to <dir>/cluster.json; `down` stops exactly those (after
checking each PID still runs the program it started) and removes --dir.
Exit codes: 0 done, 1 something did not start (its log's tail is printed), 2 bad usage.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import grpc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
BIN = os.path.dirname(sys.executable)
ORDER = ("agent", "controller", "etcd")      # the order `down` stops them in


class StartError(Exception):
    pass


def local_node(name: str, pps: float, pool: int, state_dir: str = "") -> str:
    """A Node config for this machine (as examples/node-local.yaml): examples/traffic.pcap
    replayed forever at `pps` packets/s into port wan, a null device as lan; `state_dir`
    (default the node spec's) keeps several nodes on one machine apart."""
    return f"""
apiVersion: serpens/v1
kind: Node
metadata: {{name: {name}}}
spec:
  ports:
    wan: net_pcap_wan,rx_pcap={EXAMPLES}/traffic.pcap,infinite_rx=1
    lan: net_null_lan,no-rx=1
  input: [wan]
  output: lan
  pool: {pool}
  pace: {{wan: {pps:g}}}
""" + (f"  state_dir: {state_dir}\n" if state_dir else "")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="serpens", description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/run/serpens/local",
                    help="state, logs and etcd data of the local cluster (default %(default)s)")
    sub = ap.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start etcd, a controller and an agent; apply an SFC")
    up.add_argument("--node", default=os.path.join(EXAMPLES, "node-local.yaml"),
                    help="the agent's Node config (default examples/node-local.yaml)")
    up.add_argument("--sfc", action="append",
                    help="SFC spec(s) to apply (default examples/fw-mon-nat.yaml)")
    up.add_argument("--etcd-port", type=int, default=22379, help="etcd client port")
    up.add_argument("--api", default="127.0.0.1:50051", help="the controller's gRPC address")
    up.add_argument("--agent", default="127.0.0.1:50061", help="the agent's gRPC address")
    up.add_argument("--timeout", type=float, default=120.0,
                    help="seconds to wait for each step (default %(default)s)")
    sub.add_parser("down", help="stop what `serpens up` started")
    sub.add_parser("status", help="the cluster's SFCs and nodes (serpensctl status)")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    state_path = os.path.join(args.dir, "cluster.json")
    if args.command == "down":
        return down(args.dir, state_path)
    if args.command == "status":
        return _status(_read_state(state_path) or {})
    return up(args, state_path)


# ---- up ---------------------------------------------------------------------------------

def up(args, state_path: str) -> int:
    state = _read_state(state_path)
    if state and any(_alive(p) for p in state["processes"].values()):
        print(f"serpens: a local cluster is already up ({state_path}); showing it "
              "(`serpens down` stops it)")
        return _status(state)
    shutil.rmtree(args.dir, ignore_errors=True)
    os.makedirs(args.dir)
    state = {"api": args.api, "etcd": f"127.0.0.1:{args.etcd_port}", "agent": args.agent,
             "processes": {}}
    sfcs = args.sfc or [os.path.join(EXAMPLES, "fw-mon-nat.yaml")]
    try:
        _step("etcd", lambda: _start_etcd(args, state, state_path), args.timeout)
        _step("controller", lambda: _start(
            state, state_path, "controller",
            [os.path.join(BIN, "serpens-controller"), "--etcd", f"http://{state['etcd']}",
             "--listen", args.api, "--identity", "local"],
            lambda: api_healthy(args.api)), args.timeout)
        _step("agent", lambda: _start(
            state, state_path, "agent",
            [os.path.join(BIN, "serpens-agent"), "--node", os.path.abspath(args.node),
             "--etcd", state["etcd"], "--listen", args.agent],
            lambda: _registered(args.api)), args.timeout)
        names = []
        for path in sfcs:
            names.append(_step(f"apply {os.path.basename(path)}",
                               lambda: _apply(args.api, path), args.timeout))
        for name in names:
            _step(f"sfc {name}: placed, instances started, packets out",
                  lambda: _flowing(args.api, name), args.timeout)
    except StartError as e:
        print(f"serpens: {e}", file=sys.stderr)
        print("serpens: stopping what started (logs kept in "
              f"{args.dir})", file=sys.stderr)
        _stop_all(state)
        return 1
    bin_dir = "" if shutil.which("serpens") == os.path.join(BIN, "serpens") else BIN + "/"
    print(f"\nA local Serpens cluster is up (logs and PIDs in {args.dir}). Try:")
    print(f"  {bin_dir}serpensctl top")
    print(f"  {bin_dir}serpensctl scale {names[0]} --replicas 2")
    print(f"  {bin_dir}serpens down      # stops it\n")
    return _status(state)


def _step(what: str, run, timeout: float):
    """Run one start-up step, showing progress while it takes time."""
    print(f"  {what} ...", end="", flush=True)
    t0 = time.monotonic()
    deadline = t0 + timeout
    result = run()
    while callable(result):   # a readiness probe: poll it
        got = result()
        if got:
            result = got
            break
        if time.monotonic() > deadline:
            print(" timed out")
            raise StartError(f"{what}: not ready within {timeout:.0f} s")
        time.sleep(0.1)
    print(f" ok ({time.monotonic() - t0:.1f} s)")
    return result


def _start(state, state_path, name, argv, ready):
    """Start `name` detached, record its PID; a probe: ready() once it is, StartError if it
    exited."""
    proc = start_detached(argv, os.path.join(os.path.dirname(state_path), f"{name}.log"))
    state["processes"][name] = {"pid": proc.pid, "argv0": argv[0]}
    _write_state(state_path, state)

    def probe():
        if proc.poll() is not None:
            raise StartError(f"{name} exited with {proc.returncode}:\n{_tail(proc.log_path)}")
        return ready()
    return probe


def start_detached(argv: list[str], log_path: str) -> subprocess.Popen:
    """A process in its own session (it outlives us), output appended to `log_path`."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True, cwd=ROOT)
    proc.log_path = log_path
    return proc


def _start_etcd(args, state, state_path):
    return _start(state, state_path, "etcd",
                  etcd_argv(os.path.join(args.dir, "etcd"), args.etcd_port),
                  lambda: etcd_healthy(state["etcd"]))


def etcd_argv(data_dir: str, client_port: int) -> list[str]:
    """A one-member etcd on loopback: clients on `client_port`, peers on the next port."""
    client = f"http://127.0.0.1:{client_port}"
    peer = f"http://127.0.0.1:{client_port + 1}"
    return [shutil.which("etcd") or "/usr/bin/etcd", "--name", "serpens-local",
            "--data-dir", data_dir, "--listen-client-urls", client,
            "--advertise-client-urls", client, "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer, "--initial-cluster",
            f"serpens-local={peer}", "--logger", "zap", "--log-level", "warn"]


def etcd_healthy(endpoint: str) -> bool:
    import urllib.request
    try:
        with urllib.request.urlopen(f"http://{endpoint}/health", timeout=0.5) as r:
            return json.load(r).get("health") == "true"
    except OSError:
        return False


def _stub(api: str):
    from serpens.proto.serpens.v1 import serpens_pb2_grpc
    return serpens_pb2_grpc.SerpensStub(grpc.insecure_channel(api))


def api_healthy(api: str) -> bool:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    with grpc.insecure_channel(api) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                              timeout=0.5)
            return reply.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False


def _registered(api: str) -> bool:
    from serpens.proto.serpens.v1 import serpens_pb2 as pb
    try:
        return bool(_stub(api).ListNodes(pb.ListNodesRequest(), timeout=2).nodes)
    except grpc.RpcError:
        return False


def _apply(api: str, path: str) -> str:
    from serpens.proto.serpens.v1 import serpens_pb2 as pb
    with open(path) as f:
        text = f.read()
    try:
        return _stub(api).ApplySFC(pb.ApplySFCRequest(spec=text), timeout=30).name
    except grpc.RpcError as e:
        raise StartError(f"{path}: {e.code().name}: {e.details()}") from None


def _flowing(api: str, name: str):
    """A probe: the SFC runs and its node reports packets leaving it."""
    from serpens.proto.serpens.v1 import serpens_pb2 as pb
    stub = _stub(api)

    def probe():
        try:
            sfc = stub.GetSFC(pb.GetSFCRequest(name=name), timeout=2)
            if sfc.status.phase == "Failed":
                raise StartError(f"sfc {name} failed: {sfc.status.message}")
            if sfc.status.phase != "Running":
                return False
            for node in stub.ListNodes(pb.ListNodesRequest(), timeout=2).nodes:
                load = json.loads(node.record_json).get("load", {}).get("sfcs", {})
                if load.get(name, {}).get("out_pps", 0) > 0:
                    return name
        except grpc.RpcError:
            pass
        return False
    return probe


def _status(state: dict) -> int:
    from serpens.cli import status
    return status.show(state.get("api", "127.0.0.1:50051"))


# ---- down -------------------------------------------------------------------------------

def down(directory: str, state_path: str) -> int:
    state = _read_state(state_path)
    if state is None:
        print(f"serpens: no local cluster is up ({state_path} does not exist)")
        return 0
    _stop_all(state, verbose=True)
    shutil.rmtree(directory, ignore_errors=True)
    print("serpens: the local cluster is down")
    return 0


def _stop_all(state: dict, verbose: bool = False):
    for name in ORDER:
        proc = state["processes"].get(name)
        if proc is None or not _alive(proc):
            continue
        if verbose:
            print(f"  stopping {name} (pid {proc['pid']}) ...", end="", flush=True)
        os.kill(proc["pid"], signal.SIGTERM)
        deadline = time.monotonic() + 20
        while _alive(proc) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(proc):
            os.kill(proc["pid"], signal.SIGKILL)
        if verbose:
            print(" ok")


def _alive(proc: dict) -> bool:
    """The PID still runs the program we started (not a reused PID)."""
    try:
        with open(f"/proc/{proc['pid']}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        with open(f"/proc/{proc['pid']}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                _reap(proc["pid"])
                return False
    except OSError:
        return False
    program = os.path.basename(proc["argv0"]).encode()
    return any(os.path.basename(a) == program for a in argv[:2])


def _reap(pid: int):
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _read_state(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_state(path: str, state: dict):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f, indent=2)
    os.replace(tmp, path)


def _tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


if __name__ == "__main__":
    sys.exit(main())
