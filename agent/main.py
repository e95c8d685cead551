"""serpens-agent: one server's agent (DESIGN §1): runs the node's data plane from its Node config
and SFC specs, registers the node in etcd with a lease and reports its load there.

    serpens-agent --node node.yaml --sfc fw-mon-nat.yaml --etcd 127.0.0.1:2379

etcd being away never holds up traffic: the data plane starts first, registration retries in
the background. SIGINT/SIGTERM deregister the node and stop everything the agent started.
Exit codes: 0 stopped on request, 1 failed, 2 bad config.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from serpens.common.store import Store, StoreError

from .node import Node, start_from_files
from .registration import Registration

log = logging.getLogger("serpens-agent")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="serpens-agent", description=__doc__.splitlines()[0])
    ap.add_argument("--node", required=True, help="Node config (YAML or JSON)")
    ap.add_argument("--sfc", action="append", default=[], help="an SFC spec; repeatable")
    ap.add_argument("--etcd", default="127.0.0.1:2379", help="etcd endpoints, comma-separated")
    ap.add_argument("--ttl", type=int, default=5, help="lease TTL of the node's record (s)")
    ap.add_argument("--report-s", type=float, default=1.0, help="load report period (s)")
    return ap.parse_args(argv)


async def register_until_stopped(args, node: Node, stop: asyncio.Event):
    endpoints = [e.strip().removeprefix("http://") for e in args.etcd.split(",")]
    reg = None
    while not stop.is_set():
        try:
            store = await Store.connect(endpoints, timeout=3)
            try:
                reg = await Registration(store, node.spec, node.stats, ttl=args.ttl,
                                         report_s=args.report_s).start()
                log.info("node %s registered in etcd (%s)", node.spec.name, args.etcd)
                await stop.wait()
                await reg.close()
            finally:
                await store.close()
        except StoreError as e:
            log.warning("etcd unavailable (%s); traffic goes on, retrying", e)
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except asyncio.TimeoutError:
                pass


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    node, code = start_from_files("serpens-agent", args.node, args.sfc)
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
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await register_until_stopped(args, node, stop)

    try:
        runner(run())
    finally:
        node.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
