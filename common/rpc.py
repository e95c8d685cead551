"""gRPC servers and channels as every Serpens process uses them.

A server carries its services plus gRPC health (SERVING for "" and each service) and
reflection, so `grpcurl HOST:PORT list` shows what it serves.
"""
from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from serpens.proto.serpens.v1 import serpens_pb2

# State snapshots carry whole tables (zlib-compressed); gRPC's default 4 MiB is too little.
MAX_MESSAGE = 256 << 20
MESSAGE_OPTIONS = [("grpc.max_send_message_length", MAX_MESSAGE),
                   ("grpc.max_receive_message_length", MAX_MESSAGE)]

HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


def service_name(short: str) -> str:
    """"Serpens" -> "serpens.v1.Serpens"."""
    return serpens_pb2.DESCRIPTOR.services_by_name[short].full_name


async def create_server(listen: str, services: list,
                        interceptors: tuple = ()) -> tuple[grpc.aio.Server, int]:
    """A not yet started server; `services` are (add_XServicer_to_server, servicer, name).
    Returns it and the port bound (OSError if `listen` cannot be bound)."""
    server = grpc.aio.server(options=MESSAGE_OPTIONS, interceptors=interceptors)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [name for _, _, name in services]
    for add, servicer, _ in services:
        add(servicer, server)
    for name in ["", *names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((*names, HEALTH, reflection.SERVICE_NAME), server)
    try:
        port = server.add_insecure_port(listen)
    except RuntimeError as e:
        raise OSError(f"{listen}: cannot bind ({e})") from None
    if port == 0:
        raise OSError(f"{listen}: cannot bind")
    return server, port


def channel(address: str) -> grpc.aio.Channel:
    """A channel that fails fast when the peer is down (callers give deadlines and retry)."""
    return grpc.aio.insecure_channel(address, options=[
        ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 1000),
        ("grpc.enable_retries", 0), *MESSAGE_OPTIONS])
