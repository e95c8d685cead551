"""One server of `bench multinode` (python -m serpens.bench.multinode_server SPEC_JSON), run
in its own network namespace: a node (bench/rig.py: its own DPDK primary, router on CPU 1,
instance on CPU 0) whose router takes VXLAN from the gateway on its underlay port and runs
FW->MON->NAT. The SFC's packets leave on the server's own output port (a net_null port, as
the single node's sink: the paper's servers send out, the gateway only steers in) until the
`return` command makes its output the gateway (encapsulated back over the underlay).

Prints one JSON line when its instance runs, then answers commands, one a line on stdin,
each with one JSON line:
- `counts`: the output port's tx and the router's drops, with the (CLOCK_MONOTONIC) time they
  were read (a read this thread was preempted in the middle of is read again);
- `log N`: record the next N packets sent, their arrival time taken from the stamp the
  gateway's traffic driver wrote in the payload (`stamp_off`; one TSC on one host);
- `take`: those records (hex);
- `return`: the SFC's output is the gateway from now on.
When stdin closes: its router's counters as a last JSON line."""
from __future__ import annotations

import json
import sys
import time

from serpens.runtime_cy import _dataplane as dp

from .rig import Rig
from .sfc import fw_mon_nat


def _counts(router, sink: int) -> dict:
    for _ in range(100):
        t0 = time.perf_counter()
        st = router.stats()
        t1 = time.perf_counter()
        if t1 - t0 < 100e-6:
            break
    return {"tx": st["ports"][sink]["tx"], "dropped": st["dropped"], "t": (t0 + t1) / 2}


def serve(spec: dict):
    sink_name = f"net_null_mn{spec['name']}out"
    rig = Rig(f"mn{spec['name']}", None, vdevs=(spec["underlay"], f"{sink_name},no-rx=1"))
    images = []
    try:
        mp = rig.dataplane.mempool
        port = dp.port_open(spec["underlay"].split(",", 1)[0], mp)
        sink = dp.port_open(sink_name, mp)
        sfc, images = fw_mon_nat()
        rig.start([sfc], ports=(port, sink))
        router, sid = rig.router, rig.sfc_ids[0]
        router.pace(port, 0)  # an underlay, not a paced source
        router.set_underlay(port, spec["ip"], spec["mac"], spec.get("mtu", 1500))
        router.set_gateway(spec["gateway_ip"], spec["gateway_mac"])
        router.set_sfc_vxlan(sid, spec["tag"], spec.get("vni", 0), to_gateway=False)
        print(json.dumps({"ready": spec["name"]}), flush=True)
        for line in sys.stdin:  # until the gateway's side closes it
            cmd, _, arg = line.strip().partition(" ")
            if cmd == "counts":
                out = _counts(router, sink)
            elif cmd == "log":
                router.log_start(int(arg), stamp_off=spec["stamp_off"])
                out = {"log": int(arg)}
            elif cmd == "take":
                out = {"recs": router.log_take().hex()}
            elif cmd == "return":  # between runs, at the idle pace: a frame may be dropped
                router.set_sfc_vxlan(sid, spec["tag"], spec.get("vni", 0), to_gateway=True)
                out = {"return": True}
            else:
                out = {"error": f"unknown command {cmd!r}"}
            print(json.dumps(out), flush=True)
        st = router.stats()
        print(json.dumps(dict({k: st[k] for k in ("rx", "tx", "dropped", "tx_failed", "sleeps",
                                                  "vxlan")}, local_tx=st["ports"][sink]["tx"])),
              flush=True)
        rig.stop()
        dp.port_close(port)
        dp.port_close(sink)
    finally:
        rig.close()
        for image in images:
            image.close()


if __name__ == "__main__":
    serve(json.loads(sys.argv[1]))
