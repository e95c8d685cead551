"""gRPC requests as Prometheus metrics: a grpc.aio server interceptor counting each call by
method and status code and timing it by method (docs/observability.md). It runs outside
common/auth.py's interceptor (rpc.create_server's `outer`), so refusals are counted too.
Labels stay bounded: methods are the server's own (an unknown method never reaches a
handler), codes are gRPC's 17."""
from __future__ import annotations

import inspect
import time

import grpc
from prometheus_client import Counter, Histogram

# Unary calls take ~0.3 ms on loopback; RunSFC compiles NFs (seconds); Watch streams end
# when the caller goes (they land in +Inf).
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            10.0, 30.0, 120.0)


class RequestMetrics(grpc.aio.ServerInterceptor):
    def __init__(self):
        self.handled = Counter("serpens_grpc_server_handled", "gRPC calls served, by method "
                               "and status code", ["method", "code"], registry=None)
        self.seconds = Histogram("serpens_grpc_server_handling_seconds", "Time from a gRPC "
                                 "call's arrival to its status, by method", ["method"],
                                 buckets=_BUCKETS, registry=None)

    def collectors(self):
        return self.handled, self.seconds

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None:
            return None
        return self._timed(handler, details.method)

    def _done(self, method: str, started: float, context, error: BaseException | None):
        code = _code(context, error)
        self.handled.labels(method, code).inc()
        self.seconds.labels(method).observe(time.perf_counter() - started)

    def _timed(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        def wrap(behavior):
            if inspect.isasyncgenfunction(behavior):
                async def timed_stream(request, context):
                    started, error = time.perf_counter(), None
                    try:
                        async for reply in behavior(request, context):
                            yield reply
                    except BaseException as e:
                        error = e
                        raise
                    finally:
                        self._done(method, started, context, error)
                return timed_stream

            async def timed(request, context):
                started, error = time.perf_counter(), None
                try:
                    result = behavior(request, context)
                    return await result if inspect.isawaitable(result) else result
                except BaseException as e:
                    error = e
                    raise
                finally:
                    self._done(method, started, context, error)
            return timed

        kind, make = next((k, m) for k, m in (
            ("unary_unary", grpc.unary_unary_rpc_method_handler),
            ("unary_stream", grpc.unary_stream_rpc_method_handler),
            ("stream_unary", grpc.stream_unary_rpc_method_handler),
            ("stream_stream", grpc.stream_stream_rpc_method_handler)) if getattr(handler, k))
        return make(wrap(getattr(handler, kind)),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)


def _code(context, error: BaseException | None) -> str:
    """The call's status code name: what the servicer set or aborted with; OK when it
    returned without one; CANCELLED when the caller went away; UNKNOWN for an exception."""
    try:
        code = context.code()
    except (AttributeError, RuntimeError):
        code = None
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):   # some grpcio versions give the integer value
        for c in grpc.StatusCode:
            if c.value[0] == code:
                return c.name
    if error is None:
        return "OK"
    if isinstance(error, (GeneratorExit,)) or type(error).__name__ == "CancelledError":
        return "CANCELLED"
    return "UNKNOWN"
