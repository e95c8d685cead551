"""Prometheus metrics of serpens-agent, serpens-controller and serpens-gateway over HTTP(S)
(docs/observability.md).

    serpens-agent ... --metrics 0.0.0.0:9461      # https://HOST:9461/metrics

Each process serves one registry of its own (never prometheus_client's global one) holding
its component's collector: a Collector whose collect() reads the counters the component
already keeps (the router's and NFs' in shared memory, the reconciler's) when Prometheus
scrapes, so the packet path pays nothing for being observed.

Security follows the gRPC servers (common/rpc.py): with the process's identity the endpoint
is HTTPS and requires a client certificate signed by the cluster CA (any role: metrics are
read-only); without one (--insecure) it is plain HTTP and only on a loopback address.
"""
from __future__ import annotations

import argparse
import logging
import os
import socket
import ssl
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, disable_created_metrics, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from serpens.common.pki import Identity
from serpens.common.rpc import check_insecure

log = logging.getLogger(__name__)

SCRAPE_NICE = 19   # a scrape's thread yields its CPU to everything else (instances)


def add_argument(ap: argparse.ArgumentParser, default_port: int) -> None:
    ap.add_argument("--metrics", default="", metavar="HOST:PORT",
                    help="serve Prometheus metrics at https://HOST:PORT/metrics (plain http "
                         "with --insecure, loopback only); e.g. 0.0.0.0:%d. Default: off"
                    % default_port)


def split_listen(listen: str) -> tuple[str, int]:
    """"host:port" or "[v6]:port" -> (host, port); ValueError naming what is wrong."""
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{listen}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def check_flag(ap: argparse.ArgumentParser, listen: str, identity: Identity | None) -> None:
    """ap.error() for a --metrics `listen` the process cannot serve with `identity`."""
    if not listen:
        return
    try:
        split_listen(listen)
        if identity is None:
            check_insecure(listen)
    except (ValueError, OSError) as e:
        ap.error(f"--metrics: {e}")


class Yielding:
    """A collector whose scrapes are formatted at SCRAPE_NICE: prometheus_client serves each
    request on a thread of its own. The collector reads (taking the component's locks, e.g.
    the agent's router lock or the gateway servicer's) at the thread's normal priority, then
    the thread lowers its priority for the rest (formatting the text), so a scrape on a CPU
    an instance shares waits for the instance (at an equal priority the kernel hands it
    slices of several ms) and never holds a lock others wait on while it waits."""

    def __init__(self, collector):
        self.collector = collector

    def collect(self):
        families = list(self.collector.collect())
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), SCRAPE_NICE)
        except OSError:
            pass   # not allowed to: format at the priority it has
        return families


HANDSHAKE_S = 10.0  # a connection's TLS handshake and request, at most


def _tls_context(identity: Identity) -> ssl.SSLContext:
    """Server side, a client certificate of the cluster CA required, TLS 1.2 or newer."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(identity.cert, identity.key)
    ctx.load_verify_locations(identity.ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class _Server(ThreadingMixIn, WSGIServer):
    """prometheus_client's threading WSGI server, but a connection's TLS handshake happens on
    its own thread with a deadline: with the listening socket wrapped (start_http_server),
    accept() shook hands on the serving thread, and one connection that sent nothing stopped
    the endpoint."""
    daemon_threads = True
    tls: ssl.SSLContext | None = None

    def get_request(self):
        sock, addr = self.socket.accept()
        sock.settimeout(HANDSHAKE_S)
        if self.tls is not None:  # (shakes hands at the first read, on the request's thread)
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Quiet(WSGIRequestHandler):
    def log_message(self, format, *args):  # (a scrape a second: not for the log)
        pass


class MetricsServer:
    """The /metrics endpoint of one process, serving `collector` on its own thread."""

    def __init__(self, listen: str, collector, identity: Identity | None):
        """OSError if `listen` cannot be bound; InsecureRefused for plain text off
        loopback."""
        host, port = split_listen(listen)
        if identity is None:
            check_insecure(listen)
        disable_created_metrics()   # no *_created series: they double what is stored
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(Yielding(collector))
        self.server = make_server(host, port, make_wsgi_app(self.registry),
                                  _Server6 if ":" in host else _Server, handler_class=_Quiet)
        self.server.tls = None if identity is None else _tls_context(identity)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                       name="metrics")
        self.thread.start()
        self.port = self.server.server_port
        self.url = f"{'http' if identity is None else 'https'}://{listen.rpartition(':')[0]}:" \
                   f"{self.port}/metrics"
        log.info("metrics on %s", self.url)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def serve(listen: str, collector, identity: Identity | None) -> MetricsServer | None:
    """A MetricsServer when `listen` is given (None: metrics off)."""
    return MetricsServer(listen, collector, identity) if listen else None


# ---- helpers for collectors --------------------------------------------------------------

def counter(name: str, doc: str, labels: tuple[str, ...]) -> CounterMetricFamily:
    """A counter family; `name` without `_total` (prometheus_client adds it on exposition)."""
    return CounterMetricFamily(name, doc, labels=list(labels))


def gauge(name: str, doc: str, labels: tuple[str, ...]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))
