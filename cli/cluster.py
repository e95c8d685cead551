"""serpens up / down: a whole Serpens cluster on this machine (etcd, a controller, an agent).

    serpens up       # start everything, apply examples/fw-mon-nat.yaml, show it running
    serpens up --servers 3   # a gateway and 3 servers in network namespaces, VXLAN between
    serpens status   # what runs and how fast (serpensctl status)
    serpens down     # stop everything `up` started
    serpens cert issue alice --role viewer   # a user certificate and a serpensctl context

`up` starts etcd (its data on tmpfs under --dir), `serpens-controller` and `serpens-agent`
(the node of examples/node-local.yaml: a capture replayed at a steady rate into the router, a
null device out), each detached with its log in --dir, waits for each to answer, applies the
SFC through the controller's API like any client would, and waits until its packets leave
the node. The processes' PIDs go to <dir>/cluster.json; `down` stops exactly those (after
checking each PID still runs the program it started) and removes --dir, and the DPDK files
(hugepages, runtime directory) of any agent or gateway that died without removing them
(kill -9): each one's DPDK file prefix is recorded beside its PID.

Security: `up` makes a cluster CA and certificates in <dir>/pki (common/pki.py; all files
0600): `serpens-controller` (role controller: serves the API, calls the agent, etcd client),
`serpens-agent` (role agent: serves the Agent service, etcd client), `etcd` (etcd's server)
and `admin` (role admin, for you). etcd serves TLS and accepts only clients with a
certificate of that CA (--client-cert-auth). serpensctl's config (--config, default
$SERPENS_CONFIG or ~/.serpens/config; cli/config.py) gets a context `local` with the admin
certificate and becomes current; `down` removes that context again.

Several servers (`--servers N`, cli/multi.py): a bridge pair and a network namespace per
server and one for the gateway (cli/testbed.py), `serpens-gateway` replaying the capture into
its ingress, N agents with underlay ports, and examples/fw-mon-nat-spread.yaml served by all
N through the gateway over VXLAN; `up` waits until its packets come back to the gateway.
etcd then also listens on the host's bridge address (the namespaces cannot reach the host's
loopback) and every server and the gateway get a certificate for their own address. The
testbed's plan is in cluster.json before any of it is made, so `down` removes exactly it,
also after `up` crashed half-way.

Recovery: `up` on a cluster that is up checks each process by PID and health and restarts
only the ones that died (same command line, same certificates, etcd's data kept); the others
keep running.
Exit codes: 0 done, 1 something did not start (its log's tail is printed), 2 bad usage.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import grpc

from serpens.cli import config, multi
from serpens.cli.testbed import Testbed, TestbedError, tag_for
from serpens.common.names import gateway_file_prefix, node_file_prefix
from serpens.common.argtypes import number
from serpens.common.documents import SpecError
from serpens.common.node_spec import load_node, parse_node
from serpens.common.pki import CA, Identity, write_private
from serpens.common.spec import parse_sfc, read_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
BIN = os.path.dirname(sys.executable)
CONTEXT = "local"                           # the serpensctl context `up` writes
METRICS_BASE = 9451  # `up --metrics`: controller 9451, agents 9461, gateway 9471 (their defaults)


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
                    help="state, logs, certificates and etcd data of the local cluster "
                         "(default %(default)s)")
    ap.add_argument("--config", default=config.default_path(),
                    help="serpensctl's contexts file `up` adds the cluster to (default: "
                         "$SERPENS_CONFIG or ~/.serpens/config)")
    sub = ap.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start etcd, a controller and an agent; apply an SFC")
    up.add_argument("--node", default=os.path.join(EXAMPLES, "node-local.yaml"),
                    help="the agent's Node config (default examples/node-local.yaml)")
    up.add_argument("--sfc", action="append",
                    help="SFC spec(s) to apply (default examples/fw-mon-nat.yaml)")
    up.add_argument("--etcd-port", type=number(int, 1, 65534), default=22379,
                    help="etcd client port (its peer port is the next one)")
    up.add_argument("--api", default="127.0.0.1:50051", help="the controller's gRPC address")
    up.add_argument("--agent", default="127.0.0.1:50061", help="the agent's gRPC address")
    up.add_argument("--servers", type=int, default=0, metavar="N",
                    help="a gateway and N servers, each in its own network namespace, the "
                         "SFC served by all of them over VXLAN (default: one node, no "
                         "gateway)")
    up.add_argument("--pps", type=number(float, 1, 1e9), default=5000,
                    help="with --servers: the rate the gateway replays the capture at "
                         "(packets/s, default %(default)g: every process shares this "
                         "machine's CPUs)")
    up.add_argument("--timeout", type=number(float, 0, 86400, above=True), default=120.0,
                    help="seconds to wait for each step (default %(default)s)")
    up.add_argument("--metrics", type=number(int, 1, 65535 - 20), nargs="?", const=METRICS_BASE,
                    default=0,
                    metavar="PORT",
                    help="every component serves Prometheus metrics over HTTPS (client "
                         "certificate of the cluster CA): the controller on PORT, the agents "
                         "on PORT+10, the gateway on PORT+20 (default PORT %d)" % METRICS_BASE)
    sub.add_parser("down", help="stop what `serpens up` started")
    sub.add_parser("status", help="the cluster's SFCs and nodes (serpensctl status)")
    cert = sub.add_parser("cert", help="certificates of the local cluster's CA")
    cert_sub = cert.add_subparsers(dest="cert_command", required=True)
    issue = cert_sub.add_parser("issue", help="a client certificate for a user, with a role, "
                                              "and a serpensctl context NAME for it")
    issue.add_argument("name", help="the user (the certificate's CN)")
    issue.add_argument("--role", required=True, choices=("viewer", "operator", "admin"),
                       help="viewer: read; operator: + apply/delete/scale/state; admin: + NFs")
    issue.add_argument("--out", help="directory for NAME.crt/NAME.key (default <dir>/pki/users)")
    issue.add_argument("--force", action="store_true",
                       help="replace a context of that name (and its user's files)")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "status":  # (`serpens status | head` ends quietly)
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if not args.dir.strip():
        print("serpens: --dir: a directory is required", file=sys.stderr)
        return 2
    # (absolute and without a trailing slash: `l/` would pass for the directory a symlink
    # `l` names, and `.` could not be made again once emptied)
    args.dir = os.path.abspath(args.dir)
    state_path = os.path.join(args.dir, "cluster.json")
    try:
        return _command(args, state_path)
    except StateFileError as e:  # (nothing was stopped or removed)
        # (not "remove it": the cluster it described may still run, and only it names them)
        print(f"serpens: {e}" + ("" if e.unreadable else
                                 ": not the cluster.json `up` writes, so nothing was stopped; "
                                 "put back the one `up` wrote (or stop its processes "
                                 "yourself, then remove it), or give another --dir"),
              file=sys.stderr)
        return 2
    except config.ConfigError as e:
        print(f"serpens: --config {e}", file=sys.stderr)
        return 2


def _command(args, state_path: str) -> int:
    if args.command in ("up", "cert"):
        config.load(args.config)  # a config it could not write back is refused before anything
    if args.command == "down":
        return down(args.dir, state_path)
    if args.command == "status":
        state = _read_state(state_path)
        if state is None:
            print(f"serpens: no local cluster is up ({state_path} does not exist)")
            return 1
        return _status(state)
    if args.command == "cert":
        return issue_cert(args, state_path)
    if not 0 <= args.servers <= multi.MAX_SERVERS:
        print(f"serpens: --servers: 1..{multi.MAX_SERVERS} (0: one node without a gateway)",
              file=sys.stderr)
        return 2
    try:  # before anything starts: a typo must not leave half a cluster
        _check_specs(args)
    except SpecError as e:
        print(f"serpens: {e}", file=sys.stderr)
        return 2
    return up(args, state_path)


def _check_specs(args):
    """Every --sfc (as the controller will check it) and the --node of one server without a
    gateway (--servers writes the servers' own) parse; SpecError naming the file and field."""
    for path in _sfc_paths(args):
        if args.servers and path == multi.SPREAD_SFC:
            continue  # (made for the servers by multi.spread_sfc)
        _in_file(path, lambda text: parse_sfc(text, allow_source=False))
    if not args.servers:
        _in_file(args.node, parse_node)


def _in_file(path: str, parse):
    text = read_file(path)  # (SpecError naming the file)
    try:
        return parse(text)
    except SpecError as e:
        raise SpecError(f"{path}: {e.field}", e.message) from None


# ---- up ---------------------------------------------------------------------------------

def up(args, state_path: str) -> int:
    try:
        state = _read_state(state_path)
    except StateFileError:  # (then the directory is not one `up` may empty: said below)
        state = None
    if state and any(_alive(p) for p in state["processes"].values()):
        if state.get("servers", 0) != args.servers:
            print(f"serpens: the cluster in {args.dir} is up with "
                  f"{state.get('servers') or 'one node and no gateway'}"
                  f"{' servers' if state.get('servers') else ''}; `serpens down` first",
                  file=sys.stderr)
            return 2
        return recover(state, state_path, args.timeout)
    foreign = _not_a_cluster_dir(args.dir, state_path)
    if foreign:
        print(f"serpens: --dir {args.dir}: {foreign}; `up` empties its directory, so it takes "
              f"only one it made or an empty one", file=sys.stderr)
        return 2
    if state:  # what a crashed `up` left: its testbed and the servers' state
        _remove_testbed(state)
    shutil.rmtree(args.dir, ignore_errors=True)
    try:
        os.makedirs(args.dir)
    except OSError as e:
        print(f"serpens: --dir {args.dir}: {e.strerror}", file=sys.stderr)
        return 2
    state = {"api": args.api, "etcd": f"127.0.0.1:{args.etcd_port}", "agent": args.agent,
             "node": os.path.abspath(args.node), "servers": args.servers,
             "config": os.path.abspath(args.config), "processes": {}}
    _write_state(state_path, state)  # first: marks the directory as a cluster's
    if args.servers:
        bed = _plan_servers(state, args)
        _write_state(state_path, state)  # the plan first: `down` can remove what follows
    if args.metrics:
        state["metrics"] = plan_metrics(state, args.metrics)
    pki = _step("CA and certificates", lambda: make_pki(
        os.path.join(args.dir, "pki"), args.api, args.agent, state), args.timeout)
    state["pki"] = pki
    _write_state(state_path, state)
    admin = _target(state)
    try:
        if args.servers:
            _step(f"namespaces {', '.join(bed.members)}, bridges {', '.join(bed.bridges.values())}",
                  lambda: _make_testbed(bed), args.timeout)
            _write_configs(state)
        started = components(state)
        for name, _, _ in started[:2]:   # etcd, the controller
            _step(name, lambda: _start_component(state, state_path, name), args.timeout)
        rest = [name for name, _, _ in started[2:]]  # agents (and the gateway): together
        _step(", ".join(rest), lambda: _all_of(
            [_start_component(state, state_path, name) for name in rest]), args.timeout)
        config.set_context(state["config"], {
            "name": CONTEXT, "server": args.api, "ca": pki["ca"],
            "cert": pki["admin"]["cert"], "key": pki["admin"]["key"]})
        names = []
        for path in _sfc_paths(args):
            names.append(_step(f"apply {os.path.basename(path)}",
                               lambda: _apply(admin, path, args.servers), args.timeout))
        for name in names:
            _step(f"sfc {name}: " + ("placed, packets through the gateway" if args.servers
                                     else "placed, instances started, packets out"),
                  lambda: _flowing_probe(state, name), args.timeout,
                  lambda: sfc_status(admin, name))
    except StartError as e:
        print(f"serpens: {e}", file=sys.stderr)
        print("serpens: stopping what started (logs kept in "
              f"{args.dir})", file=sys.stderr)
        _stop_all(state)
        _remove_testbed(state)
        return 1
    bin_dir = "" if shutil.which("serpens") == os.path.join(BIN, "serpens") else BIN + "/"
    print(f"\nA local Serpens cluster is up (logs, PIDs and certificates in {args.dir};"
          f" serpensctl context {CONTEXT!r} in {state['config']}). Try:")
    print(f"  {bin_dir}serpensctl top")
    if args.servers:
        print(f"  {bin_dir}serpensctl describe sfc {names[0]}   # its servers and route")
        print(f"  {bin_dir}serpensctl get gateways")
    else:
        print(f"  {bin_dir}serpensctl scale {names[0]} --replicas 2")
    print(f"  {bin_dir}serpens down      # stops it\n")
    if state.get("metrics"):
        show_metrics(state)
    return _status(state)


def plan_metrics(state: dict, base: int) -> dict:
    """component -> HOST:PORT of its /metrics: each on the address it serves gRPC on (its
    certificate names that address), the controller at `base`, agents +10, the gateway +20."""
    def at(address: str, port: int) -> str:
        return f"{address.rpartition(':')[0]}:{port}"
    plan = {"controller": at(state["api"], base)}
    if state.get("servers"):
        plan["gateway"] = at(state["gateway"], base + 20)
        plan.update({f"agent-{s}": at(a, base + 10) for s, a in state["agents"].items()})
    else:
        plan["agent"] = at(state["agent"], base + 10)
    return plan


def _metrics_args(state: dict, name: str) -> list[str]:
    listen = state.get("metrics", {}).get(name)
    return ["--metrics", listen] if listen else []


def show_metrics(state: dict):
    """Where the metrics are and how to read them (HTTPS, a client certificate of the CA)."""
    admin = state["pki"]["admin"]
    print("Prometheus metrics (HTTPS; any certificate of the cluster CA, e.g. admin's):")
    for name, listen in state["metrics"].items():
        print(f"  {name:<12} https://{listen}/metrics")
    first = next(iter(state["metrics"].values()))
    print(f"  curl --cacert {state['pki']['ca']} --cert {admin['cert']} --key {admin['key']} "
          f"https://{first}/metrics\n")


def _sfc_paths(args) -> list[str]:
    if args.sfc:
        return args.sfc
    return [multi.SPREAD_SFC if args.servers else os.path.join(EXAMPLES, "fw-mon-nat.yaml")]


def _all_of(probes):
    """One probe for several: ready once each is (each polled until it is)."""
    pending = list(probes)

    def probe():
        pending[:] = [p for p in pending if not p()]
        return not pending
    return probe


# ---- several servers ---------------------------------------------------------------------

def _plan_servers(state: dict, args) -> Testbed:
    """The testbed and every address of a --servers cluster, into `state` (nothing made)."""
    tag = tag_for(args.dir)
    bed = multi.testbed(tag, args.servers)
    port = args.etcd_port
    state.update({
        "testbed": bed.to_dict(),
        "etcd_host": f"{bed.host}:{port}",        # etcd as the namespaces reach it
        "gateway": f"{bed.address[multi.GATEWAY]}:{multi.GATEWAY_PORT}",
        "agents": {s: f"{bed.address[s]}:{multi.AGENT_PORT}" for s in bed.members[1:]},
        "state_root": f"/dev/shm/serpens-{tag}",  # the servers' NF state (tmpfs)
        "pps": args.pps})
    return bed


def _testbed(state: dict) -> Testbed | None:
    return Testbed.from_dict(state["testbed"]) if state.get("testbed") else None


def _make_testbed(bed: Testbed):
    try:
        bed.create()
    except TestbedError as e:
        raise StartError(str(e)) from None


def _remove_testbed(state: dict, verbose: bool = False):
    bed = _testbed(state)
    if bed is not None:
        removed = bed.remove()
        if verbose and removed:
            print(f"  removed {', '.join(removed)}")
    root = state.get("state_root")
    if isinstance(root, str) and os.path.dirname(root) == "/dev/shm" and \
            os.path.basename(root).startswith("serpens-"):  # (only what _plan_servers names)
        shutil.rmtree(root, ignore_errors=True)


def _write_configs(state: dict):
    """The servers' Node configs and the gateway's config, in <dir>/."""
    bed = _testbed(state)
    directory = os.path.dirname(state["pki"]["dir"])
    os.makedirs(os.path.join(directory, "nodes"), exist_ok=True)
    for s in state["agents"]:
        with open(_node_path(state, s), "w") as f:
            f.write(multi.server_node(s, bed.underlay[s], pool=multi.SERVER_POOL, mtu=bed.mtu,
                                      state_dir=os.path.join(state["state_root"], s)))
    with open(os.path.join(directory, "gateway.yaml"), "w") as f:
        f.write(multi.gateway_config(bed.underlay[multi.GATEWAY], multi.replayed(),
                                     state["pps"], mtu=bed.mtu))


def _node_path(state: dict, server: str) -> str:
    return os.path.join(os.path.dirname(state["pki"]["dir"]), "nodes", f"{server}.yaml")


def _gateway_target(state: dict) -> config.Target:
    """The gateway as the controller calls it (the Gateway service answers only that role)."""
    return config.Target(state["gateway"], identity(state, "controller"))


def _step(what: str, run, timeout: float, explain=None):
    """Run one start-up step, showing progress while it takes time; on a time-out,
    `explain()` (if given) says what it waited for is doing."""
    print(f"  {what} ...", end="", flush=True)
    t0 = time.monotonic()
    deadline = t0 + timeout
    result = run()
    while callable(result):   # a readiness probe: poll it
        try:
            got = result()
        except StartError:
            print(" failed")
            raise
        if got:
            result = got
            break
        if time.monotonic() > deadline:
            print(" timed out")
            why = explain() if explain else ""
            raise StartError(f"{what}: not ready within {timeout:.0f} s"
                             + (f"\n  {why}" if why else ""))
        time.sleep(0.1)
    print(f" ok ({time.monotonic() - t0:.1f} s)")
    return result


def _start(state, state_path, name, argv, ready):
    """Start `name` detached, record its PID; a probe: ready() once it is, StartError if it
    exited."""
    proc = start_detached(argv, os.path.join(os.path.dirname(state_path), f"{name}.log"))
    state["processes"][name] = {"pid": proc.pid, "argv0": _program(argv), "argv": argv,
                                # (0 when it is gone already: then no PID is it)
                                "started": _start_ticks(proc.pid) or 0,
                                "file_prefix": _file_prefix(state, name, proc.pid)}
    _write_state(state_path, state)

    def probe():
        if proc.poll() is not None:
            raise StartError(f"{name} exited with {proc.returncode}:\n{_tail(proc.log_path)}")
        return ready()
    return probe


def _file_prefix(state: dict, name: str, pid: int) -> str:
    """The DPDK file prefix component `name` runs with as `pid` ("" if it runs no DPDK):
    `down` removes its files if it died without doing so."""
    try:
        if name == "agent":
            return node_file_prefix(load_node(state["node"]).name, pid)
        if name.startswith("agent-"):
            return node_file_prefix(load_node(_node_path(state, name[6:])).name, pid)
    except Exception:  # noqa: BLE001 - a node file it cannot read: it will not start either
        return ""
    return gateway_file_prefix(multi.GATEWAY, pid) if name == "gateway" else ""


def remove_dead_dpdk_files(state: dict, verbose: bool = False) -> list[str]:
    """Remove the hugepage files and DPDK runtime directory of every recorded process that
    is dead (killed before it could remove them); returns the prefixes cleaned. A live
    primary holds a lock on its files, so nothing of a running process goes."""
    import glob
    from serpens.runtime_cy.primary import RUNTIME_ROOT, remove_stale_files
    cleaned = []
    for name, proc in state["processes"].items():
        prefix = proc.get("file_prefix") or _file_prefix(state, name, proc["pid"])
        if not prefix or _alive(proc):
            continue
        left = glob.glob(f"/dev/hugepages/{prefix}map_*")
        if not left and not os.path.isdir(os.path.join(RUNTIME_ROOT, prefix)):
            continue
        if remove_stale_files(prefix):
            cleaned.append(prefix)
            if verbose:
                print(f"  removed {len(left)} hugepage files of {name} "
                      f"(pid {proc['pid']}, dead)")
    return cleaned


def _program(argv: list[str]) -> str:
    """The program an argv runs: `ip netns exec NS prog ...` execs prog (same PID)."""
    return argv[4] if argv[:3] == ["ip", "netns", "exec"] else argv[0]


def start_detached(argv: list[str], log_path: str) -> subprocess.Popen:
    """A process in its own session (it outlives us), output appended to `log_path`."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True, cwd=ROOT)
    proc.log_path = log_path
    return proc


# ---- certificates and components -------------------------------------------------------

def make_pki(directory: str, api: str, agent: str, state: dict | None = None) -> dict:
    """The cluster CA and every identity `up` needs, as paths (kept in cluster.json); with
    several servers (`state` planned by _plan_servers) one per server and the gateway, each
    valid for its own address, and etcd's for the host's bridge address too."""
    ca = CA.create(directory)
    local = ("127.0.0.1", "localhost", "::1")

    def issue(name, role, *addresses):
        hosts = [a.rpartition(":")[0].strip("[]") for a in addresses]
        i = ca.issue(name, role, (*local, *(h for h in hosts if h and h not in ("0.0.0.0", "::"))))
        return {"cert": i.cert, "key": i.key}
    pki = {"dir": directory, "ca": ca.cert_path,
           "controller": issue("serpens-controller", "controller", api),
           "admin": issue("admin", "admin")}
    if state and state.get("servers"):
        pki["etcd"] = issue("etcd", "etcd", state["etcd_host"])
        pki["gateway"] = issue("serpens-gateway", "gateway", state["gateway"])
        for s, address in state["agents"].items():
            pki[f"agent-{s}"] = issue(f"serpens-agent-{s}", "agent", address)
    else:
        pki["etcd"] = issue("etcd", "etcd")
        pki["agent"] = issue("serpens-agent", "agent", agent)
    return pki


def identity(state: dict, name: str) -> Identity:
    return Identity(state["pki"]["ca"], **state["pki"][name])


def _target(state: dict) -> config.Target:
    """The controller as the admin user calls it."""
    return config.Target(state["api"], identity(state, "admin"))


def _tls_args(state: dict, name: str) -> list[str]:
    i = identity(state, name)
    return ["--ca", i.ca, "--cert", i.cert, "--key", i.key]


def _etcd_cmd(state):
    port = int(state["etcd"].rpartition(":")[2])
    hosts = ["127.0.0.1"] + ([state["etcd_host"].rpartition(":")[0]]
                             if state.get("etcd_host") else [])
    return etcd_argv(os.path.join(os.path.dirname(state["pki"]["dir"]), "etcd"), port,
                     identity(state, "etcd"), hosts)


def _controller_cmd(state):
    return [os.path.join(BIN, "serpens-controller"), "--etcd", f"https://{state['etcd']}",
            "--listen", state["api"], "--identity", "local", *_tls_args(state, "controller"),
            *_metrics_args(state, "controller")]


def _agent_cmd(state):
    return [os.path.join(BIN, "serpens-agent"), "--node", state["node"],
            "--etcd", f"https://{state['etcd']}", "--listen", state["agent"],
            *_tls_args(state, "agent"), *_metrics_args(state, "agent")]


def _server_cmd(state, server):
    """A server's agent, in its namespace, reaching etcd at the host's bridge address."""
    return [*_testbed(state).netns_exec(server), os.path.join(BIN, "serpens-agent"),
            "--node", _node_path(state, server), "--etcd", f"https://{state['etcd_host']}",
            "--listen", state["agents"][server], *_tls_args(state, f"agent-{server}"),
            *_metrics_args(state, f"agent-{server}")]


def _gateway_cmd(state):
    directory = os.path.dirname(state["pki"]["dir"])
    return [*_testbed(state).netns_exec(multi.GATEWAY), os.path.join(BIN, "serpens-gateway"),
            "--config", os.path.join(directory, "gateway.yaml"),
            "--etcd", f"https://{state['etcd_host']}", "--listen", state["gateway"],
            *_tls_args(state, "gateway"), *_metrics_args(state, "gateway")]


def components(state: dict) -> list:
    """(name, command line on first start, readiness) of each process, in start order
    (recovery reuses the recorded command line; `down` stops them in reverse)."""
    admin = _target(state)
    listed = [("etcd", _etcd_cmd, lambda: etcd_healthy(state["etcd"], identity(state, "admin"))),
              ("controller", _controller_cmd, lambda: api_healthy(admin))]
    if not state.get("servers"):
        return listed + [("agent", _agent_cmd, lambda: _registered(admin))]
    listed.append(("gateway", _gateway_cmd,
                   lambda: multi.gateway_status(_gateway_target(state)) is not None
                   and multi.gateway_registered(admin)))
    for s in state["agents"]:
        listed.append((f"agent-{s}", lambda state, s=s: _server_cmd(state, s),
                       lambda s=s: multi.node_registered(admin, s)))
    return listed


def _start_component(state, state_path, name):
    _, command, ready = next(c for c in components(state) if c[0] == name)
    recorded = state["processes"].get(name, {}).get("argv")
    argv = recorded or command(state)
    return _start(state, state_path, name, argv, ready)


def recover(state: dict, state_path: str, timeout: float) -> int:
    """Restart the components of a cluster that is up whose process died or stopped
    answering; keep the others."""
    from serpens.proto.serpens.v1 import serpens_pb2 as pb
    print(f"serpens: a local cluster is up ({state_path}); checking its components")
    bed = _testbed(state)
    if bed is not None and not bed.exists():
        print(f"  its namespaces or bridges ({bed.tag}) are gone; run `serpens down` and "
              "`serpens up` again", file=sys.stderr)
        return 1
    restarted = False
    try:
        for name, _, ready in components(state):
            proc = state["processes"].get(name)
            if proc is None:
                print(f"  {name}: never started; run `serpens down` and `serpens up`")
                return 1
            if _alive(proc) and _healthy_within(ready, 5.0):
                print(f"  {name} (pid {proc['pid']}): running")
                continue
            if _alive(proc):
                print(f"  {name} (pid {proc['pid']}): not answering; stopping it")
                _stop(proc)
            remove_dead_dpdk_files({**state, "processes": {name: proc}})
            _step(f"{name}: restarting", lambda: _start_component(state, state_path, name),
                  timeout)
            restarted = True
        if restarted:
            for sfc in _stub(_target(state)).ListSFCs(pb.ListSFCsRequest(), timeout=5).sfcs:
                _step(f"sfc {sfc.name}: packets out", lambda: _flowing_probe(state, sfc.name),
                      timeout, lambda: sfc_status(_target(state), sfc.name))
    except grpc.RpcError as e:
        print(f"serpens: the controller: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    except StartError as e:
        print(f"serpens: {e}", file=sys.stderr)
        return 1
    return _status(state)


def _healthy_within(probe, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not probe():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def etcd_argv(data_dir: str, client_port: int, tls: Identity | None = None,
              hosts: list[str] = ("127.0.0.1",)) -> list[str]:
    """A one-member etcd: clients on `client_port` of each of `hosts` (loopback by default),
    peers on the next port of loopback. With `tls` (etcd's server identity) clients speak
    TLS and must present a certificate of the same CA (--client-cert-auth)."""
    client = ",".join(f"{'https' if tls else 'http'}://{h}:{client_port}" for h in hosts)
    peer = f"http://127.0.0.1:{client_port + 1}"
    argv = [shutil.which("etcd") or "/usr/bin/etcd", "--name", "serpens-local",
            "--data-dir", data_dir, "--listen-client-urls", client,
            "--advertise-client-urls", client, "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer, "--initial-cluster",
            f"serpens-local={peer}", "--logger", "zap", "--log-level", "warn"]
    if tls:
        argv += ["--cert-file", tls.cert, "--key-file", tls.key, "--trusted-ca-file", tls.ca,
                 "--client-cert-auth"]
    return argv


def etcd_healthy(endpoint: str, tls: Identity | None = None) -> bool:
    """etcd's /health says true; with `tls` (a client identity) over https."""
    import ssl
    import urllib.request
    context = None
    if tls:
        context = ssl.create_default_context(cafile=tls.ca)
        context.load_cert_chain(tls.cert, tls.key)
    try:
        with urllib.request.urlopen(f"{'https' if tls else 'http'}://{endpoint}/health",
                                    timeout=0.5, context=context) as r:
            return json.load(r).get("health") == "true"
    except OSError:
        return False


def _stub(api: config.Target):
    from serpens.proto.serpens.v1 import serpens_pb2_grpc
    return serpens_pb2_grpc.SerpensStub(api.channel())


def api_healthy(api: config.Target) -> bool:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    with api.channel() as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                              timeout=0.5)
            return reply.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False


def _registered(api: config.Target) -> bool:
    from serpens.proto.serpens.v1 import serpens_pb2 as pb
    try:
        return bool(_stub(api).ListNodes(pb.ListNodesRequest(), timeout=2).nodes)
    except grpc.RpcError:
        return False


def _apply(api: config.Target, path: str, servers: int = 0) -> str:
    """Apply the SFC in `path`; the spread example is spread over (and scaled to) `servers`."""
    from serpens.proto.serpens.v1 import serpens_pb2 as pb
    if servers and path == multi.SPREAD_SFC:
        text = multi.spread_sfc(servers)
    else:
        try:
            text = read_file(path)
        except SpecError as e:
            raise StartError(str(e)) from None
    try:
        return _stub(api).ApplySFC(pb.ApplySFCRequest(spec=text), timeout=30).name
    except grpc.RpcError as e:
        raise StartError(f"{path}: {e.code().name}: {e.details()}") from None


def _flowing(api: config.Target, name: str):
    """A probe: the SFC runs and its node reports packets leaving it."""
    from serpens.cli.status import node_records
    from serpens.proto.serpens.v1 import serpens_pb2 as pb
    stub = _stub(api)

    def probe():
        try:
            sfc = stub.GetSFC(pb.GetSFCRequest(name=name), timeout=2)
            if sfc.status.phase == "Failed":
                raise StartError(f"sfc {name} failed: {sfc.status.message}")
            if sfc.status.phase != "Running":
                return False
            nodes = stub.ListNodes(pb.ListNodesRequest(), timeout=2).nodes
            for record in node_records(nodes).values():
                if (load := record.load.sfcs.get(name)) and load.out_pps > 0:
                    return name
        except grpc.RpcError:
            pass
        return False
    return probe


def sfc_status(api: config.Target, name: str) -> str:
    """SFC `name`'s phase and status message as the controller has them (why it does not
    run yet: e.g. its instances cannot start); "" if the controller does not answer."""
    from serpens.proto.serpens.v1 import serpens_pb2 as pb
    try:
        st = _stub(api).GetSFC(pb.GetSFCRequest(name=name), timeout=5).status
    except grpc.RpcError:
        return ""
    return f"sfc {name}: {st.phase or 'Pending'}" + (f": {st.message}" if st.message else "")


def _flowing_probe(state: dict, name: str):
    if state.get("servers"):
        return multi.spread_flowing(_target(state), _gateway_target(state), name,
                                    state["servers"], StartError)
    return _flowing(_target(state), name)


def _status(state: dict) -> int:
    from serpens.cli import status
    try:
        target = _target(state)
    except (KeyError, TypeError) as e:  # (what a crashed first `up`, or a hand, left)
        raise StateFileError(f"cluster.json: no {e} of the cluster's controller") from None
    code = status.show(target)
    if state.get("servers"):
        multi.show_gateway(_gateway_target(state))
    return code


# ---- cert -------------------------------------------------------------------------------

def issue_cert(args, state_path: str) -> int:
    """A user's certificate from the local cluster's CA, and a serpensctl context for it."""
    state = _read_state(state_path)
    if state is None or "pki" not in state:
        print(f"serpens: no local cluster with a CA in {args.dir} (`serpens up` makes one)",
              file=sys.stderr)
        return 1
    out = args.out or os.path.join(state["pki"]["dir"], "users")
    taken = _name_taken(args, state, out)
    if taken:
        print(f"serpens: cert issue {args.name}: {taken}", file=sys.stderr)
        return 2
    try:
        issued = CA(state["pki"]["dir"]).issue(args.name, args.role, out_dir=out)
    except ValueError as e:
        print(f"serpens: {e}", file=sys.stderr)
        return 2
    config.set_context(args.config, {"name": args.name, "server": state["api"],
                                     "ca": issued.ca, "cert": issued.cert, "key": issued.key},
                       make_current=False)
    print(f"{args.name} (role {args.role}): {issued.cert}, {issued.key}\n"
          f"context {args.name!r} added to {args.config}: "
          f"serpensctl --context {args.name} get sfcs")
    return 0


_USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _name_taken(args, state: dict, out: str) -> str | None:
    """Why NAME may not be issued: one of the cluster's own identities (their certificates
    and the admin's context `local`), or, without --force, a context or files that exist."""
    if not _USER_NAME.fullmatch(args.name):
        return "a name of 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
    name = args.name.lower()
    if name in (CONTEXT, "admin", "etcd", "ca") or name.startswith("serpens-"):
        return "the name of one of the cluster's own identities or contexts; choose another"
    if os.path.realpath(out) == os.path.realpath(state["pki"]["dir"]):
        return f"--out {out}: the cluster's own certificates are there; choose another"
    if args.force:
        return None
    try:
        contexts = [c.get("name") for c in config.load(args.config)["contexts"]]
    except config.ConfigError as e:
        return str(e)
    if args.name in contexts:
        return f"{args.config} has a context {args.name!r} already (--force replaces it)"
    for ext in ("crt", "key"):
        if os.path.exists(os.path.join(out, f"{args.name}.{ext}")):
            return f"{os.path.join(out, args.name)}.{ext} exists (--force replaces it)"
    return None


# ---- down -------------------------------------------------------------------------------

def down(directory: str, state_path: str) -> int:
    state = _read_state(state_path)
    if state is None:
        print(f"serpens: no local cluster is up ({state_path} does not exist)")
        return 0
    _stop_all(state, verbose=True)
    remove_dead_dpdk_files(state, verbose=True)
    _remove_testbed(state, verbose=True)
    shutil.rmtree(directory, ignore_errors=True)
    if os.path.dirname(directory) == "/run/serpens":   # (made for the default --dir)
        _remove_if_empty("/run/serpens")
    _forget_context(state)
    print("serpens: the local cluster is down")
    return 0


def _forget_context(state: dict):
    """Remove the contexts of this cluster's CA (`local` and issued users'): its files go."""
    path = state.get("config")
    if not path or "pki" not in state:
        return
    try:
        doc = config.load(path)
    except config.ConfigError:
        return
    kept = [c for c in doc["contexts"] if c.get("ca") != state["pki"]["ca"]]
    if len(kept) != len(doc["contexts"]):
        doc["contexts"] = kept
        if doc.get("current-context") not in [c.get("name") for c in kept]:
            doc.pop("current-context", None)
        if kept:
            config.save(path, doc)
        else:  # nothing else was in it: leave no empty file (or ~/.serpens) behind
            os.unlink(path)
            if path == os.path.expanduser("~/.serpens/config"):
                _remove_if_empty(os.path.dirname(path))


def _remove_if_empty(directory: str):
    with contextlib.suppress(OSError):   # (not empty, or not ours to remove: it stays)
        os.rmdir(directory)


def _stop_all(state: dict, verbose: bool = False):
    for name in reversed(list(state["processes"])):  # recorded in start order
        proc = state["processes"].get(name)
        if proc is None or not _alive(proc):
            continue
        if verbose:
            print(f"  stopping {name} (pid {proc['pid']}) ...", end="", flush=True)
        _stop(proc)
        if verbose:
            print(" ok")


def _stop(proc: dict):
    os.kill(proc["pid"], signal.SIGTERM)
    deadline = time.monotonic() + 20
    while _alive(proc) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(proc):
        os.kill(proc["pid"], signal.SIGKILL)


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command (state first), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _start_ticks(pid: int) -> int | None:
    """When `pid` started (clock ticks after boot: /proc/PID/stat field 22), None if gone."""
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def _alive(proc: dict) -> bool:
    """The PID still runs the process we started (not a reused PID: same start time, when
    recorded, and same program)."""
    try:
        with open(f"/proc/{proc['pid']}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    fields = _stat(proc["pid"])
    if fields is None:
        return False
    if proc.get("started") is not None and int(fields[19]) != proc["started"]:
        return False
    if fields[0] == "Z":
        _reap(proc["pid"])
        return False
    program = os.path.basename(proc["argv0"]).encode()
    return any(os.path.basename(a) == program for a in argv[:2])


def _reap(pid: int):
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


# what `up` makes in its directory: it empties only a directory holding these alone
_MADE = {"cluster.json", "pki", "nodes", "gateway.yaml", "etcd"}


def _not_a_cluster_dir(directory: str, state_path: str) -> str | None:
    """Why `directory` is not one `up` may empty (None: absent, empty, or holding the
    cluster.json every `up` writes first and nothing `up` does not make)."""
    if not os.path.lexists(directory):
        return None
    if os.path.islink(directory) or not os.path.isdir(directory):
        return "exists and is not a directory"
    try:
        entries = os.listdir(directory)
    except OSError as e:
        return e.strerror
    if not entries:
        return None
    try:
        state = _read_state(state_path)
    except StateFileError as e:
        return f"holds a {os.path.basename(state_path)} `up` cannot read ({e}): put back the " \
            "one it wrote, or stop that cluster's processes yourself and remove it"
    if state is None:
        return f"is not empty and holds no {os.path.basename(state_path)} `up` wrote"
    foreign = sorted(e for e in entries if e not in _MADE and not e.endswith(".log")
                     and not e.startswith("cluster.json.tmp"))
    if foreign:
        return f"holds {', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}, " \
               "which `up` did not make"
    return None


class StateFileError(Exception):
    """cluster.json is there but is not what `up` writes (`unreadable`: or cannot be read)."""

    def __init__(self, message: str, unreadable: bool = False):
        super().__init__(message)
        self.unreadable = unreadable


def _read_state(path: str) -> dict | None:
    """cluster.json as `up` wrote it, None when there is none (StateFileError otherwise)."""
    try:
        with open(path) as f:
            state = json.load(f)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StateFileError(f"{path}: {e.strerror}", unreadable=True) from None
    except ValueError as e:
        raise StateFileError(f"{path}: not JSON ({e})") from None
    processes = state.get("processes") if isinstance(state, dict) else None
    if not isinstance(processes, dict) or not all(
            isinstance(p, dict) and type(p.get("pid")) is int and p["pid"] > 0
            and isinstance(p.get("argv0"), str) for p in processes.values()):
        raise StateFileError(f"{path}: no `processes` map of pid and argv0")
    return state


def _write_state(path: str, state: dict):
    write_private(path, json.dumps(state, indent=2).encode())


def _tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


if __name__ == "__main__":
    sys.exit(main())
