"""A cluster of the real programs behind the gateway, in network namespaces (cli/testbed.py):
etcd and `serpens-controller` on the host, `serpens-gateway` and one `serpens-agent` per
server each in its own namespace, VXLAN between them over veths and a bridge. The gateway's
ingress and egress are two more veths (eth2, eth3) the test feeds and reads through taps.
Shared by the issue 14 tests (state, moves, drain, checkpoints across servers)."""
import contextlib
import os
import tempfile
from types import SimpleNamespace

from serpens.cli import multi
from serpens.cli.testbed import Testbed

from .cluster import Agent, Controller, Gateway
from .etcd import start_etcd
from .taps import Tap


@contextlib.contextmanager
def gateway_cluster(tag: str, servers, files, *, agent_args=(), gateway_yaml: str = "",
                    controller_log: str = "info", check_exits: bool = True):
    """Yield the cluster as a namespace: bed, etcd, controller, agents {server: Agent},
    gateway, ingress/egress/underlay taps, server_of_ip, files, state (the servers' state
    directories' parent) and start_agent(server) (again, after a kill). `files`: a directory
    for the configuration files; `gateway_yaml`: lines added to the gateway's configuration.
    On the way out everything is stopped and removed; with `check_exits` every program must
    have exited 0."""
    bed = Testbed(f"{tag}{os.getpid() % 10000}", [multi.GATEWAY, *servers],
                  outside={multi.GATEWAY: 2})   # eth2: its ingress, eth3: its egress
    state = tempfile.TemporaryDirectory(prefix=f"serpens-{tag}-", dir="/dev/shm")
    c = SimpleNamespace(bed=bed, etcd=None, agents={}, gateway=None, controller=None, taps=[],
                        files=files, state=state.name,
                        server_of_ip={bed.underlay[s]: s for s in servers})

    def start_agent(s: str):
        path = files / f"{s}.yaml"
        path.write_text(multi.server_node(s, bed.underlay[s], pool=2,
                                          state_dir=os.path.join(state.name, s)))
        c.agents[s] = Agent(c.etcd.endpoint, str(path), host=bed.address[s], netns=bed.ns[s],
                            args=list(agent_args))
    c.start_agent = start_agent
    exits = {}
    try:
        bed.create()
        c.etcd = start_etcd(host=bed.host)
        c.controller = Controller(c.etcd.endpoint, args=["--identity", "c1", "--resync-s", "0.5"],
                                  log_level=controller_log)
        for s in servers:
            start_agent(s)
        gw = files / "gateway.yaml"
        gw.write_text(multi.gateway_config(bed.underlay[multi.GATEWAY],
                                           "net_af_packet_in,iface=eth2",
                                           egress="net_af_packet_out,iface=eth3")
                      + gateway_yaml)
        c.gateway = Gateway(c.etcd.endpoint, str(gw), host=bed.address[multi.GATEWAY],
                            netns=bed.ns[multi.GATEWAY])
        c.ingress, c.egress, c.underlay = (Tap(bed.links[multi.GATEWAY][k])
                                           for k in ("eth2", "eth3", "underlay"))
        c.taps = [c.ingress, c.egress, c.underlay]
        yield c
    finally:
        for tap in c.taps:
            tap.close()
        if c.gateway:
            exits["gateway"] = c.gateway.stop()
        exits.update({s: agent.stop() for s, agent in c.agents.items()})
        if c.controller:
            c.controller.stop()
        if c.etcd:
            c.etcd.destroy()
        state.cleanup()
        bed.remove()
    if check_exits:
        assert all(code == 0 for code in exits.values()), exits
