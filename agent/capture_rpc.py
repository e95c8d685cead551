"""Agent.Capture: an Observation (agent/capture.py) of one SFC on this node, streamed as
CaptureEvents until its count, bytes or seconds are reached or the client goes away; then every
instance is disarmed (the `finally` runs on cancellation too)."""
from __future__ import annotations

import asyncio
import time

from serpens.common.limits import capture_problem
from serpens.proto.serpens.v1 import serpens_pb2 as pb
from serpens.runtime_cy import _dataplane as dp

from .capture import (DEFAULT_SNAPLEN, REC_PKT, REC_TRACE_PKT, REC_TRACE_STEP, ROUTER,
                      Observation, verdict)

POLL_S = 0.01           # how often the rings are drained (each holds 1 MiB of records)
DEFAULT_COUNT = 1000
DEFAULT_SECONDS = 60.0
DEFAULT_BYTES = 64 << 20


class CaptureBusy(Exception):
    """One capture or trace per SFC and node at a time (they share the instances' rings)."""


def observation(node, request, busy: set) -> Observation:
    """The request's Observation of an SFC the node runs; ValueError naming the field."""
    entry = node.running.get(request.sfc)
    if entry is None:
        raise LookupError(f"sfc: node {node.spec.name} runs no SFC {request.sfc!r}")
    if request.sfc in busy:
        raise CaptureBusy(f"sfc: a capture or trace of {request.sfc} is running on node "
                          f"{node.spec.name}")
    problem = capture_problem(request)
    if problem:
        raise ValueError(problem)
    manager = entry.manager
    steps = [s.name for s in entry.built.compiled.steps]
    count = request.count or DEFAULT_COUNT

    ring = None  # the SFC's own drops include the router's (before or after its instances)

    def instances():  # dict() of a dict is one C call: a consistent copy under the GIL
        now = {i: s.proc.ctl for i, s in dict(manager.instances).items()}
        if ring is not None:
            now[ROUTER] = ring
        return now
    obs = Observation(instances, steps, nf=request.nf, at=request.at or "out",
                      snaplen=request.snaplen or DEFAULT_SNAPLEN,
                      trace=count if request.trace else 0)
    if obs.at == "drop" and not obs.nf and not obs.trace and node.router is not None:
        ring = dp.ObsRing()
        node.router.set_drop_capture(entry.sfc_id, ring)
        obs.on_close = lambda: node.router.set_drop_capture(entry.sfc_id, None)
    return obs


async def stream(obs: Observation, node_name: str, request):
    """CaptureEvents of `obs` (already made) until a bound is reached; closes it."""
    count = request.count or DEFAULT_COUNT
    max_bytes = request.max_bytes or DEFAULT_BYTES
    deadline = time.monotonic() + (request.seconds or DEFAULT_SECONDS)
    ns_per_cycle = 1e9 / dp.tsc_hz()
    at = request.at or "out"
    packets = nbytes = 0
    stopped = ""
    traced: dict = {}  # (instance, pkt) -> TracedPacket

    def packet(r, nf: str) -> pb.CapturedPacket:
        router = r.instance == ROUTER
        return pb.CapturedPacket(data=r.data, orig_len=r.orig_len, time_ns=time.time_ns(),
                                 node=node_name, instance=0 if router else r.instance, nf=nf,
                                 verdict=verdict(r.label), reason=r.why, at=at, router=router)
    try:
        while not stopped:
            records = obs.poll()
            events = []
            for r in records:
                full = packets >= count or nbytes >= max_bytes  # (steps of those taken go on)
                if r.kind == REC_PKT and not full:
                    packets += 1
                    nbytes += len(r.data)
                    events.append(pb.CaptureEvent(packet=packet(r, obs.nf_name(r.step))))
                elif r.kind == REC_TRACE_PKT and not full:
                    packets += 1
                    t = pb.TracedPacket(packet=packet(r, ""))
                    t.packet.at, t.packet.verdict = "in", ""
                    traced[r.instance, r.pkt] = t
                    events.append((r.instance, r.pkt))  # (made below: protobuf copies t)
                elif r.kind == REC_TRACE_STEP and (r.instance, r.pkt) in traced:
                    traced[r.instance, r.pkt].steps.add(
                        nf=obs.nf_name(r.step), label=verdict(r.label), reason=r.why,
                        call_ns=int(r.tsc * ns_per_cycle), batch=r.batch)
            # a traced packet's records are published together (one burst): whole now
            for e in events:
                yield pb.CaptureEvent(trace=traced[e]) if isinstance(e, tuple) else e
            traced.clear()
            if packets >= count:
                stopped = "count"
            elif nbytes >= max_bytes:
                stopped = "bytes"
            elif time.monotonic() >= deadline:
                stopped = "seconds"
            else:
                await asyncio.sleep(POLL_S)
    finally:
        obs.close()
    yield pb.CaptureEvent(summary=pb.CaptureSummary(packets=packets, bytes=nbytes,
                                                    lost=obs.lost(), stopped=stopped,
                                                    node=node_name))
