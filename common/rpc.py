"""gRPC servers and channels as every Serpens process uses them.

A server carries its services plus gRPC health (SERVING for "" and each service) and
reflection, so `grpcurl HOST:PORT list` shows what it serves.

Security: given an `Identity` (common/pki.py) a server speaks TLS with that certificate,
asks callers for a client certificate signed by the same CA and checks every call with
common/auth.py's interceptor. Without one it speaks plain text, and only on a loopback address
(the processes' `--insecure` flag): anyone who can reach it may call anything, so nobody but
this machine may reach it. Channels likewise: with an identity, TLS with that client
certificate; `set_client_identity` gives the process's default (the controller calling agents).
"""
from __future__ import annotations

import asyncio
import ipaddress
import socket

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from serpens.common import bulk
from serpens.common.auth import AuthInterceptor
from serpens.common.pki import Identity
from serpens.proto.serpens.v1 import serpens_pb2

# Answers may be large: a state snapshot carries whole tables (zlib-compressed), and so does
# a bulk request once assembled (common/bulk.py); a client takes what the server it called
# sends, up to this.
MAX_MESSAGE = bulk.MAX_MESSAGE
MESSAGE_OPTIONS = [("grpc.max_send_message_length", MAX_MESSAGE),
                   ("grpc.max_receive_message_length", MAX_MESSAGE)]
# A server reads a request message whole before it knows who calls (the role check runs in
# the servicer's wrapper), so it takes small ones only: large requests come in pieces
# (common/bulk.py). 4 MiB, gRPC's default, is over every other request of the Serpens and
# Gateway services (DeployNF's source: 1 MiB); the agents' (RECEIVE_LIMIT_AGENT) holds a
# RunSFC with the sources of every deployed NF of its chain (LIMITS.chain_source_bytes).
RECEIVE_LIMIT = 4 << 20
RECEIVE_LIMIT_AGENT = 16 << 20


def server_options(receive_limit: int) -> list[tuple[str, int]]:
    return [("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.max_receive_message_length", receive_limit)]

HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


def service_name(short: str) -> str:
    """"Serpens" -> "serpens.v1.Serpens"."""
    return serpens_pb2.DESCRIPTOR.services_by_name[short].full_name


def advertised(listen: str, port: int, advertise: str = "") -> str:
    """The address peers call a server listening on `listen` (bound to `port`) at:
    `advertise` if given, else the listen host, or this host's name for all addresses."""
    if advertise:
        return advertise
    host = listen.rpartition(":")[0]
    if host in ("", "0.0.0.0", "[::]"):
        host = socket.gethostname()
    return f"{host}:{port}"


class InsecureRefused(OSError):
    """Plain text was asked for on an address other machines can reach."""


def is_loopback(address: str) -> bool:
    """host:port (or [v6]:port) names only this machine: 127.0.0.0/8, ::1 or localhost."""
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_insecure(listen: str) -> None:
    if not is_loopback(listen):
        raise InsecureRefused(
            f"{listen}: plain text (--insecure) is served only on a loopback address "
            "(127.0.0.1, ::1, localhost); give --ca/--cert/--key to listen elsewhere")


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def server_credentials(identity: Identity) -> grpc.ServerCredentials:
    # A client certificate of the cluster CA is required in the handshake. grpcio offers no
    # "request but do not require" mode (its flag maps to DONT_REQUEST or REQUIRE_AND_VERIFY),
    # so a caller without one is refused before any RPC: it sees UNAVAILABLE (the handshake
    # fails), never a servicer. Callers with a certificate get UNAUTHENTICATED or
    # PERMISSION_DENIED from common/auth.py.
    return grpc.ssl_server_credentials([(_read(identity.key), _read(identity.cert))],
                                       root_certificates=_read(identity.ca),
                                       require_client_auth=True)


def channel_credentials(identity: Identity) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(_read(identity.ca), _read(identity.key),
                                        _read(identity.cert))


async def create_server(listen: str, services: list, identity: Identity | None = None,
                        interceptors: tuple = (), outer: tuple = (),
                        receive_limit: int = RECEIVE_LIMIT) -> tuple[grpc.aio.Server, int]:
    """A not yet started server; `services` are (add_XServicer_to_server, servicer, name);
    `interceptors` run after authorization, `outer` before it (metrics: refusals count too).
    Returns it and the port bound (OSError if
    `listen` cannot be bound, InsecureRefused if `identity` is None and `listen` is not
    loopback)."""
    if identity is None:
        check_insecure(listen)
        server = grpc.aio.server(options=server_options(receive_limit),
                                 interceptors=[*outer, *interceptors])
    else:
        server = grpc.aio.server(options=server_options(receive_limit),
                                 interceptors=[*outer, AuthInterceptor(), *interceptors])
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [name for _, _, name in services]
    for add, servicer, _ in services:
        add(servicer, server)
    for name in ["", *names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((*names, HEALTH, reflection.SERVICE_NAME), server)
    try:
        port = server.add_insecure_port(listen) if identity is None else \
            server.add_secure_port(listen, server_credentials(identity))
    except RuntimeError as e:
        raise OSError(f"{listen}: cannot bind ({e})") from None
    if port == 0:
        raise OSError(f"{listen}: cannot bind")
    return server, port


_client_identity: Identity | None = None


def set_client_identity(identity: Identity | None) -> None:
    """The identity `channel()` presents by default in this process (None: plain text)."""
    global _client_identity
    _client_identity = identity


def channel(address: str, identity: Identity | None = None) -> grpc.aio.Channel:
    """A channel that fails fast when the peer is down (callers give deadlines and retry);
    TLS with `identity` (default: the process's, see set_client_identity)."""
    identity = identity or _client_identity
    options = [("grpc.initial_reconnect_backoff_ms", 100),
               ("grpc.max_reconnect_backoff_ms", 1000), ("grpc.enable_retries", 0),
               *MESSAGE_OPTIONS]
    if identity is None:
        return grpc.aio.insecure_channel(address, options=options)
    return grpc.aio.secure_channel(address, channel_credentials(identity), options=options)


class Stubs:
    """One channel per address, kept open, and a stub of `stub_class` on it (e.g. the
    controller's AgentStub per agent): `stubs[address].RunSFC(...)`; close() ends them."""

    def __init__(self, stub_class):
        self._stub_class = stub_class
        self._open: dict[str, tuple[grpc.aio.Channel, object]] = {}
        self._closing: set[asyncio.Task] = set()

    def __getitem__(self, address: str):
        if address not in self._open:
            ch = channel(address)
            self._open[address] = (ch, self._stub_class(ch))
        return self._open[address][1]

    def drop(self, address: str) -> None:
        """Close the channel to `address` (a peer that left), cancelling its calls in flight
        (their callers see asyncio.CancelledError); a later stubs[address] opens a new one."""
        opened = self._open.pop(address, None)
        if opened is not None:
            task = asyncio.get_running_loop().create_task(opened[0].close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        opened, self._open = self._open, {}
        for ch, _ in opened.values():
            await ch.close()
        await asyncio.gather(*self._closing, return_exceptions=True)
