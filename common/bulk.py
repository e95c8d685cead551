"""Bulk requests in pieces: a request that may be large (RestoreState's snapshot, ReturnState's
pools) travels as a stream of BulkChunks, each a piece of the serialized message.

Why: gRPC reads a whole request message into memory before any servicer code, the caller's
role check included, runs; a server that took 256 MiB messages would hold that much for any
certificate of the cluster CA, a viewer's included, per call. So every server takes small
messages only (common/rpc.py RECEIVE_LIMIT), and a bulk method reads its pieces one at a time,
after the caller was authorized (a stream's messages are read as the servicer asks for them),
up to MAX_MESSAGE in all.
"""
from __future__ import annotations

from typing import AsyncIterable, Iterator, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from serpens.proto.serpens.v1 import serpens_pb2 as pb

CHUNK_BYTES = 1 << 20            # of the serialized request in one BulkChunk
MAX_MESSAGE = 256 << 20          # a whole bulk request (state tables, zlib-compressed)

M = TypeVar("M", bound=Message)


def pieces(request: Message | bytes, chunk: int = CHUNK_BYTES) -> Iterator[pb.BulkChunk]:
    """`request` (a message, or one serialized) as the BulkChunks a bulk method takes (one,
    empty, for an empty message: a call always carries its request)."""
    data = request if isinstance(request, bytes) else request.SerializeToString()
    view = memoryview(data)
    for at in range(0, max(1, len(data)), chunk):
        yield pb.BulkChunk(data=bytes(view[at:at + chunk]))


async def received(chunks: AsyncIterable[pb.BulkChunk], context,
                   limit: int = MAX_MESSAGE) -> bytes:
    """The serialized request a bulk call's pieces make; the call is aborted with
    INVALID_ARGUMENT once they come to more than `limit` bytes (read no further)."""
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk.data)
        if size > limit:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"request: at most {limit} bytes, got more")
        parts.append(chunk.data)
    data = b"".join(parts)
    parts.clear()   # (the pieces go before the message is parsed: twice the size, not 3x)
    return data


async def parsed(data: bytes, message_type: type[M], context) -> M:
    """`data` as a `message_type`; INVALID_ARGUMENT if it is not one."""
    try:
        return message_type.FromString(data)
    except DecodeError as e:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"request: not a {message_type.DESCRIPTOR.name} ({e})")


async def assembled(chunks: AsyncIterable[pb.BulkChunk], message_type: type[M], context,
                    limit: int = MAX_MESSAGE) -> M:
    """The request a bulk call's pieces make (received, then parsed)."""
    return await parsed(await received(chunks, context, limit), message_type, context)
