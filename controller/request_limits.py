"""Request sizes of the Serpens API, checked before a request is deserialized (issue 11 §5).

The transport admits messages up to common/rpc.py RECEIVE_LIMIT (4 MiB; RestoreState's state
tables come in pieces, common/bulk.py); gRPC has no per-method receive limit on the server
side. This interceptor gives every method its own, smaller one: it wraps the
method's request deserializer, so an oversized request is never turned into a protobuf
message (nor its spec into Python objects), and answers INVALID_ARGUMENT naming the field
that makes it large (`spec`, `source`; else `request`).
"""
from __future__ import annotations

import grpc

from serpens.common.limits import LIMITS, InputLimits


def method_limits(limits: InputLimits = LIMITS) -> dict[str, int]:
    """Serpens method name -> the largest serialized request it accepts (others: default)."""
    return {"DeployNF": limits.deploy_request_bytes}


# The field that makes a request of these methods large, named in the refusal.
_BULK_FIELD = {"ApplySFC": "spec", "DeployNF": "source"}


class _TooLarge:
    def __init__(self, size: int):
        self.size = size


class RequestSizeLimit(grpc.aio.ServerInterceptor):
    def __init__(self, service: str, limits: InputLimits = LIMITS):
        self._prefix = f"/{service}/"
        self._limits, self._default = method_limits(limits), limits.request_bytes

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(self._prefix) \
                or handler.request_streaming or handler.request_deserializer is None:
            return handler
        name = method[len(self._prefix):]
        limit = self._limits.get(name, self._default)
        field = _BULK_FIELD.get(name, "request")
        deserialize = handler.request_deserializer

        def bounded_deserialize(raw: bytes):
            return _TooLarge(len(raw)) if len(raw) > limit else deserialize(raw)

        def refuse(size: int, context):
            return context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                 f"{field}: a request of at most {limit} bytes, got {size}")

        if handler.unary_unary is not None:
            async def unary(request, context):
                if isinstance(request, _TooLarge):
                    await refuse(request.size, context)
                return await handler.unary_unary(request, context)
            return grpc.unary_unary_rpc_method_handler(
                unary, request_deserializer=bounded_deserialize,
                response_serializer=handler.response_serializer)

        async def stream(request, context):  # unary request, stream response (Watch)
            if isinstance(request, _TooLarge):
                await refuse(request.size, context)
            async for reply in handler.unary_stream(request, context):
                yield reply
        return grpc.unary_stream_rpc_method_handler(
            stream, request_deserializer=bounded_deserialize,
            response_serializer=handler.response_serializer)
