"""One server's data plane from specs: a Node config and the SFCs it runs (DESIGN §3).

The node opens the config's ports (any DPDK device string) in the agent's DPDK primary,
compiles every SFC's NFs, and gives the router one SFC per spec: its output port (the SFC's
`output`, else the node's), its match rules (in spec order across SFCs: first match wins),
its SFC tag, and at most one SFC without either as the default for everything else. Each SFC
gets an instance manager: instances start when its packets arrive, stop after `warm_s` idle,
and `scale(sfc, n)` runs n of them. Cross-references (ports, tags, defaults) are checked before
anything starts; errors are SpecError naming the SFC and field.
"""
from __future__ import annotations

import os

from serpens.common.node_spec import NodeSpec
from serpens.common.spec import SFCSpec, SpecError
from serpens.runtime_cy import _dataplane as dp
from serpens.runtime_cy.builder import SlotAllocator

from .dataplane import Dataplane, DataplaneConfig
from .instance_manager import InstanceManager
from .process_pool import ProcessPool
from .sfc_builder import build_sfc


def check_references(node: NodeSpec, sfcs: list[SFCSpec]):
    """The SFCs fit the node: known ports, an output for each, distinct tags, one default."""
    names, tags, defaults = set(), {}, []
    for spec in sfcs:
        where = f"sfc {spec.name}: spec"
        if spec.name in names:
            raise SpecError(f"sfc {spec.name}: metadata.name", "two SFCs of that name")
        names.add(spec.name)
        if spec.output is not None and spec.output not in node.ports:
            raise SpecError(f"{where}.output", f"node {node.name} has no port {spec.output!r}")
        if spec.output is None and node.output is None:
            raise SpecError(f"{where}.output", f"node {node.name} has no default output port")
        for i, rule in enumerate(spec.match):
            if "port" in rule and rule["port"] not in node.input:
                raise SpecError(f"{where}.match[{i}].port",
                                f"not an input port of node {node.name}: {rule['port']!r}")
        if spec.tag is not None:
            if spec.tag in tags:
                raise SpecError(f"{where}.tag", f"SFC {tags[spec.tag]} has tag {spec.tag}")
            tags[spec.tag] = spec.name
        if not spec.match and spec.tag is None:
            defaults.append(spec.name)
    if len(defaults) > 1:
        raise SpecError(f"sfc {defaults[1]}: spec.match",
                        f"only one SFC may take unmatched packets, and {defaults[0]} does")


class Node:
    def __init__(self, node: NodeSpec, sfcs: list[SFCSpec], *, dataplane: Dataplane = None,
                 pool: ProcessPool = None, ports: dict | None = None,
                 slots: SlotAllocator | None = None):
        """`dataplane`, `pool`, `ports` (name -> DPDK port id) and `slots` (the image slot
        allocator of whoever else uses that pool) may be given (tests); otherwise the node
        makes its own."""
        check_references(node, sfcs)
        self.spec, self.sfcs = node, sfcs
        self.dataplane, self.pool, self.ports = dataplane, pool, ports
        self._own_dataplane, self._own_pool = dataplane is None, pool is None
        self._own_ports = ports is None
        self.slots = slots or SlotAllocator()
        self.built, self.managers, self.sfc_ids = [], {}, {}
        self.router = None

    def start(self):
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self):
        node = self.spec
        if self.dataplane is None:
            self.dataplane = Dataplane(DataplaneConfig(
                file_prefix=f"serpens-node-{node.name}-{os.getpid()}",
                vdevs=tuple(node.ports.values()), cpus=node.cpus,
                router_cpus=str(node.router_cpu), state_dir=node.state_dir)).start()
        if self.ports is None:
            self.ports = {}
            for name in node.ports:
                try:
                    self.ports[name] = dp.port_open(node.device_name(name),
                                                    self.dataplane.mempool)
                except OSError as e:
                    raise SpecError(f"spec.ports.{name}", str(e)) from None
        if self.pool is None:
            self.pool = ProcessPool(self.dataplane, node.pool).start()
        for spec in self.sfcs:
            self.built.append(build_sfc(spec, self.slots))
        self.router = dp.Router([self.ports[p] for p in node.input], wake_us=node.wake_us)
        rules = []
        for spec in self.sfcs:
            sid = self.router.add_sfc(self.ports[spec.output or node.output])
            self.sfc_ids[spec.name] = sid
            for rule in spec.match:
                rule = dict(rule, sfc=sid)
                if "port" in rule:
                    rule["in_port"] = self.ports[rule.pop("port")]
                rules.append(rule)
            if spec.tag is not None:
                self.router.set_tag(spec.tag, sid)
            if not spec.match and spec.tag is None:
                self.router.set_default_sfc(sid)
        self.router.set_rules(rules)
        self.router.launch(self.dataplane.config.router_lcore)
        for spec, built in zip(self.sfcs, self.built):
            self.managers[spec.name] = InstanceManager(
                self.pool, self.router, built.compiled, sfc_id=self.sfc_ids[spec.name],
                warm_s=node.warm_s).start()

    def scale(self, sfc: str, n: int):
        self.managers[sfc].scale(n)

    def stats(self) -> dict:
        """Counters by port and SFC name, with each SFC's running instances."""
        st = self.router.stats()
        by_id = {v: k for k, v in self.ports.items()}
        ports = {by_id[pid]: c for pid, c in st["ports"].items() if pid in by_id}
        sfcs = {name: dict(st["sfcs"][sid], instances=self.managers[name].count())
                for name, sid in self.sfc_ids.items()}
        return {"node": self.spec.name, "ports": ports, "sfcs": sfcs}

    def close(self):
        for manager in self.managers.values():
            manager.close()
        self.managers.clear()
        if self.router is not None:
            self.router.stop()
            self.router = None
        for built in self.built:
            built.close(self.slots)
        self.built.clear()
        if self._own_pool and self.pool is not None:
            self.pool.close()
            self.pool = None
        if self._own_ports and self.ports:
            for port in self.ports.values():
                dp.port_close(port)
            self.ports = None
        if self._own_dataplane and self.dataplane is not None:
            self.dataplane.close()
            self.dataplane = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()


def start_from_files(prog: str, node_path: str, sfc_paths: list[str]):
    """For command lines: load, check and start a node from its spec files. Returns
    (node, 0), or (None, exit code) after printing why: 2 a bad spec, 1 a failed start."""
    import sys
    from serpens.common.node_spec import load_node
    from serpens.common.spec import load_sfc

    try:
        node = Node(load_node(node_path), [load_sfc(p) for p in sfc_paths])
    except SpecError as e:
        print(f"{prog}: invalid spec: {e}", file=sys.stderr)
        return None, 2
    try:
        node.start()
    except SpecError as e:
        print(f"{prog}: node {node.spec.name}: {e}", file=sys.stderr)
        return None, 2
    except Exception as e:  # NF build errors, DPDK errors: say which and stop
        print(f"{prog}: node {node.spec.name} did not start: {e}", file=sys.stderr)
        return None, 1
    return node, 0
