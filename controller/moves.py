"""Moving an SFC's flows with their per-flow state from one server to another (issue 14
item 3, CONTRACT14 `move_flows`, docs/moves.md): loss-free and order-preserving in the manner
of OpenNF, and no other flow waits.

1. (a partial move) the source's agent checks that every per-flow table of the SFC is keyed
   by flow, before anything is held (Peer.MoveFlows check);
2. the gateway holds the moving flows' packets and sends the source a marker carrying an id
   (Gateway.HoldFlows answers the id) behind the last frame of them;
3. the source's agent waits until its router received that marker and it has none of their
   packets left, copies their per-flow entries to the target's agent and deletes them
   (Peer.MoveFlows);
4. the gateway re-pins them to the target and sends what it held first (Gateway.ReleaseFlows
   commit). On any failure or timeout before that, the hold is released to the source
   (nothing lost, nothing moved) and MoveError says why.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import grpc

from serpens.common import rpc
from serpens.proto.serpens.v1 import serpens_pb2 as pb
from serpens.proto.serpens.v1 import serpens_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

MAGLEV_SLOTS = 2039        # gateway.h SERPENS_GW_MAGLEV
HOLD_GRACE_S = 2.0         # the gateway's own expiry of a hold, past the move's timeout


@dataclass(frozen=True)
class Server:          # one side of a move
    node: str          # node name
    address: str       # its Agent/Peer gRPC host:port
    ip: str            # its underlay IPv4 address (the gateway's route server ip)


@dataclass
class MoveResult:
    flows: int         # flows the gateway re-pinned to the target
    entries: int       # per-flow table entries moved
    held: int          # packets held at the gateway during the move
    held_dropped: int  # held packets dropped because the hold was full (0 when healthy)
    move_ms: float     # HoldFlows requested -> ReleaseFlows done


class MoveError(Exception):
    """The move did not happen (its flows and state stayed on the source); says why."""


class StateMoved(MoveError):
    """The move failed after the flows' per-flow state left the source for the target (the
    gateway's commit failed: it did not re-pin them): those flows lost their state."""


def _why(e: BaseException) -> str:
    if isinstance(e, grpc.aio.AioRpcError):
        return f"{e.code().name}: {e.details()}"
    return str(e) or type(e).__name__


async def move_flows(gateway: str, sfc: str, source: Server, target: Server, *,
                     slots: list[int] | None = None, timeout: float = 5.0) -> MoveResult:
    """Move every flow of `sfc` the gateway pins to `source` (or those in Maglev `slots`) to
    `target` with their per-flow state (see the module's docstring)."""
    if source.node == target.node or source.ip == target.ip:
        raise MoveError(f"source and target are both {source.node} ({source.ip})")
    if slots is not None:
        slots = sorted(set(slots))
        if any(not 0 <= s < MAGLEV_SLOTS for s in slots):
            raise MoveError(f"slots: Maglev slots are 0..{MAGLEV_SLOTS - 1}")
        if not slots:
            return MoveResult(0, 0, 0, 0, 0.0)
    deadline = time.monotonic() + timeout

    def left() -> float:
        return max(0.05, deadline - time.monotonic())

    async with rpc.channel(gateway) as gw_ch, rpc.channel(source.address) as src_ch:
        gw, peer = pb_grpc.GatewayStub(gw_ch), pb_grpc.PeerStub(src_ch)
        try:
            if slots:
                await peer.MoveFlows(pb.MoveFlowsRequest(sfc=sfc, slots=slots, check=True),
                                     timeout=left())
        except (grpc.aio.AioRpcError, asyncio.TimeoutError) as e:
            raise MoveError(f"source {source.node}: {_why(e)}") from None
        start = time.monotonic()
        try:
            hold = await gw.HoldFlows(pb.HoldFlowsRequest(
                sfc=sfc, source_ip=source.ip, target_ip=target.ip, slots=slots or [],
                timeout_ms=int((left() + HOLD_GRACE_S) * 1000)), timeout=left())
        except (grpc.aio.AioRpcError, asyncio.TimeoutError) as e:
            raise MoveError(f"gateway {gateway}: {_why(e)}") from None
        try:
            moved = await peer.MoveFlows(pb.MoveFlowsRequest(
                sfc=sfc, target=pb.PeerRef(node=target.node, address=target.address),
                slots=slots or [], gateway_sfc=hold.gateway_sfc, marker=hold.marker,
                timeout_ms=int(left() * 1000)), timeout=left() + 0.5)
        except BaseException as e:   # cancelled too: the hold must not outlive the caller
            await _abort(gw, hold.move_id, sfc, source)
            if isinstance(e, (grpc.aio.AioRpcError, asyncio.TimeoutError)):
                raise MoveError(f"source {source.node}: {_why(e)}; the flows stay there") \
                    from None
            raise
        try:
            released = await gw.ReleaseFlows(pb.ReleaseFlowsRequest(
                move_id=hold.move_id, commit=True), timeout=max(left(), 5.0))
        except (grpc.aio.AioRpcError, asyncio.TimeoutError) as e:
            raise StateMoved(f"gateway {gateway}: commit failed ({_why(e)}); the flows' "
                             f"state is on {target.node} already") from None
    result = MoveResult(flows=released.flows, entries=moved.entries, held=released.held,
                        held_dropped=released.held_dropped,
                        move_ms=(time.monotonic() - start) * 1000)
    log.info("sfc %s: moved %d flows (%d entries) %s -> %s in %.1f ms, %d packets held",
             sfc, result.flows, result.entries, source.node, target.node, result.move_ms,
             result.held)
    return result


async def _abort(gw, move_id: int, sfc: str, source: Server):
    try:
        await asyncio.shield(gw.ReleaseFlows(pb.ReleaseFlowsRequest(move_id=move_id,
                                                                    commit=False), timeout=5))
    except (grpc.aio.AioRpcError, asyncio.TimeoutError) as e:   # its own expiry releases it
        log.warning("sfc %s: releasing the hold on %s's flows: %s", sfc, source.node, _why(e))
