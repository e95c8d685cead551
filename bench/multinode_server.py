"""One server of `bench multinode` (python -m serpens.bench.multinode_server SPEC_JSON), run
in its own network namespace: a node (bench/rig.py: its own DPDK primary, router on CPU 1,
instance on CPU 0) whose router takes VXLAN from the gateway on its underlay port, runs
FW->MON->NAT and sends the results back to the gateway, encapsulated (an SFC whose output is
the gateway). Prints one JSON line when its instance runs, then serves until stdin closes,
then prints its router's counters as a last JSON line."""
from __future__ import annotations

import json
import sys

from serpens.runtime_cy import _dataplane as dp

from .rig import Rig
from .sfc import fw_mon_nat


def serve(spec: dict):
    rig = Rig(f"mn{spec['name']}", None, vdevs=(spec["underlay"],))  # the single node's settings
    images = []
    try:
        port = dp.port_open(spec["underlay"].split(",", 1)[0], rig.dataplane.mempool)
        sfc, images = fw_mon_nat()
        rig.start([sfc], ports=(port, port))
        router = rig.router
        router.pace(port, 0)  # an underlay, not a paced source
        router.set_underlay(port, spec["ip"], spec["mac"], spec.get("mtu", 1500))
        router.set_gateway(spec["gateway_ip"], spec["gateway_mac"])
        router.set_sfc_vxlan(rig.sfc_ids[0], spec["tag"], spec.get("vni", 0), to_gateway=True)
        print(json.dumps({"ready": spec["name"]}), flush=True)
        sys.stdin.read()  # until the gateway's side closes it
        st = router.stats()
        print(json.dumps({k: st[k] for k in ("rx", "tx", "dropped", "tx_failed", "sleeps",
                                             "vxlan")}), flush=True)
        rig.stop()
        dp.port_close(port)
    finally:
        rig.close()
        for image in images:
            image.close()


if __name__ == "__main__":
    serve(json.loads(sys.argv[1]))
