"""An SFC's NFs compile without the node's lock (agent/node.py apply_sfc): while one SFC's
compiler runs, or its tables are copied, another SFC on the node scales, merges and is
copied; a stop of the SFC being built waits for its run and then stops it (never the other way round: a stopped SFC does not come back);
a run that no longer fits once built is refused and frees what it built."""
import threading

import pytest

from serpens.agent import node as node_module
from serpens.agent.node import Node, SFCConflict, StaleSpec
from serpens.agent.process_pool import ProcessPool
from serpens.agent.state_manager import StateManager
from serpens.common.node_spec import parse_node
from serpens.common.spec import parse_sfc

from support.node_specs import NODE
from support.sites import Wire, unique_tag

pytestmark = [pytest.mark.dataplane, pytest.mark.timeout(60)]

MON = """
apiVersion: serpens/v1
kind: SFC
metadata: {name: quick}
spec:
  nfs: {mon: {stock: mon}}
  chain: [mon]
"""
SLOW = """
apiVersion: serpens/v1
kind: SFC
metadata: {name: slow}
spec:
  nfs: {fw: {stock: fw}}
  chain: [fw]
  match: [{dst: 192.0.2.0/24}]
"""


def started(call, *args, **kwargs) -> tuple[threading.Thread, list]:
    """`call` running in a thread, and the list its exception (if any) goes to."""
    errors = []

    def run():
        try:
            call(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - the test looks at it
            errors.append(e)
    thread = threading.Thread(target=run)
    thread.start()
    return thread, errors


def test_another_sfc_is_served_while_one_compiles(dataplane, areas, monkeypatch):
    compiling, go_on = threading.Event(), threading.Event()
    real_build = node_module.build_sfc

    def slow_build(spec, allocator, deployed=None):
        if spec.name in ("slow", "late"):
            compiling.set()
            assert go_on.wait(30)
        return real_build(spec, allocator, deployed)
    monkeypatch.setattr(node_module, "build_sfc", slow_build)
    tag = unique_tag()
    wires = {name: Wire(dataplane, f"k{tag}{name}") for name in ("wan", "lan", "dmz")}
    try:
        with ProcessPool(dataplane, 2) as pool, \
                Node(parse_node(NODE), [parse_sfc(MON)], dataplane=dataplane, pool=pool,
                     areas=areas, ports={n: w.port for n, w in wires.items()}) as node:
            applying, errors = started(node.apply_sfc, parse_sfc(SLOW), generation=1)
            assert compiling.wait(30)
            served = threading.Thread(target=lambda: (node.scale("quick", 1),
                                                      node.merge_state("quick")))
            served.start()
            served.join(20)
            assert not served.is_alive(), "quick waited for slow's compiler"
            assert "slow" not in node.running and node.running["quick"].replicas == 1
            stopped = threading.Thread(target=node.remove_sfc, args=("slow",))
            stopped.start()   # (StopSFC while the run it follows is still compiling)
            stopped.join(0.5)
            assert stopped.is_alive(), "the stop went ahead of the run it follows"
            go_on.set()
            applying.join(30)
            stopped.join(30)
            assert not errors and not stopped.is_alive()
            assert "slow" not in node.running and "quick" in node.running
            # the same run again: replaced in place, its old images' areas freed; an older
            # one is refused before it builds anything
            node.apply_sfc(parse_sfc(SLOW), generation=2)
            before = len(node.areas)
            assert node.apply_sfc(parse_sfc(SLOW), generation=2).generation == 2
            assert len(node.areas) == before > 0
            with pytest.raises(StaleSpec):
                node.apply_sfc(parse_sfc(SLOW), generation=1)
            assert len(node.areas) == before
            assert len(node._sfc_locks) == 0

            # a run that no longer fits once built (another SFC took its tag meanwhile: with
            # builds side by side, which one at a time rules out today) is refused, and what
            # it built is freed
            node._builds = threading.Semaphore(2)
            compiling.clear()
            go_on.clear()
            late, rival = (SLOW.replace("name: slow", f"name: {name}").replace(
                "match: [{dst: 192.0.2.0/24}]", "tag: 100") for name in ("late", "rival"))
            applying, refused = started(node.apply_sfc, parse_sfc(late), generation=1)
            assert compiling.wait(30)
            node.apply_sfc(parse_sfc(rival), generation=1)
            before = len(node.areas)
            go_on.set()
            applying.join(30)
            assert refused and isinstance(refused[0], SFCConflict) \
                and "has tag 100" in str(refused[0]), refused
            assert "late" not in node.running and len(node.areas) == before  # (built, freed)

            # one SFC's table copy (a snapshot, its instances paused) holds up no other's
            copying, copied = threading.Event(), threading.Event()
            read_nf = StateManager.read_nf

            def slow_read(manager, namespace):
                if namespace.startswith("slow."):
                    copying.set()
                    assert copied.wait(30)
                return read_nf(manager, namespace)
            monkeypatch.setattr(StateManager, "read_nf", slow_read)
            snapshot = threading.Thread(target=node.snapshot_state, args=("slow", "fw"))
            snapshot.start()
            assert copying.wait(30)
            served = threading.Thread(target=lambda: (node.scale("quick", 2),
                                                      node.merge_state("quick"),
                                                      node.snapshot_state("quick", "mon")))
            served.start()
            served.join(20)
            assert not served.is_alive(), "quick waited for slow's snapshot"
            copied.set()
            snapshot.join(30)
            assert not snapshot.is_alive() and node.running["quick"].replicas == 2
    finally:
        go_on.set()
        for w in wires.values():
            w.close()
