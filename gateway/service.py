"""The Gateway gRPC service (proto/serpens/v1/serpens.proto), called by the controller's leader.

SetRoutes replaces the route set as a whole (gateway/routes.py) and is fenced by the leader's
term (its election revision): a push of a term older than the newest applied is a deposed
leader's late push, refused ABORTED; the same term again (the leader's next push) and newer
terms are applied. A route the gateway cannot take is INVALID_ARGUMENT naming
`routes[i].field`, and nothing changes. GetGateway reads the packet loop's counters.

Pushes are applied one at a time, off the event loop (applying may wait for the packet loop
to quiesce), the term check and the apply under one lock: a push whose caller gave up (its
deadline passed) still completes before the next one starts. Counters are read under the
same lock, so they never see a half-applied set.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from typing import Callable

import grpc

from serpens.common.records import MalformedRecord, RouteRecord
from serpens.runtime_cy import _dataplane as dp
from serpens.proto.serpens.v1 import serpens_pb2 as pb
from serpens.proto.serpens.v1 import serpens_pb2_grpc

from .routes import GatewayRoutes, RouteSetError

log = logging.getLogger(__name__)


class StaleTerm(Exception):
    """A push of an older leader term than the routes in effect."""


class GatewayServicer(serpens_pb2_grpc.GatewayServicer):
    """`routes` applies to the gateway's dp.Gateway; `port_names`: DPDK port id -> name;
    `on_applied()` runs after each applied push (the record's term is refreshed)."""

    def __init__(self, name: str, routes: GatewayRoutes, port_names: dict[int, str],
                 on_applied: Callable[[], None] = lambda: None):
        self.name, self.routes, self.port_names = name, routes, dict(port_names)
        self.on_applied = on_applied
        self.term = 0
        self._lock = threading.Lock()
        self._expiry: dict[int, asyncio.TimerHandle] = {}  # move -> its release to the source
        self._moves: dict[int, int] = {}   # move id -> its index in the gateway (moves[])
        self._last_move = 0

    async def SetRoutes(self, request, context: grpc.aio.ServicerContext):
        routes = []
        for i, m in enumerate(request.routes):
            try:
                routes.append(RouteRecord.from_message(m))
            except MalformedRecord as e:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"routes[{i}].{e}")
        try:
            await asyncio.to_thread(self._apply, request.term, routes)
        except StaleTerm as e:
            await context.abort(grpc.StatusCode.ABORTED, str(e))
        except RouteSetError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except RuntimeError as e:  # the loop did not quiesce: the pusher tries again
            log.warning("term %d: %s", request.term, e)
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        self.on_applied()
        return pb.SetRoutesResponse(term=request.term, routes=len(routes))

    def _apply(self, term: int, routes: list[RouteRecord]) -> None:
        with self._lock:
            if term < self.term:
                raise StaleTerm(f"term {term}: routes of term {self.term} are in effect (a "
                                "deposed leader's push)")
            changed = routes != list(self.routes.routes)
            self.routes.apply(routes)
            if changed or term != self.term:
                log.info("term %d: %d routes in effect", term, len(routes))
            self.term = term

    async def HoldFlows(self, request, context: grpc.aio.ServicerContext):
        sfc = self.routes.sfcs.get(request.sfc)
        if sfc is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"sfc: no route for {request.sfc!r}")
        timeout = (request.timeout_ms or 10000) / 1000
        try:
            index, marker = await asyncio.to_thread(self._hold, sfc.id, request)
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        self._last_move += 1     # ids are never reused: a late release finds nothing
        move = self._last_move
        self._moves[move] = index
        # a caller that never releases (gone, partitioned) must not stall the flows forever
        self._expiry[move] = asyncio.get_running_loop().call_later(
            timeout, lambda: asyncio.ensure_future(self._expire(move)))
        log.info("move %d: holding %s's flows on %s for %s (%s)", move, request.sfc,
                 request.source_ip, request.target_ip,
                 f"{len(request.slots)} slots" if request.slots else "all")
        return pb.HoldFlowsResponse(move_id=move, gateway_sfc=sfc.id, marker=marker)

    def _hold(self, sfc: int, request) -> tuple[int, int]:
        """(the move's index, its marker's id)."""
        with self._lock:
            index = self.routes.gw.hold_flows(sfc, request.source_ip, request.target_ip,
                                              list(request.slots) or None)
            return index, self.routes.gw.move_marker(index)

    def _release(self, index: int, commit: bool) -> dict:
        with self._lock:
            return self.routes.gw.release_flows(index, commit)

    async def _expire(self, move: int):
        if self._expiry.pop(move, None) is None:
            return
        index = self._moves.pop(move)
        try:
            c = await asyncio.to_thread(self._release, index, False)
            log.warning("move %d: not released in time: its flows stay on the source (%s)",
                        move, c)
        except (ValueError, TimeoutError) as e:
            log.warning("move %d: expiry: %s", move, e)

    async def ReleaseFlows(self, request, context: grpc.aio.ServicerContext):
        timer = self._expiry.pop(request.move_id, None)
        if timer is None:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"move_id: no move {request.move_id} holds flows (released, "
                                "or expired: its flows stayed on the source)")
        timer.cancel()
        index = self._moves.pop(request.move_id)
        try:
            c = await asyncio.to_thread(self._release, index, request.commit)
        except TimeoutError as e:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(e))
        log.info("move %d: released (%s): %s", request.move_id,
                 "commit" if request.commit else "abort", c)
        return pb.ReleaseFlowsResponse(flows=c["flows"], held=c["held"],
                                       held_dropped=c["held_dropped"])

    async def GetGateway(self, request, context: grpc.aio.ServicerContext):
        # (in a thread: the lock is held for seconds by a move's release or hold, and the
        # event loop also keeps the gateway's lease alive)
        return await asyncio.to_thread(self._locked_status)

    def _locked_status(self) -> pb.GatewayStatus:
        with self._lock:
            return self.status()

    def status(self) -> pb.GatewayStatus:
        stats = self.routes.gw.stats()
        sfcs = {}
        for name, sfc in self.routes.sfcs.items():
            c = stats["sfcs"][sfc.id]
            nodes = {}
            for ip, weight in self.routes.weights[name].items():
                node = self.routes.nodes[name][ip]
                nodes[node] = nodes.get(node, 0) + weight
            sfcs[name] = pb.GatewaySFC(tag=c["tag"], rx=c["rx"], tx=c["tx"], back=c["back"],
                                       new_flows=c["new_flows"], moved_flows=c["moved_flows"],
                                       drops=c["drops"], servers=nodes,
                                       flow_full=c["flow_full"], held=c["held"],
                                       held_dropped=c["held_dropped"], moves=c["moves"],
                                       index=sfc.id)
        ports = {self.port_names.get(port, str(port)):
                 pb.PortCounters(rx=c["rx"], tx=c["tx"], tx_failed=c["tx_failed"],
                                 unmatched=c["unmatched"],
                                 missed=c["missed"] + device_missed(port))
                 for port, c in stats["ports"].items()}
        return pb.GatewayStatus(name=self.name, term=self.term, sfcs=sfcs, ports=ports,
                                drops=stats["drops"], arp_replies=stats["arp_replies"])


def device_missed(port: int) -> int:
    """Frames the device of DPDK port `port` dropped for want of RX room (an af_packet ring
    full while the loop did not run), as the metrics count them with a paced port's own."""
    try:
        return dp.port_stats(port)["missed"]
    except OSError:
        return 0
