"""control: the control plane's speed: apply to traffic, scale, leader failover, API rate.

A real local cluster in /dev/shm: etcd, two `serpens-controller` replicas (a leader and a
standby) and a `serpens-agent` whose node replays a capture at 100k packets/s into its router,
all with mTLS and certificates as `serpens up` makes them (so figures include TLS's cost).
Figures:
- apply_to_traffic_ms {p50, p99}: ApplySFC of a new FW->MON->NAT SFC until the agent counts
  its first packet leaving (agent polled every 0.5 ms), over --applies SFCs (each deleted
  after); NFs come from the agent's compile cache, as for any NF it built before;
- scale_ms {p50, p99}: Scale to 2 replicas until the agent runs the second instance (it
  takes packets from then on: rebalance, router.h), over --scales scale-outs;
- failover_s: the leader SIGKILLed until the standby holds the election key (its first write
  as leader), with packets leaving the node all along (`traffic_kept`);
- api_rps: Get/List calls answered per second by one controller holding --nfs NFs and
  --sfcs SFCs (9 in 10 a GetNF or GetSFC of a random name, 1 in 10 ListSFCs), from --clients
  concurrent callers; baseline `etcd_get_rps`: the same callers reading etcd directly
  (what the controller's own store calls cost), in the same run.
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import tempfile
import time

import grpc

from serpens.cli.cluster import (ROOT, api_healthy, etcd_argv, etcd_healthy, local_node,
                                 make_pki, start_detached)
from serpens.cli.config import Target
from serpens.common.keys import Keys
from serpens.common.pki import Identity
from serpens.common.rpc import MESSAGE_OPTIONS, channel_credentials
from serpens.proto.serpens.v1 import serpens_pb2 as pb
from serpens.proto.serpens.v1 import serpens_pb2_grpc

from .common import machine, percentiles

BIN = os.path.join(ROOT, ".venv", "bin")
FW_MON_NAT = os.path.join(ROOT, "examples", "fw-mon-nat.yaml")
NODE = local_node("bench", 100000, pool=3)
PASS_NF = """#include <serpens/nf.h>
/* Forwards every packet: the chainer labelled it for the default port already. */
static void process(struct serpens_ctx *c, struct serpens_batch *b) { (void)c; (void)b; }
SERPENS_NF(.name = "pass", .process = process);
"""


def add_arguments(p):
    p.add_argument("--applies", type=int, default=10, help="SFCs applied for apply_to_traffic")
    p.add_argument("--scales", type=int, default=10, help="scale-outs for scale_ms")
    p.add_argument("--nfs", type=int, default=1000, help="NFs the controller holds (api_rps)")
    p.add_argument("--sfcs", type=int, default=100, help="SFCs it holds (api_rps)")
    p.add_argument("--clients", type=int, default=32, help="concurrent API callers")
    p.add_argument("--api-seconds", type=float, default=3.0)


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str, poll: float = 0.0005):
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            raise RuntimeError(f"bench control: {what} within {timeout} s")
        time.sleep(poll)


class _Cluster:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="serpens-bench-control-", dir="/dev/shm")
        self.procs = {}
        self.channels = []
        pki = make_pki(os.path.join(self.dir, "pki"), "127.0.0.1:0", "127.0.0.1:0")
        self.ids = {name: Identity(pki["ca"], **pki[name])
                    for name in ("controller", "agent", "etcd", "admin")}

    def tls_args(self, name):
        i = self.ids[name]
        return ["--ca", i.ca, "--cert", i.cert, "--key", i.key]

    def start(self, name, argv, ready, timeout=60):
        proc = start_detached(argv, os.path.join(self.dir, f"{name}.log"))
        self.procs[name] = proc

        def up():
            if proc.poll() is not None:
                with open(proc.log_path, errors="replace") as f:
                    raise RuntimeError(f"{name} exited: {f.read()[-2000:]}")
            return ready()
        _wait(up, timeout, f"{name} ready", poll=0.05)
        return proc

    def channel(self, address, who="admin"):
        ch = grpc.secure_channel(address, channel_credentials(self.ids[who]),
                                 options=MESSAGE_OPTIONS)
        self.channels.append(ch)
        return ch

    def kill(self, name):
        proc = self.procs.pop(name)
        proc.kill()
        proc.wait()

    def close(self):
        for ch in self.channels:
            ch.close()
        for name in ("agent", "c1", "c2", "api", "etcd"):
            proc = self.procs.pop(name, None)
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except Exception:  # noqa: BLE001 - stuck: kill it
                    proc.kill()
                    proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def run(args) -> dict:
    cl = _Cluster()
    try:
        etcd = f"127.0.0.1:{_free_port()}"
        port = int(etcd.rpartition(":")[2])
        cl.start("etcd", etcd_argv(os.path.join(cl.dir, "etcd"), port, cl.ids["etcd"]),
                 lambda: etcd_healthy(etcd, cl.ids["admin"]))
        apis = {}
        for name in ("c1", "c2"):
            apis[name] = f"127.0.0.1:{_free_port()}"
            cl.start(name, [os.path.join(BIN, "serpens-controller"), "--etcd",
                            f"https://{etcd}", "--listen", apis[name], "--identity", name,
                            "--resync-s", "1", *cl.tls_args("controller")],
                     lambda a=apis[name]: api_healthy(Target(a, cl.ids["admin"])))
            if name == "c1":
                _wait(lambda: _leader(cl, etcd) == "c1", 10, "c1 leading", poll=0.05)
        node_path = os.path.join(cl.dir, "node.yaml")
        with open(node_path, "w") as f:
            f.write(NODE)
        agent_addr = f"127.0.0.1:{_free_port()}"
        stub = serpens_pb2_grpc.SerpensStub(cl.channel(apis["c1"]))
        agent = serpens_pb2_grpc.AgentStub(cl.channel(agent_addr, "controller"))
        cl.start("agent", [os.path.join(BIN, "serpens-agent"), "--node", node_path, "--etcd",
                           f"https://{etcd}", "--listen", agent_addr, "--report-s", "0.5",
                           *cl.tls_args("agent")],
                 lambda: bool(stub.ListNodes(pb.ListNodesRequest(), timeout=2).nodes))
        with open(FW_MON_NAT) as f:
            spec = f.read()

        def sfc_on_agent(name):
            return {s.name: s for s in agent.GetNode(pb.GetNodeRequest(), timeout=2).sfcs
                    }.get(name)

        def apply_until_traffic(name):
            t0 = time.perf_counter()
            stub.ApplySFC(pb.ApplySFCRequest(spec=spec.replace("name: fw-mon-nat",
                                                               f"name: {name}")), timeout=60)
            _wait(lambda: (s := sfc_on_agent(name)) is not None and s.out > 0, 60,
                  f"{name}'s first packet out")
            return (time.perf_counter() - t0) * 1e3

        def delete(name):
            stub.DeleteSFC(pb.DeleteSFCRequest(name=name), timeout=10)
            _wait(lambda: sfc_on_agent(name) is None, 30, f"{name} gone", poll=0.005)

        apply_until_traffic("warmup")  # the agent's first build of these NFs (compile cache)
        delete("warmup")
        applies = []
        for i in range(args.applies):
            applies.append(apply_until_traffic(f"probe{i}"))
            delete(f"probe{i}")

        apply_until_traffic("scaled")
        scales = []
        for _ in range(args.scales):
            t0 = time.perf_counter()
            stub.Scale(pb.ScaleRequest(sfc="scaled", replicas=2), timeout=10)
            _wait(lambda: sfc_on_agent("scaled").instances == 2, 30, "second instance")
            scales.append((time.perf_counter() - t0) * 1e3)
            stub.Scale(pb.ScaleRequest(sfc="scaled", replicas=1), timeout=10)
            _wait(lambda: sfc_on_agent("scaled").instances == 1, 30, "scale-in", poll=0.005)

        out_before = sfc_on_agent("scaled").out
        cl.kill("c1")
        t0 = time.perf_counter()
        _wait(lambda: _leader(cl, etcd) == "c2", 30, "c2 leading", poll=0.01)
        failover_s = time.perf_counter() - t0
        # the node kept sending: its SFC's count went on (read from the agent, whose figures
        # may lag by a report; a stop longer than this is what the figure is for)
        deadline = time.perf_counter() + 5.0
        while not (traffic_kept := sfc_on_agent("scaled").out > out_before) and \
                time.perf_counter() < deadline:
            time.sleep(0.1)
        delete_stub = serpens_pb2_grpc.SerpensStub(cl.channel(apis["c2"]))
        delete_stub.DeleteSFC(pb.DeleteSFCRequest(name="scaled"), timeout=10)
        cl.procs.pop("agent").send_signal(signal.SIGTERM)  # quiet CPUs for the API rate

        apis["api"] = f"127.0.0.1:{_free_port()}"
        cl.start("api", [os.path.join(BIN, "serpens-controller"), "--etcd", f"https://{etcd}",
                         "--listen", apis["api"], "--identity", "api", "--prefix",
                         "/serpens-api-bench/v1/", "--log-level", "warning",
                         *cl.tls_args("controller")],
                 lambda: api_healthy(Target(apis["api"], cl.ids["admin"])))
        api = asyncio.run(_api_rate(cl, apis["api"], etcd, args))
        return {
            "apply_to_traffic_ms": percentiles(applies, 50, 99),
            "scale_ms": percentiles(scales, 50, 99),
            "failover_s": round(failover_s, 3), "traffic_kept": traffic_kept,
            **api,
            "samples": {"apply_to_traffic_ms": [round(x, 2) for x in applies],
                        "scale_ms": [round(x, 2) for x in scales]},
            "machine": machine(),
            "params": {"applies": args.applies, "scales": args.scales, "nfs": args.nfs,
                       "sfcs": args.sfcs, "clients": args.clients,
                       "api_seconds": args.api_seconds, "leader_ttl_s": 2,
                       "offered_pps": 100000, "sfc": "fw-mon-nat"}}
    finally:
        cl.close()


def _leader(cl: _Cluster, etcd: str) -> str | None:
    async def get():
        from serpens.common.store import Store
        async with await Store.connect(etcd, timeout=2, identity=cl.ids["controller"]) as store:
            item = await store.get(Keys().leader)
            return item.value.decode() if item else None
    return asyncio.run(get())


async def _api_rate(cl: _Cluster, api: str, etcd: str, args) -> dict:
    from serpens.common.store import Store
    async with grpc.aio.secure_channel(api, channel_credentials(cl.ids["admin"]),
                                       options=MESSAGE_OPTIONS) as channel:
        stub = serpens_pb2_grpc.SerpensStub(channel)
        sem = asyncio.Semaphore(16)

        async def deploy(i):
            async with sem:
                await stub.DeployNF(pb.DeployNFRequest(name=f"nf{i}", source=PASS_NF),
                                    timeout=120)

        async def apply(i):
            doc = {"apiVersion": "serpens/v1", "kind": "SFC", "metadata": {"name": f"sfc{i}"},
                   "spec": {"nfs": {"a": {"nf": f"nf{i}"}, "m": {"stock": "mon"}},
                            "chain": ["a", "m"]}}
            async with sem:
                await stub.ApplySFC(pb.ApplySFCRequest(spec=json.dumps(doc)), timeout=60)
        await deploy(0)  # compiled once; the others hit the controller's compile cache
        await asyncio.gather(*(deploy(i) for i in range(1, args.nfs)))
        await asyncio.gather(*(apply(i) for i in range(args.sfcs)))

        def request():
            r = random.random()
            if r < 0.1:
                return stub.ListSFCs(pb.ListSFCsRequest(), timeout=10)
            if r < 0.55:
                return stub.GetNF(pb.GetNFRequest(name=f"nf{random.randrange(args.nfs)}"),
                                  timeout=10)
            return stub.GetSFC(pb.GetSFCRequest(name=f"sfc{random.randrange(args.sfcs)}"),
                               timeout=10)
        api_rps = await _rate(request, args.clients, args.api_seconds)
    async with await Store.connect(etcd, timeout=5, identity=cl.ids["controller"]) as store:
        def get():
            return store.get(f"/serpens-api-bench/v1/nfs/nf{random.randrange(args.nfs)}")
        etcd_rps = await _rate(get, args.clients, args.api_seconds)
    return {"api_rps": round(api_rps), "etcd_get_rps": round(etcd_rps)}


async def _rate(call, clients: int, seconds: float) -> float:
    """Calls completed per second by `clients` concurrent loops of `call()`."""
    done = 0
    end = time.perf_counter() + seconds

    async def loop():
        nonlocal done
        while time.perf_counter() < end:
            await call()
            done += 1
    t0 = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(clients)))
    return done / (time.perf_counter() - t0)


def print_table(r: dict):
    print(f"control plane on {r['machine']['cpu']} ({r['machine']['cores']} cores)")
    a, s = r["apply_to_traffic_ms"], r["scale_ms"]
    print(f"apply to first packet out: p50 {a['p50']} ms, p99 {a['p99']} ms")
    print(f"scale to a running second instance: p50 {s['p50']} ms, p99 {s['p99']} ms")
    print(f"leader failover: {r['failover_s']} s (traffic kept: {r['traffic_kept']})")
    print(f"API: {r['api_rps']} get/list per s with {r['params']['nfs']} NFs and "
          f"{r['params']['sfcs']} SFCs (etcd directly: {r['etcd_get_rps']} gets per s)")
