"""Packet-in/packet-out testing of an SFC in a real pool process over real rte_rings.

    with PacketHarness(pool, compile_sfc(chain(fw, nat))) as h:
        results = h.run([bytes(pkt) for pkt in scapy_packets])
        assert results[0].verdict == "out"

The harness plays the router: it copies each frame into an mbuf, enqueues it on the
instance's RX ring, wakes the instance if it sleeps, and collects every packet from the TX
ring with its verdict. An instance keeps packet order, so results come back in input order.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

from serpens.runtime_cy import _dataplane as dp
from serpens.runtime_cy.sfc import NF, compile_sfc

from serpens.agent.process_pool import PoolProcess, ProcessPool

_names = itertools.count()


@dataclass(frozen=True)
class Result:
    verdict: str   # "out" or "drop"
    data: bytes


class PacketHarness:
    RING_SIZE = 1024

    def __init__(self, pool: ProcessPool, sfc):
        self.pool = pool
        self.sfc = sfc
        self.process: PoolProcess | None = None
        self._ctl = None  # the control block of the process that ran it
        n = next(_names)
        self.rx = dp.Ring(f"hrx{n}_{id(self) & 0xffff:x}", self.RING_SIZE)
        self.tx = dp.Ring(f"htx{n}_{id(self) & 0xffff:x}", self.RING_SIZE)

    def start(self):
        self.process = self.pool.start_instance(self.sfc, self.rx, self.tx)
        self._ctl = self.process.ctl
        return self

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self.process is not None and not self.process.dead:
            self.pool.stop_instance(self.process)
        if self._ctl is not None:  # a process that died mid-batch left packets with us
            dp.free_lost_batch(self._ctl, self.rx, self.tx)
        self.process = None
        self.rx.free()
        self.tx.free()

    def run(self, frames, timeout: float = 10.0) -> list[Result]:
        """Push `frames` through the SFC; return one Result per frame, in order."""
        frames = [bytes(f) for f in frames]
        results: list[Result] = []
        pool = self.pool.dataplane.mempool
        sent = 0
        deadline = time.monotonic() + timeout
        while len(results) < len(frames):
            room = self.RING_SIZE - 1 - (sent - len(results))  # never more than a ring holds
            if sent < len(frames) and room > 0:
                chunk = frames[sent:sent + min(room, 256, dp.BURST * 8)]
                sent += dp.push(self.rx, pool, chunk)
                self.process.wake()
            got = dp.pull(self.tx)
            results += [Result("out" if label == dp.LABEL_OUT else "drop", data)
                        for label, data in got]
            if not got:
                if self.process.dead:
                    raise RuntimeError("the instance's pool process died")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{len(results)} of {len(frames)} packets came back")
                time.sleep(0)
        return results

    def nf_counters(self):
        """Per NF (in SFC order): {"name", "in", "dropped", "counters": {name: value}}."""
        per_step = self.process.ctl.nf_counters(len(self.sfc.steps))
        return [dict(name=s.name, **c) for s, c in zip(self.sfc.steps, per_step)]

    def stats(self):
        return self.process.ctl.stats()


class NFHarness(PacketHarness):
    """A harness around one NF: `counters` are its named counters."""

    def __init__(self, pool: ProcessPool, nf: NF, **kw):
        super().__init__(pool, compile_sfc(nf), **kw)

    @property
    def counters(self) -> dict:
        return self.nf_counters()[0]["counters"]
