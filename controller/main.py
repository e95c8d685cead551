"""serpens-controller: serve the Serpens API (plus gRPC health and reflection) over etcd, and
reconcile the nodes with it while this replica leads (controller/reconciler.py).

    serpens-controller --etcd https://127.0.0.1:2379 --listen 0.0.0.0:50051 \
        --ca ca.crt --cert serpens-controller.crt --key serpens-controller.key
    serpens-controller --insecure --etcd http://127.0.0.1:2379 --listen 127.0.0.1:50051

Every replica serves the API (it only reads and writes etcd); one at a time leads and drives
the agents, and a standby takes over within the leader lease's TTL when it dies. Both read
one watch-fed copy of the prefix (controller/cache.py); the leader reconciles up to
--workers SFCs at once.

`create_server()` is kept apart from `serve()` so tests can bind port 0 in-process; SIGTERM
and SIGINT stop the server gracefully. Exit codes: 0 stopped, 1 etcd or the address failed,
2 bad usage. With --ca/--cert/--key (common/tls_flags.py) the API is mTLS with per-method
roles (common/auth.py), etcd is dialed over TLS and agents are called with the same
certificate, which must carry role `controller`.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass

import grpc

from serpens.common import metrics, rpc, tls_flags
from serpens.common.grpc_metrics import RequestMetrics
from serpens.common.keys import DEFAULT_PREFIX, Keys
from serpens.common.pki import Identity
from serpens.common.store import Store, StoreError
from serpens.controller.api import SerpensServicer
from serpens.controller.cache import Cache
from serpens.controller.metrics import ControllerCollector
from serpens.controller.reconciler import Reconciler
from serpens.controller.request_limits import RequestSizeLimit
from serpens.proto.serpens.v1 import serpens_pb2_grpc

log = logging.getLogger("serpens.controller")
SERVICE_NAME = rpc.service_name("Serpens")


@dataclass(frozen=True)
class Settings:
    etcd: tuple[str, ...] = ("127.0.0.1:2379",)
    listen: str = "127.0.0.1:50051"
    prefix: str = DEFAULT_PREFIX
    etcd_timeout: float = 5.0      # bounds every store call: a dead etcd is UNAVAILABLE by then
    grace: float = 5.0             # seconds in-flight calls get on shutdown
    name: str = ""                 # this replica in the election (default host:pid)
    leader_ttl: int = 2            # seconds a dead leader holds the lead
    resync_s: float = 2.0          # reconcile at least this often
    workers: int = 8               # SFCs reconciled at once
    run_timeout_s: float = 120.0   # deadline of an agent's RunSFC
    identity: Identity | None = None  # mTLS certificate (None: plain text on loopback)
    metrics: str = ""              # HOST:PORT of /metrics ("": none)


async def create_server(store: Store, listen: str, prefix: str = DEFAULT_PREFIX,
                        identity: Identity | None = None, cache: Cache | None = None,
                        requests: RequestMetrics | None = None) -> tuple[grpc.aio.Server, int]:
    """A not yet started server with Serpens, health (SERVING) and reflection; its port.
    Reads are served from `cache` (a started Cache of `prefix`; None: a new one); `requests`
    counts the calls (metrics)."""
    servicer = SerpensServicer(store, prefix, cache=cache or Cache(store, prefix).start())
    return await rpc.create_server(listen, [(serpens_pb2_grpc.add_SerpensServicer_to_server,
                                             servicer, SERVICE_NAME)], identity,
                                   interceptors=(RequestSizeLimit(SERVICE_NAME),),
                                   outer=(requests,) if requests else ())


async def serve(settings: Settings) -> int:
    rpc.set_client_identity(settings.identity)   # calls to agents present it
    try:
        store = await Store.connect(list(settings.etcd), timeout=settings.etcd_timeout,
                                    identity=settings.identity)
    except StoreError as e:
        log.error("etcd %s: %s", ",".join(settings.etcd), e)
        return 1
    async with store:
        cache = Cache(store, settings.prefix).start()
        requests = RequestMetrics()
        collector = ControllerCollector(requests, store)
        try:
            server, port = await create_server(store, settings.listen, settings.prefix,
                                               settings.identity, cache, requests)
            scraped = metrics.serve(settings.metrics, collector, settings.identity)
        except (OSError, RuntimeError) as e:
            log.error("%s", e)
            await cache.close()
            return 1
        await server.start()
        host = settings.listen.rpartition(":")[0]
        log.info("serving serpens.v1.Serpens on %s:%d (%s; etcd %s)", host, port,
                 "mTLS" if settings.identity else "plain text", ",".join(settings.etcd))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        name = settings.name or f"{socket.gethostname()}:{os.getpid()}"
        reconciler = Reconciler(store, cache, Keys(settings.prefix), name,
                                ttl=settings.leader_ttl, resync_s=settings.resync_s,
                                workers=settings.workers,
                                run_timeout=settings.run_timeout_s)
        collector.reconciler = reconciler
        await reconciler.run(stop)
        if scraped is not None:
            scraped.close()
        log.info("stopping (grace %.1fs)", settings.grace)
        await server.stop(settings.grace)
        await cache.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="serpens-controller", description=__doc__.splitlines()[0])
    ap.add_argument("--etcd", default="127.0.0.1:2379",
                    help="etcd endpoints, comma-separated; https:// with TLS, http:// with "
                         "--insecure (default %(default)s)")
    ap.add_argument("--listen", default="127.0.0.1:50051", help="gRPC address (default %(default)s)")
    ap.add_argument("--prefix", default=DEFAULT_PREFIX, help="etcd key prefix (default %(default)s)")
    ap.add_argument("--etcd-timeout", type=float, default=5.0,
                    help="seconds an etcd operation may take, retries included (default 5)")
    ap.add_argument("--identity", default="", help="name in the leader election (host:pid)")
    ap.add_argument("--leader-ttl", type=int, default=2,
                    help="seconds before a dead leader is replaced (default 2)")
    ap.add_argument("--resync-s", type=float, default=2.0,
                    help="reconcile every SFC and ask every agent at least this often "
                         "(default 2)")
    ap.add_argument("--workers", type=int, default=8,
                    help="SFCs reconciled at once, one at a time per SFC (default 8)")
    ap.add_argument("--run-timeout-s", type=float, default=120.0,
                    help="deadline of an agent's RunSFC (it compiles NFs); a node whose "
                         "call times out gets no new SFC for a while (default 120)")
    ap.add_argument("--log-level", default="INFO")
    metrics.add_argument(ap, 9451)
    tls_flags.add_arguments(ap)
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    identity = tls_flags.identity(ap, args)
    if identity is None and not rpc.is_loopback(args.listen):
        ap.error(f"--insecure: plain text is served only on loopback, not on {args.listen}")
    try:
        etcd = tuple(tls_flags.etcd_endpoint(u, identity is not None)
                     for u in args.etcd.split(",") if u)
    except argparse.ArgumentTypeError as e:
        ap.error(f"--etcd: {e}")
    metrics.check_flag(ap, args.metrics, identity)
    if not args.prefix.endswith("/"):
        ap.error("--prefix: must end with '/'")
    if args.workers < 1:
        ap.error("--workers: at least 1")
    if not args.run_timeout_s > 0:
        ap.error("--run-timeout-s: must be > 0")
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings(etcd=etcd, listen=args.listen, prefix=args.prefix,
                        etcd_timeout=args.etcd_timeout, name=args.identity,
                        leader_ttl=args.leader_ttl, resync_s=args.resync_s,
                        workers=args.workers, run_timeout_s=args.run_timeout_s,
                        identity=identity, metrics=args.metrics)
    try:
        import uvloop
        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
