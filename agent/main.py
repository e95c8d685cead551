"""serpens-agent: one server's agent (DESIGN §1): runs the node's data plane from its Node config,
serves the Agent gRPC service the controller drives it with, registers the node in etcd with a
lease (its record carries the service's address) and reports its load there. It meters each
SFC's usage (agent/usage.py), totals kept in the state directory across restarts.

    serpens-agent --node node.yaml --etcd https://10.0.0.1:2379 --listen 0.0.0.0:50061 \
        --ca ca.crt --cert node1.crt --key node1.key
    serpens-agent --insecure --node node.yaml --etcd 127.0.0.1:2379 --listen 127.0.0.1:50061
    serpens-agent --node node.yaml --sfc fw-mon-nat.yaml      # also run SFCs from files

etcd or the controller being away never holds up traffic: the data plane starts first,
registration retries in the background, and what runs keeps running. SIGINT/SIGTERM
deregister the node and stop everything the agent started.
With --ca/--cert/--key the Agent service is mTLS and answers only the controller's identity
(common/auth.py); the same certificate authenticates the agent to etcd and to other agents,
whose Peer service (same port) it calls to share an SFC's state (agent/peer_state.py:
seeds, returned pools, eventual deltas every --delta-period-ms; agent/pool_rebalance.py:
a share of a release pool that ran dry here, asked for every --rebalance-period-ms).
Exit codes: 0 stopped on request, 1 failed, 2 bad config.
"""
from __future__ import annotations

import argparse
import asyncio
import faulthandler
import logging
import signal
import sys
from concurrent.futures import ThreadPoolExecutor

from serpens.common import metrics, rpc, tls_flags
from serpens.common.lease_record import registered_until
from serpens.common.store import Store
from serpens.proto.serpens.v1 import serpens_pb2_grpc

from .metrics import NodeCollector, start_latency
from .node import Node, start_from_files
from .peer_state import DeltaSender, Receiver
from .pool_rebalance import PoolRebalancer
from .registration import Registration
from .service import AgentServicer, PeerServicer

EXECUTOR_THREADS = 64

log = logging.getLogger("serpens-agent")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="serpens-agent", description=__doc__.splitlines()[0])
    ap.add_argument("--node", required=True, help="Node config (YAML or JSON)")
    ap.add_argument("--sfc", action="append", default=[], help="an SFC spec; repeatable")
    ap.add_argument("--etcd", default="127.0.0.1:2379", help="etcd endpoints, comma-separated")
    ap.add_argument("--ttl", type=int, default=5, help="lease TTL of the node's record (s)")
    ap.add_argument("--report-s", type=float, default=1.0, help="load report period (s)")
    ap.add_argument("--usage-file", default=None,
                    help="where per-SFC usage totals are kept across restarts (default: "
                         ".usage-<node>.json in the node's state_dir; a disk path keeps them "
                         "across reboots too)")
    ap.add_argument("--listen", default="127.0.0.1:50061",
                    help="address of the Agent gRPC service (default %(default)s)")
    ap.add_argument("--advertise", default="",
                    help="address the controller calls (default: --listen, or this host's "
                         "name and the port bound when listening on all addresses)")
    ap.add_argument("--delta-period-ms", type=int, default=100,
                    help="how often eventual tables' deltas go to the SFC's other servers "
                         "(ms, 10..60000; default %(default)s)")
    ap.add_argument("--rebalance-period-ms", type=int, default=100,
                    help="how often release pools that ran dry here ask the SFC's other "
                         "servers for a share, at most once per pool and server "
                         "(ms, 10..60000; default %(default)s)")
    metrics.add_argument(ap, 9461)
    tls_flags.add_arguments(ap)
    args = ap.parse_args(argv)
    if not 10 <= args.delta_period_ms <= 60000:
        ap.error(f"--delta-period-ms: 10..60000, got {args.delta_period_ms}")
    if not 10 <= args.rebalance_period_ms <= 60000:
        ap.error(f"--rebalance-period-ms: 10..60000, got {args.rebalance_period_ms}")
    tls_flags.resolve(ap, args, args.listen)
    metrics.check_flag(ap, args.metrics, args.identity)
    return args


async def register_until_stopped(args, node: Node, address: str, stop: asyncio.Event):
    await registered_until(
        stop, lambda: Store.connect(args.etcd_endpoints, timeout=3, identity=args.identity),
        lambda store: Registration(store, node.spec, node.stats, ttl=args.ttl,
                                   report_s=args.report_s, address=address).start(),
        f"node {node.spec.name}")


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    faulthandler.register(signal.SIGUSR2, all_threads=True)  # `kill -USR2`: where is it stuck?
    args = parse_args(argv)
    # usage is sampled (and its totals written) once per load report period
    node, code = start_from_files("serpens-agent", args.node, args.sfc, usage_s=args.report_s,
                                  usage_path=args.usage_file)
    if node is None:
        return code
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run

    async def run():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        # Calls wait in threads for the node (its lock, a build, a table copy): more of them
        # than the default min(32, CPUs + 4) so that a few slow SFCs' calls queue no other's.
        loop.set_default_executor(ThreadPoolExecutor(EXECUTOR_THREADS, "agent-call"))
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        # other nodes' agents are called with this agent's identity (role agent)
        rpc.set_client_identity(args.identity)
        peers = rpc.Stubs(serpens_pb2_grpc.PeerStub)
        receiver = Receiver(node.dataplane.config.state_dir)
        deltas = DeltaSender(node, args.delta_period_ms / 1000, peers)
        rebalancer = PoolRebalancer(node, lambda: deltas.peers, peers,
                                    args.rebalance_period_ms / 1000)
        try:
            server, port = await rpc.create_server(args.listen, [
                (serpens_pb2_grpc.add_AgentServicer_to_server,
                 AgentServicer(node, deltas, receiver, peers, rebalancer),
                 rpc.service_name("Agent")),
                (serpens_pb2_grpc.add_PeerServicer_to_server, PeerServicer(node, receiver),
                 rpc.service_name("Peer"))], args.identity,
                receive_limit=rpc.RECEIVE_LIMIT_AGENT)
        except OSError as e:
            log.error("--listen %s", e)
            return 1
        try:
            scraped = metrics.serve(args.metrics, NodeCollector(node), args.identity)
        except OSError as e:
            log.error("--metrics %s: %s", args.metrics, e)
            await server.stop(None)
            return 1
        if scraped is not None:
            start_latency(node)
        await server.start()
        address = rpc.advertised(args.listen, port, args.advertise)
        log.info("node %s: Agent service on %s", node.spec.name, address)
        # stock NFs compiled now, while nothing waits: the first SFC applied starts sooner
        loop.run_in_executor(None, warm_compile_cache)
        pushing = asyncio.create_task(deltas.run(stop))
        rebalancing = asyncio.create_task(rebalancer.run(stop))
        await register_until_stopped(args, node, address, stop)
        await pushing
        await rebalancing
        await server.stop(1.0)
        await peers.close()
        if scraped is not None:
            scraped.close()
        return 0

    try:
        return runner(run())
    finally:
        node.close()


def warm_compile_cache():
    from serpens import nfs
    from serpens.common.spec import STOCK_NFS
    from serpens.runtime_cy.builder import compile_nf
    for name in STOCK_NFS:
        try:
            compile_nf(nfs.source(name), name=name)
        except Exception as e:  # noqa: BLE001 - only a cache: the real build reports it
            log.warning("precompiling stock NF %s: %s", name, e)


if __name__ == "__main__":
    sys.exit(main())
