"""`serpensctl replay`: run one node offline over a capture (DESIGN §3; issue "replay").

The agent's data plane with two net_pcap ports: frames are read from IN in order, run through
the SFC in a pool process, and those that leave it (verdict OUT) are written to OUT in order.
This is how users test an SFC on real captures before deploying it.
"""
from __future__ import annotations

import os
import shutil
import tempfile

from serpens.common.spec import SFCSpec
from serpens.runtime_cy import _dataplane as dp
from serpens.runtime_cy.builder import AreaAllocator

from .dataplane import Dataplane, DataplaneConfig
from .process_pool import ProcessPool
from .sfc_builder import build_sfc


def replay(spec: SFCSpec, in_pcap: str, out_pcap: str, state_dir: str | None = None) -> dict:
    """Returns {"sfc", "router": {rx, out, dropped, tx_failed}, "nfs": [{name, in, out,
    dropped, counters}]}. Without state_dir the NFs start from empty state."""
    if not os.path.isfile(in_pcap):
        raise FileNotFoundError(f"no capture at {in_pcap}")
    scratch = None if state_dir else tempfile.mkdtemp(prefix="serpens-replay-", dir="/dev/shm")
    config = DataplaneConfig(
        file_prefix=f"serpens-replay-{os.getpid()}", state_dir=state_dir or scratch,
        vdevs=(f"net_pcap0,rx_pcap={in_pcap}", f"net_pcap1,tx_pcap={out_pcap}"))
    try:
        with Dataplane(config) as dpl, ProcessPool(dpl, 1) as pool:
            areas = AreaAllocator()
            built = build_sfc(spec, areas)
            ports = [dp.port_open("net_pcap0", dpl.mempool), dp.port_open("net_pcap1", dpl.mempool)]
            rx, tx = dp.Ring("replay_rx", 1024), dp.Ring("replay_tx", 1024)
            proc = pool.start_instance(built.compiled, rx, tx)
            try:
                router = dp.replay(ports[0], ports[1], rx, tx, proc.ctl, proc.efd)
                per_step = proc.ctl.nf_counters(len(built.compiled.steps))
            finally:
                pool.stop_instance(proc)
                for port in ports:
                    dp.port_close(port)  # flushes the output capture
                rx.free()
                tx.free()
                built.close(areas)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    nfs = [{"name": step.name.split(".", 1)[-1], "in": c["in"], "out": c["in"] - c["dropped"],
            "dropped": c["dropped"], "counters": c["counters"]}
           for step, c in zip(built.compiled.steps, per_step) if step.kind == dp.STEP_NF]
    return {"sfc": spec.name, "router": router, "nfs": nfs}
