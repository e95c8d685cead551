"""Moving an SFC's flows with their per-flow state from one server to another (issue 14
item 3, CONTRACT14 `move_flows`, docs/moves.md): loss-free and order-preserving in the manner
of OpenNF, and no other flow waits.

1. (a partial move) the source's agent checks that every per-flow table of the SFC is keyed
   by flow (or SERPENS_FLOW_VALUE), before anything is held (Peer.MoveFlows check); when they
   all are, the source reads its tables' keys once (Peer.MoveFlows prepare) and steps 2-4 run
   in waves of WAVE_SLOTS Maglev slots (then, for all flows, one last wave for the rest), so
   that a flow waits only for its own wave's entries to be copied, not for everyone's;
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
# Maglev slots per wave (docs/moves.md "Waves"): a flow waits for its own wave's copy only.
# 32 waves of the gateway's 2039 slots (and one for the rest): with 5k flows moving at 1 Mpps
# a wave holds ~160 flows for ~2 ms here, most of it the wave's fixed cost (marker, quiet
# source, calls); 128 slots held twice the packets for as long, 32 doubled the move's time.
WAVE_SLOTS = 64


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
    waves: int = 1     # holds made one after another (WAVE_SLOTS)


class MoveError(Exception):
    """The move did not happen (its flows and state stayed on the source), or, in a move in
    waves, the waves before the one that failed did (the message says how many flows moved
    to the target); says why."""


class StateMoved(MoveError):
    """The move failed after the flows' per-flow state left the source for the target (the
    gateway's commit failed: it did not re-pin them): those flows lost their state."""


def _why(e: BaseException) -> str:
    if isinstance(e, grpc.aio.AioRpcError):
        return f"{e.code().name}: {e.details()}"
    return str(e) or type(e).__name__


def waves(slots: list[int] | None, size: int) -> list[list[int] | None]:
    """A move's waves, each held and copied on its own: `slots` (or, for every flow of the
    source, all of the gateway's slots and then a last wave for what is left, None) `size`
    at a time (size <= 0: one wave)."""
    if size <= 0:
        return [slots]
    every = slots is None
    slots = list(range(MAGLEV_SLOTS)) if every else sorted(set(slots))
    out: list[list[int] | None] = [slots[i:i + size] for i in range(0, len(slots), size)]
    return out + [None] if every else out


async def move_flows(gateway: str, sfc: str, source: Server, target: Server, *,
                     slots: list[int] | None = None, timeout: float = 5.0,
                     wave_slots: int = WAVE_SLOTS) -> MoveResult:
    """Move every flow of `sfc` the gateway pins to `source` (or those in Maglev `slots`) to
    `target` with their per-flow state (see the module's docstring), in waves of
    `wave_slots` slots when every per-flow table of the SFC can be taken by slot (0: one
    hold for all)."""
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
            plan, snapshot = await _waves(gw, peer, sfc, slots, wave_slots, left)
        except (grpc.aio.AioRpcError, asyncio.TimeoutError) as e:
            raise MoveError(f"source {source.node}: {_why(e)}") from None
        start = time.monotonic()
        total = MoveResult(0, 0, 0, 0, 0.0)
        for n, wave in enumerate(plan):
            try:
                r = await _move_wave(gw, peer, sfc, source, target, wave, snapshot, left)
            except MoveError as e:
                if n:   # the waves before moved: their flows and state are on the target
                    raise type(e)(f"{e} (wave {n + 1} of {len(plan)}: {total.flows} flows "
                                  f"moved before it are on {target.node})") from None
                raise
            total = MoveResult(total.flows + r.flows, total.entries + r.entries,
                               total.held + r.held, total.held_dropped + r.held_dropped, 0.0)
    total.move_ms, total.waves = (time.monotonic() - start) * 1000, len(plan)
    log.info("sfc %s: moved %d flows (%d entries) %s -> %s in %.1f ms (%d waves), %d packets "
             "held", sfc, total.flows, total.entries, source.node, target.node, total.move_ms,
             len(plan), total.held)
    return total


async def _waves(gw, peer, sfc: str, slots, wave_slots: int, left) -> tuple[list, int]:
    """(the move's waves (waves()), the id of the snapshot of its tables the source read for
    them first: MoveFlows prepare); one wave of everything, without a snapshot, when a table
    cannot be taken by slot (FAILED_PRECONDITION)."""
    if wave_slots <= 0:
        return [slots], 0
    status = await gw.GetGateway(pb.GetGatewayRequest(), timeout=left())
    if sfc not in status.sfcs:
        return [slots], 0      # HoldFlows names what is wrong
    try:
        prepared = await peer.MoveFlows(pb.MoveFlowsRequest(
            sfc=sfc, prepare=True, gateway_sfc=status.sfcs[sfc].index), timeout=left())
    except grpc.aio.AioRpcError as e:
        if e.code() != grpc.StatusCode.FAILED_PRECONDITION:
            raise
        return [slots], 0
    return waves(slots, wave_slots), prepared.snapshot


async def _move_wave(gw, peer, sfc: str, source: Server, target: Server, slots,
                     snapshot: int, left):
    """One hold: the flows pinned to `source` in `slots` (None: all of them) move."""
    start = time.monotonic()
    try:
        hold = await gw.HoldFlows(pb.HoldFlowsRequest(
            sfc=sfc, source_ip=source.ip, target_ip=target.ip, slots=slots or [],
            timeout_ms=int((left() + HOLD_GRACE_S) * 1000)), timeout=left())
    except (grpc.aio.AioRpcError, asyncio.TimeoutError) as e:
        raise MoveError(f"gateway: {_why(e)}") from None
    try:
        moved = await peer.MoveFlows(pb.MoveFlowsRequest(
            sfc=sfc, target=pb.PeerRef(node=target.node, address=target.address),
            slots=slots or [], gateway_sfc=hold.gateway_sfc, marker=hold.marker,
            snapshot=snapshot, timeout_ms=int(left() * 1000)), timeout=left() + 0.5)
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
        raise StateMoved(f"gateway: commit failed ({_why(e)}); the flows' "
                         f"state is on {target.node} already") from None
    return MoveResult(flows=released.flows, entries=moved.entries, held=released.held,
                      held_dropped=released.held_dropped,
                      move_ms=(time.monotonic() - start) * 1000)


async def _abort(gw, move_id: int, sfc: str, source: Server):
    try:
        await asyncio.shield(gw.ReleaseFlows(pb.ReleaseFlowsRequest(move_id=move_id,
                                                                    commit=False), timeout=5))
    except (grpc.aio.AioRpcError, asyncio.TimeoutError) as e:   # its own expiry releases it
        log.warning("sfc %s: releasing the hold on %s's flows: %s", sfc, source.node, _why(e))
