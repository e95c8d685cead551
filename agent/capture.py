"""Capture and trace of an SFC's instances on this node (docs/observability.md "Capture and
trace"; the records come from runtime_cy/src/observe.c through each pool process's control
block).

An Observation arms every instance of the SFC (and those started while it runs), drains their
record rings on each poll (all of a ring's records at once: per burst, never per packet on the
packet path) and disarms them on close. Bounds (count, bytes, time) are the caller's: the
agent's Capture RPC stops on the first reached, or when its client goes away.
"""
from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass, field
from typing import Callable

from serpens.common.limits import LIMITS
from serpens.runtime_cy import _dataplane as dp

REC = struct.Struct("<IHhIHBBIIQII")  # struct serpens_obs_rec (pool_ctl.h)
REC_PAD, REC_PKT, REC_TRACE_PKT, REC_TRACE_STEP = 0, 1, 2, 3
WHY = {0: "", 1: "verdict", 2: "bad_label", 3: "bad_mbuf", 4: "segments",
       # the router's, named as its drop counters (Router.stats())
       5: "instance_stuck", 6: "no_instance", 7: "sfc_failed", 8: "over_mtu",
       9: "instance_died"}
ROUTER = -1  # the instance key of the router's own drops (an ObsRing)
AT = {"in": dp.AT_IN, "out": dp.AT_OUT, "drop": dp.AT_DROP}
DEFAULT_SNAPLEN = 2048  # bytes of a frame copied at most (a jumbo frame is cut, orig_len kept)
_generations = itertools.count(1)  # one per arming in this agent: never 0, never reused


@dataclass
class Record:
    kind: int
    step: int      # -1: the SFC's own point (or, for a drop, the runtime's refusal)
    label: int
    why: str
    pkt: int
    orig_len: int
    tsc: int       # PKT: TSC when copied; TRACE_STEP: cycles of the NF's call
    batch: int
    data: bytes
    instance: int = 0


def parse_records(buf: bytes, gen: int) -> list[Record]:
    """The records of arming `gen` in `buf` (PoolCtl.take_observed()), in order."""
    out, off = [], 0
    while off + 8 <= len(buf):
        size, kind = struct.unpack_from("<IH", buf, off)
        if size < 8 or off + size > len(buf):
            break  # (cannot happen: the producer publishes whole records)
        if kind != REC_PAD:
            (_, _, step, g, label, why, _, pkt, orig_len, tsc, batch,
             caplen) = REC.unpack_from(buf, off)
            if g == gen:
                start = off + REC.size
                out.append(Record(kind, step, label, WHY.get(why, str(why)), pkt, orig_len,
                                  tsc, batch, buf[start:start + caplen]))
        off += size
    return out


def verdict(label: int) -> str:
    if label == dp.LABEL_OUT:
        return "out"
    if label == dp.LABEL_DROP:
        return "drop"
    return f"step {label}"


@dataclass
class _Armed:
    ctl: object
    gen: int
    lost0: int


@dataclass
class Observation:
    """instances() -> {instance number: PoolCtl} of the SFC's running instances now; `steps`
    the SFC's step names in chain order. nf "" captures at the SFC's own in/out/drop."""
    instances: Callable[[], dict]
    steps: list[str]
    nf: str = ""
    at: str = "out"
    snaplen: int = DEFAULT_SNAPLEN
    trace: int = 0  # > 0: trace this many packets (per instance arming) instead of capturing
    on_close: Callable | None = None  # after every source is disarmed (e.g. let go of one)
    armed: dict = field(default_factory=dict)
    lost_gone: int = 0  # copies lost by instances that stopped meanwhile

    def __post_init__(self):
        if self.at not in AT:
            raise ValueError(f"at: one of in, out, drop, got {self.at!r}")
        if not 0 < self.snaplen <= LIMITS.capture_snaplen:
            raise ValueError(f"snaplen: 1..{LIMITS.capture_snaplen}, got {self.snaplen}")
        self.step = -1
        if self.nf:
            names = [s.split(".", 1)[-1] for s in self.steps]
            if self.nf not in names:
                raise ValueError(f"nf: the SFC has no NF {self.nf!r} (it has "
                                 f"{', '.join(n for n in names if n)})")
            self.step = names.index(self.nf)

    def nf_name(self, step: int) -> str:
        return self.steps[step].split(".", 1)[-1] if 0 <= step < len(self.steps) else ""

    def _arm(self, key, ctl):
        gen = next(_generations)
        ctl.observe(gen, capture=not self.trace, step=self.step, at=AT[self.at],
                    snaplen=self.snaplen, trace=self.trace)
        self.armed[key] = _Armed(ctl, gen, ctl.observe_lost)

    def poll(self) -> list[Record]:
        """Arms instances not armed yet, and returns the records published since the last
        poll (each instance's in order)."""
        out = []
        now = self.instances()
        for key, ctl in now.items():
            a = self.armed.get(key)
            if a is None or a.ctl is not ctl:
                self._arm(key, ctl)
                continue
            for r in parse_records(ctl.take_observed(), a.gen):
                r.instance = key
                out.append(r)
        for key in set(self.armed) - set(now):  # stopped meanwhile: its records went with it
            a = self.armed.pop(key)
            a.ctl.observe_off(a.gen)  # (its pool process may run another SFC next)
            self.lost_gone += self._lost(a)
        return out

    @staticmethod
    def _lost(a: _Armed) -> int:
        return a.ctl.observe_lost - a.lost0

    def lost(self) -> int:
        """Copies lost to full rings so far (packets went on: only the copies were lost)."""
        return self.lost_gone + sum(self._lost(a) for a in self.armed.values())

    def close(self):
        """Disarm every instance: none keeps a capture point on."""
        for a in self.armed.values():
            a.ctl.observe_off(a.gen)  # (only ours: a late close leaves a newer one alone)
        if self.on_close is not None:
            self.on_close()
            self.on_close = None
