"""Who may call what: a grpc.aio server interceptor checking each call against METHOD_ROLES.

Servers speak mTLS (common/rpc.py): a caller without a certificate of the cluster CA is
refused in the TLS handshake (grpcio cannot ask for a client certificate without requiring
it), so it never reaches a servicer and sees UNAVAILABLE. A caller with one gets a status from
here: UNAUTHENTICATED when its certificate names no identity (no CN or no role), or
PERMISSION_DENIED when its role may not call the method. The identity is the certificate's
subject: CN the name, O the role (common/pki.py); gRPC has verified the chain against the CA.

Roles of the Serpens API nest: `viewer` < `operator` < `admin`; a method's row names the least
role that may call it. The Agent service's methods require exactly `controller`. gRPC health
and reflection are open to any authenticated peer (`ANY`), so probes and `grpcurl list` work
with any cluster certificate but never without one.

Adding an RPC means adding its row here; a method without a row is refused (default deny),
and tests/test_auth.py fails until every method of the proto has one.
"""
from __future__ import annotations

import functools
import inspect
import logging
from typing import NamedTuple

import grpc

from serpens.common.pki import subject

log = logging.getLogger(__name__)

VIEWER, OPERATOR, ADMIN, CONTROLLER, ANY = "viewer", "operator", "admin", "controller", "any"
AGENT = "agent"
PEER = "peer"   # another node's agent, or the controller (the Peer service between agents)
_RANK = {VIEWER: 1, OPERATOR: 2, ADMIN: 3}

METHOD_ROLES: dict[str, str] = {
    # serpens.v1.Serpens: users (serpensctl)
    "/serpens.v1.Serpens/GetNF": VIEWER,
    "/serpens.v1.Serpens/ListNFs": VIEWER,
    "/serpens.v1.Serpens/GetSFC": VIEWER,
    "/serpens.v1.Serpens/ListSFCs": VIEWER,
    "/serpens.v1.Serpens/ListNodes": VIEWER,
    "/serpens.v1.Serpens/ListGateways": VIEWER,
    "/serpens.v1.Serpens/ReadState": VIEWER,
    "/serpens.v1.Serpens/Watch": VIEWER,
    "/serpens.v1.Serpens/GetUsage": VIEWER,
    "/serpens.v1.Serpens/ApplySFC": OPERATOR,
    "/serpens.v1.Serpens/DeleteSFC": OPERATOR,
    "/serpens.v1.Serpens/Scale": OPERATOR,
    "/serpens.v1.Serpens/SnapshotState": OPERATOR,
    "/serpens.v1.Serpens/RestoreState": OPERATOR,
    "/serpens.v1.Serpens/ResetState": OPERATOR,
    "/serpens.v1.Serpens/Capture": OPERATOR,
    "/serpens.v1.Serpens/DrainNode": OPERATOR,
    "/serpens.v1.Serpens/UndrainNode": OPERATOR,
    "/serpens.v1.Serpens/MoveSFC": OPERATOR,
    "/serpens.v1.Serpens/DeployNF": ADMIN,
    "/serpens.v1.Serpens/DeleteNF": ADMIN,
    # serpens.v1.Agent: only the controller drives agents
    "/serpens.v1.Agent/RunSFC": CONTROLLER,
    "/serpens.v1.Agent/StopSFC": CONTROLLER,
    "/serpens.v1.Agent/ScaleSFC": CONTROLLER,
    "/serpens.v1.Agent/GetNode": CONTROLLER,
    "/serpens.v1.Agent/ReadState": CONTROLLER,
    "/serpens.v1.Agent/MergeState": CONTROLLER,
    "/serpens.v1.Agent/SnapshotState": CONTROLLER,
    "/serpens.v1.Agent/RestoreState": CONTROLLER,
    "/serpens.v1.Agent/ResetState": CONTROLLER,
    "/serpens.v1.Agent/GetUsage": CONTROLLER,
    "/serpens.v1.Agent/Capture": CONTROLLER,
    # serpens.v1.Peer: agents of other nodes (and the controller); each method a row: PEER
    "/serpens.v1.Peer/PutCheckpoint": PEER,
    "/serpens.v1.Peer/GetCheckpoint": PEER,
    "/serpens.v1.Peer/Seed": PEER,
    "/serpens.v1.Peer/ReturnState": PEER,
    "/serpens.v1.Peer/PushDeltas": PEER,
    "/serpens.v1.Peer/MoveFlows": PEER,
    "/serpens.v1.Peer/ImportFlows": PEER,
    "/serpens.v1.Peer/SharePool": PEER,
    # serpens.v1.Gateway: only the controller pushes routes and reads counters
    "/serpens.v1.Gateway/SetRoutes": CONTROLLER,
    "/serpens.v1.Gateway/GetGateway": CONTROLLER,
    "/serpens.v1.Gateway/HoldFlows": CONTROLLER,
    "/serpens.v1.Gateway/ReleaseFlows": CONTROLLER,
    # health and reflection: any authenticated peer
    "/grpc.health.v1.Health/Check": ANY,
    "/grpc.health.v1.Health/Watch": ANY,
    "/grpc.health.v1.Health/List": ANY,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": ANY,
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": ANY,
}


class Peer(NamedTuple):
    name: str     # certificate CN
    role: str     # certificate O


def allowed(role: str, required: str) -> bool:
    if required == ANY:
        return True
    if required == PEER:
        return role in (AGENT, CONTROLLER)
    if required == CONTROLLER:
        return role == CONTROLLER
    return _RANK.get(role, 0) >= _RANK[required]


@functools.lru_cache(maxsize=256)
def _peer_of(cert_pem: bytes) -> Peer:
    return Peer(*subject(cert_pem))


def peer(context) -> Peer | None:
    """The verified client certificate's identity, or None when the caller sent none."""
    pems = context.auth_context().get("x509_pem_cert")
    return _peer_of(pems[0]) if pems else None


def refusal(method: str, context) -> tuple[grpc.StatusCode, str] | None:
    """Why `method` is refused to this caller, or None when it may call it."""
    who = peer(context)
    if who is None or not who.name or not who.role:
        return grpc.StatusCode.UNAUTHENTICATED, \
            f"{method}: a client certificate of the cluster CA naming a user (CN) and a " \
            "role (O) is required"
    required = METHOD_ROLES.get(method)
    if required is None:
        return grpc.StatusCode.PERMISSION_DENIED, \
            f"{method}: not in the authorization table (common/auth.py), refused to everyone"
    if not allowed(who.role, required):
        need = {CONTROLLER: "the controller's identity",
                PEER: "an agent's or the controller's identity"}.get(required,
                                                                     f"role {required}")
        return grpc.StatusCode.PERMISSION_DENIED, \
            f"{method}: {who.name} has role {who.role or '(none)'}; needs {need}"
    return None


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every method handler with the check above, run before the servicer sees the call."""

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None:
            return None
        return _guarded(handler, details.method)


def _guarded(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    async def check(context):
        why = refusal(method, context)
        if why is not None:
            log.info("refused %s to %s: %s", method, context.peer(), why[1])
            await context.abort(*why)

    def wrap(behavior):
        if inspect.isasyncgenfunction(behavior):
            async def guarded_stream(request, context):
                await check(context)
                async for reply in behavior(request, context):
                    yield reply
            return guarded_stream

        async def guarded(request, context):
            await check(context)
            result = behavior(request, context)
            return await result if inspect.isawaitable(result) else result
        return guarded

    kind, make = next((k, m) for k, m in (
        ("unary_unary", grpc.unary_unary_rpc_method_handler),
        ("unary_stream", grpc.unary_stream_rpc_method_handler),
        ("stream_unary", grpc.stream_unary_rpc_method_handler),
        ("stream_stream", grpc.stream_stream_rpc_method_handler)) if getattr(handler, k))
    return make(wrap(getattr(handler, kind)), request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
