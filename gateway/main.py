"""serpens-gateway: the gateway (DESIGN §1, §7): runs its packet loop from its Gateway config,
serves the Gateway gRPC service the controller's leader pushes routes with, and registers
itself in etcd under a lease (its record carries the service's address, its underlay address
and MAC, its ingress port names and the term of the routes it applied).

    serpens-gateway --config gw.yaml --etcd https://10.0.0.1:2379 --listen 0.0.0.0:50071 \\
        --ca ca.crt --cert gw1.crt --key gw1.key
    serpens-gateway --insecure --config gw.yaml --etcd 127.0.0.1:2379 --listen 127.0.0.1:50071

The packet loop starts before anything else and etcd or the controller being away never
holds it up: registration retries in the background, and the routes in effect stay until the
leader pushes others (a restarted gateway starts with none and gets them within a push of
its registration). SIGINT/SIGTERM deregister and stop everything.
With --ca/--cert/--key the Gateway service is mTLS and answers only the controller's
identity (common/auth.py); the same certificate authenticates the gateway to etcd.
Exit codes: 0 stopped on request, 1 failed, 2 bad config.
"""
from __future__ import annotations

import argparse
import asyncio
import faulthandler
import logging
import os
import signal
import sys
import time

from serpens.common import metrics, rpc, tls_flags
from serpens.common.keys import DEFAULT_PREFIX, Keys
from serpens.common.lease_record import LeasedRecord, registered_until
from serpens.common.names import gateway_file_prefix
from serpens.common.port_devices import explain
from serpens.common.records import GatewayRecord, Underlay
from serpens.common.spec import SpecError
from serpens.common.store import Store
from serpens.proto.serpens.v1 import serpens_pb2_grpc
from serpens.runtime_cy import _dataplane as dp
from serpens.runtime_cy.primary import Dataplane, DataplaneConfig

from .config import GatewayConfig, load_gateway
from .metrics import GatewayCollector
from .routes import GatewayRoutes
from .service import GatewayServicer

log = logging.getLogger("serpens-gateway")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="serpens-gateway", description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="Gateway config (YAML or JSON)")
    ap.add_argument("--etcd", default="127.0.0.1:2379", help="etcd endpoints, comma-separated")
    ap.add_argument("--prefix", default=DEFAULT_PREFIX,
                    help="etcd key prefix (default %(default)s)")
    ap.add_argument("--ttl", type=int, default=5, help="lease TTL of the gateway's record (s)")
    ap.add_argument("--report-s", type=float, default=1.0, help="record refresh period (s)")
    ap.add_argument("--listen", default="127.0.0.1:50071",
                    help="address of the Gateway gRPC service (default %(default)s)")
    ap.add_argument("--advertise", default="",
                    help="address the controller calls (default: --listen, or this host's "
                         "name and the port bound when listening on all addresses)")
    metrics.add_argument(ap, 9471)
    tls_flags.add_arguments(ap)
    args = ap.parse_args(argv)
    if not args.prefix.endswith("/"):
        ap.error("--prefix: must end with '/'")
    if args.ttl < 1 or args.report_s <= 0 or args.report_s >= args.ttl:
        ap.error("--ttl, --report-s: a TTL of 1 s or more, refreshed more often than it")
    tls_flags.resolve(ap, args, args.listen)
    metrics.check_flag(ap, args.metrics, args.identity)
    return args


class DataPath:
    """The gateway's DPDK primary, its ports and packet loop (on its own lcore); close()
    stops and releases them."""

    def __init__(self, config: GatewayConfig):
        self.config = config
        self.ports: dict[str, int] = {}
        self.gateway = None
        self.dataplane = Dataplane(DataplaneConfig(
            file_prefix=gateway_file_prefix(config.name, os.getpid()), program="serpens-gateway",
            vdevs=tuple(config.ports.values()), cpus=config.cpus,
            router_cpus=str(config.gateway_cpu),
            mbufs=65535)).start()  # room for moves' holds (gateway.h SERPENS_GW_HOLD) too
        try:
            for name in config.ports:
                try:
                    self.ports[name] = dp.port_open(config.device_name(name),
                                                    self.dataplane.mempool)
                except OSError as e:
                    raise SpecError(f"spec.ports.{name}",
                                    explain(config.ports[name], str(e))) from None
            u = config.underlay
            self.mac = dp.port_mac(self.ports[u.port])
            self.gateway = dp.Gateway([self.ports[p] for p in config.ingress],
                                      self.ports[u.port], self.ports[config.egress], u.ip,
                                      self.mac, mtu=u.mtu, idle_s=config.idle_s,
                                      stall_us=config.stall_us)
            self.gateway.release_factor = config.release_factor
            for name, pps in config.pace.items():
                self.gateway.pace(self.ports[name], pps)
            self.gateway.set_mempool(self.dataplane.mempool)  # moves' markers
            self.gateway.launch(self.dataplane.config.router_lcore)
        except BaseException:
            self.close()
            raise

    def close(self):
        if self.gateway is not None:
            self.gateway.stop()
        for port in self.ports.values():
            dp.port_close(port)
        self.ports = {}
        self.dataplane.close()


def record(config: GatewayConfig, address: str, mac: str, servicer: GatewayServicer) -> str:
    u = config.underlay
    return GatewayRecord(name=config.name, address=address,
                         underlay=Underlay(ip=u.ip, mac=mac, mtu=u.mtu),
                         ingress=config.ingress, term=servicer.term,
                         reported_at=time.time()).encode()


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    faulthandler.register(signal.SIGUSR2, all_threads=True)  # `kill -USR2`: where is it stuck?
    args = parse_args(argv)
    try:
        config = load_gateway(args.config)
    except (OSError, SpecError) as e:
        log.error("%s: %s", args.config, e)
        return 2
    try:
        path = DataPath(config)
    except SpecError as e:
        log.error("%s: %s", args.config, e)
        return 2
    except (OSError, RuntimeError, ValueError) as e:
        log.error("gateway %s: data path: %s", config.name, e)
        return 1
    log.info("gateway %s: packet loop on CPU %d, underlay %s (%s) on port %s",
             config.name, config.gateway_cpu, config.underlay.ip, path.mac,
             config.underlay.port)
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
        kept: list[LeasedRecord] = []
        servicer = GatewayServicer(
            config.name, GatewayRoutes(path.gateway, {p: path.ports[p] for p in config.ingress},
                                       config.underlay.ip),
            {port: name for name, port in path.ports.items()},
            on_applied=lambda: [k.refresh() for k in kept])
        try:
            server, port = await rpc.create_server(args.listen, [
                (serpens_pb2_grpc.add_GatewayServicer_to_server, servicer,
                 rpc.service_name("Gateway"))], args.identity)
        except OSError as e:
            log.error("--listen %s", e)
            return 1
        try:
            scraped = metrics.serve(args.metrics, GatewayCollector(config.name, servicer,
                                                                   path.ports), args.identity)
        except OSError as e:
            log.error("--metrics %s: %s", args.metrics, e)
            await server.stop(None)
            return 1
        await server.start()
        address = rpc.advertised(args.listen, port, args.advertise)
        log.info("gateway %s: Gateway service on %s", config.name, address)
        keys = Keys(args.prefix)

        async def register(store):
            kept[:] = [await LeasedRecord(
                store, keys.gateway(config.name),
                lambda: record(config, address, path.mac, servicer), ttl=args.ttl,
                period=args.report_s, what=f"gateway {config.name}").start()]
            return kept[0]

        await registered_until(
            stop, lambda: Store.connect(args.etcd_endpoints, timeout=3,
                                        identity=args.identity),
            register, f"gateway {config.name}")
        kept.clear()
        await server.stop(1.0)
        if scraped is not None:
            scraped.close()
        return 0

    try:
        return runner(run())
    finally:
        path.close()


if __name__ == "__main__":
    sys.exit(main())
