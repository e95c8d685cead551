"""One server's data plane from specs: a Node config and the SFCs it runs (DESIGN §3).

The node opens the config's ports (any DPDK device string) in the agent's DPDK primary,
compiles every SFC's NFs, and gives the router one SFC per spec: its output port (the SFC's
`output`, else the node's), its match rules (in spec order across SFCs: first match wins),
its SFC tag, and at most one SFC without either as the default for everything else. Each SFC
gets an instance manager: instances start when its packets arrive, stop after `warm_s` idle,
and `scale(sfc, n)` runs n of them. Cross-references (ports, tags, defaults) are checked before
anything starts; errors are SpecError naming the SFC and field.

A node with `spec.underlay` is a server behind the gateway (DESIGN §7): the router takes VXLAN
frames addressed to the underlay address on that port, and an SFC applied with a VXLAN route
(agent/vxlan.py) gets the frames carrying its tag; with `output: gateway` its packets go back to
the gateway encapsulated on the underlay port. The gateway's address is the node's (the last
route given sets it).

Usage metering (agent/usage.py): the node keeps per-SFC counters for its lifetime
(usage_counters(): packets and bytes its instances processed, their CPU time, its tables' bytes)
that never go back while it runs, whatever is applied, replaced or removed meanwhile: what a
removed SFC slot or a replaced instance manager counted is carried over under its name. Its
UsageMeter samples them every `usage_s` into totals persisted in the state directory.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

from serpens.common.named_locks import NamedLocks
from serpens.common.names import node_file_prefix
from serpens.common.node_spec import NodeSpec
from serpens.common.port_devices import explain
from serpens.common.spec import OUTPUT_GATEWAY, SFCSpec, SpecError
from serpens.runtime_cy import _dataplane as dp
from serpens.runtime_cy.builder import AreaAllocator

from .dataplane import Dataplane, DataplaneConfig
from .faults import CrashPolicy
from .instance_manager import InstanceManager
from .process_pool import ProcessPool
from .sfc_builder import build_sfc
from .state_manager import StateManager
from .usage import UsageMeter, table_bytes
from .vxlan import VxlanRoute


class StaleSpec(Exception):
    """An older (incarnation, generation) of an SFC than the node runs: a deposed leader's
    late call."""


class NoSuchSFC(LookupError):
    """The node runs no SFC of that name (it may have been stopped meanwhile)."""


class SFCConflict(SpecError):
    """The SFC fits the node, but not beside another SFC it runs (a second default, a tag
    taken): another node, or the same one later, may take it."""


def check_references(node: NodeSpec, sfcs: list[SFCSpec],
                     vxlan: dict[str, VxlanRoute] | None = None):
    """The SFCs fit the node: known ports, an output for each, distinct tags, one default;
    `vxlan` (SFC name -> its route) needs the node's underlay, one tag per SFC."""
    names, tags, defaults, vx_tags = set(), {}, [], {}
    vxlan = vxlan or {}
    underlay = node.underlay.port if node.underlay else None
    for spec in sfcs:
        where = f"sfc {spec.name}: spec"
        if spec.name in names:
            raise SpecError(f"sfc {spec.name}: metadata.name", "two SFCs of that name")
        names.add(spec.name)
        route = vxlan.get(spec.name)
        if spec.output == OUTPUT_GATEWAY:
            if underlay is None:
                raise SpecError(f"{where}.output", f"the gateway is reached over VXLAN, and "
                                f"node {node.name} has no underlay (spec.underlay)")
            if route is None:
                raise SpecError(f"{where}.output", "the gateway is reached over VXLAN, and "
                                "the SFC comes with no VXLAN route (RunSFCRequest.vxlan)")
        elif spec.output is not None and spec.output not in node.ports:
            raise SpecError(f"{where}.output", f"node {node.name} has no port {spec.output!r}")
        elif spec.output is None and node.output is None:
            raise SpecError(f"{where}.output", f"node {node.name} has no default output port")
        elif (spec.output or node.output) == underlay:
            raise SpecError(f"{where}.output", f"{underlay!r} is node {node.name}'s underlay "
                            "port (VXLAN only; output: gateway sends there encapsulated)")
        if route is not None:
            if underlay is None:
                raise SpecError(f"sfc {spec.name}: vxlan",
                                f"node {node.name} has no underlay (spec.underlay)")
            if route.tag in vx_tags:
                raise SFCConflict(f"sfc {spec.name}: vxlan.tag",
                                  f"SFC {vx_tags[route.tag]} has VXLAN tag {route.tag}")
            vx_tags[route.tag] = spec.name
        # a routed SFC's rules are the gateway's (its packets come here by tag)
        for i, rule in enumerate(spec.match if route is None else ()):
            if "port" in rule and rule["port"] not in node.input:
                raise SpecError(f"{where}.match[{i}].port",
                                f"not an input port of node {node.name}: {rule['port']!r}")
        if spec.tag is not None:
            if spec.tag in tags:
                raise SFCConflict(f"{where}.tag", f"SFC {tags[spec.tag]} has tag {spec.tag}")
            tags[spec.tag] = spec.name
        if not spec.match and spec.tag is None:
            defaults.append(spec.name)
    if len(defaults) > 1:
        raise SFCConflict(f"sfc {defaults[-1]}: spec.match",
                        f"only one SFC may take unmatched packets, and {defaults[0]} does")


def start_dataplane(node: NodeSpec) -> Dataplane:
    """The DPDK primary `node` asks for: its ports' devices, CPUs and state directory."""
    return Dataplane(DataplaneConfig(
        file_prefix=node_file_prefix(node.name, os.getpid()),
        vdevs=tuple(node.ports.values()), cpus=node.cpus,
        router_cpus=str(node.router_cpu), state_dir=node.state_dir)).start()


def open_ports(node: NodeSpec, dataplane: Dataplane, into: dict) -> dict:
    """Open `node`'s ports in `dataplane` into `into` (name -> DPDK port id), each as soon as
    it is open (so a caller can close those when a later one fails: SpecError naming it)."""
    for name in node.ports:
        try:
            into[name] = dp.port_open(node.device_name(name), dataplane.mempool)
        except OSError as e:
            raise SpecError(f"spec.ports.{name}", explain(node.ports[name], str(e))) from None
    return into


@dataclass
class _Running:
    """One SFC on this node: its spec, images, router SFC id and instance manager."""
    spec: SFCSpec
    built: object
    sfc_id: int
    manager: InstanceManager
    generation: int = 0
    incarnation: int = 0     # the SFC record's create revision (RunSFCRequest)
    replicas: int = 0        # instances last asked for (traffic also starts and stops them)
    vxlan: VxlanRoute | None = None   # its tag on the underlay (None: local traffic only)


def _same_routing(old: _Running, spec: SFCSpec, vxlan: VxlanRoute | None) -> bool:
    """Routed alike: the gateway's address is no part of it (set_gateway changes it)."""
    a = old.spec
    return (a.match, a.tag, a.output, _tagged(old.vxlan)) == \
        (spec.match, spec.tag, spec.output, _tagged(vxlan))


def _tagged(vxlan: VxlanRoute | None):
    return None if vxlan is None else (vxlan.tag, vxlan.vni)


class Node:
    def __init__(self, node: NodeSpec, sfcs: list[SFCSpec], *, dataplane: Dataplane = None,
                 pool: ProcessPool = None, ports: dict | None = None,
                 areas: AreaAllocator | None = None, usage_s: float = 1.0,
                 usage_path: str | None = None):
        """`dataplane`, `pool`, `ports` (name -> DPDK port id) and `areas` (the image area
        allocator of whoever else uses that pool) may be given (tests); otherwise the node
        makes its own. `sfcs` start with the node; apply_sfc()/remove_sfc() change them.
        Usage is sampled every `usage_s` (0: only when meter.sample() is called) and kept in
        `usage_path` (default: `.usage-<node>.json` in the state directory)."""
        check_references(node, sfcs)
        self.spec, self.initial = node, sfcs
        self.dataplane, self.pool, self.ports = dataplane, pool, ports
        self._own_dataplane, self._own_pool = dataplane is None, pool is None
        self._own_ports = ports is None
        # (`is None`: an allocator with nothing handed out yet is empty, and falsy)
        self.areas = areas if areas is not None else AreaAllocator()
        self.running: dict[str, _Running] = {}   # in routing order (rules: first match wins)
        self.router = None
        self.underlay_mac = None   # the underlay port's own MAC, once open
        self.gateway = None        # (ip, mac) the router sends `output: gateway` packets to
        self._lock = threading.RLock()
        self._builds = threading.Semaphore(1)
        self._sfc_locks = NamedLocks()   # one SFC's calls (run, stop, state), one at a time
        self._router_lock = threading.Lock()  # stats() vs close()
        self.usage_s, self.usage_path, self.meter = usage_s, usage_path, None
        self._usage_lock = threading.Lock()   # usage_counters() vs SFCs coming and going
        self._carried: dict[str, list] = {}   # SFC -> [packets, bytes, busy cycles] of the past
        self._leaving: dict[str, _Running] = {}  # being removed: still counted as running

    @property
    def sfcs(self) -> list[SFCSpec]:
        return [r.spec for r in self.running.values()]

    @property
    def managers(self) -> dict[str, InstanceManager]:
        return {name: r.manager for name, r in self.running.items()}

    @property
    def sfc_ids(self) -> dict[str, int]:
        return {name: r.sfc_id for name, r in self.running.items()}

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
            self.dataplane = start_dataplane(node)
        if self.ports is None:
            self.ports = {}
            open_ports(node, self.dataplane, self.ports)
        if self.pool is None:
            self.pool = ProcessPool(self.dataplane, node.pool).start()
        self.router = dp.Router([self.ports[p] for p in node.input], wake_us=node.wake_us,
                                stall_us=node.stall_us, hold_ms=node.hold_ms)
        for name, pps in node.pace.items():
            self.router.pace(self.ports[name], pps)
        if node.underlay is not None:
            port = self.ports[node.underlay.port]
            self.underlay_mac = dp.port_mac(port)
            self.router.set_underlay(port, node.underlay.ip, self.underlay_mac,
                                     node.underlay.mtu)
        self.router.launch(self.dataplane.config.router_lcore)
        self.meter = UsageMeter(self.usage_counters, self.usage_path or os.path.join(
            self.dataplane.config.state_dir, f".usage-{node.name}.json"),
            period_s=self.usage_s).start()
        for spec in self.initial:
            self.apply_sfc(spec)

    # ---- SFCs -----------------------------------------------------------------------------

    def apply_sfc(self, spec: SFCSpec, deployed: dict | None = None,
                  replicas: int | None = None, generation: int = 0, incarnation: int = 0,
                  vxlan=None):
        """Run `spec` (new, or replacing the SFC of that name); `deployed` maps deployed NF
        names to their source; `replicas` instances now (None: on demand); `vxlan` its
        route on the underlay (anything with VxlanRoute's fields; None or tag 0: none). A
        replacement with the same match, tag, output and VXLAN route keeps the SFC's routing
        and flows: its old instances drain, packets wait in the router's hold queue, the new
        ones take over; otherwise the old SFC is removed first. Raises SpecError (nothing
        changed) for a spec or route that does not fit the node, NFBuildError/
        NFRefusedError for its NFs."""
        # (a stop or another run of this SFC waits until this one is built and started;
        # calls for other SFCs do not)
        with self._sfc_locks.hold(spec.name):
            return self._apply_sfc(spec, deployed, replicas, generation, incarnation,
                                   VxlanRoute.of(vxlan))

    def _apply_sfc(self, spec: SFCSpec, deployed, replicas, generation: int,
                   incarnation: int, vxlan: VxlanRoute | None):
        with self._lock:
            kept = self._kept(spec, replicas, generation, incarnation, vxlan)
            if kept is not None:
                return kept
            self._check_fits(spec, vxlan)
        # Compiled without the node's lock: another SFC's calls (scale, stop, state) do not
        # wait for this one's compiler; the other SFCs it must fit with may have changed
        # meanwhile, so they are checked again below (this SFC cannot: its lock is held).
        # One build at a time (the compiler shares the node's CPUs with its packets).
        with self._builds:
            built = build_sfc(spec, self.areas, deployed)
        with self._lock:
            try:
                self._check_fits(spec, vxlan)
            except BaseException:
                built.close(self.areas)
                raise
            old = self.running.get(spec.name)
            manager = added = None
            try:
                in_place = old is not None and _same_routing(old, spec, vxlan)
                if in_place:
                    count = old.manager.count()
                    old.manager.close()
                    old.built.close(self.areas)
                    sfc_id = old.sfc_id
                else:
                    if old is not None:
                        self.remove_sfc(spec.name)
                    count = 0
                    sfc_id = added = self.router.add_sfc(self._out_port(spec))
                warm_s = spec.scale.warm_s if spec.scale and spec.scale.warm_s else \
                    self.spec.warm_s
                faults = spec.faults
                manager = InstanceManager(
                    self.pool, self.router, built.compiled, sfc_id=sfc_id, warm_s=warm_s,
                    budget_ms=faults.batch_ms,
                    crashes=CrashPolicy(max_restarts=faults.restarts,
                                        window_s=faults.window_s)).start()
                if vxlan is not None:
                    self._set_gateway(vxlan)
                    if not in_place:  # underlay frames with its tag are its from now on
                        self.router.set_sfc_vxlan(sfc_id, vxlan.tag, vxlan.vni,
                                                  to_gateway=spec.output == OUTPUT_GATEWAY)
            except BaseException:
                if manager is not None:
                    manager.close()
                if added is not None:
                    self.router.remove_sfc(added)
                built.close(self.areas)
                raise
            entry = _Running(spec, built, sfc_id, manager, generation=generation,
                             replicas=replicas or 0, incarnation=incarnation, vxlan=vxlan)
            with self._usage_lock:
                if in_place:  # the router's counters go on; the old manager's CPU is past
                    self._carry(spec.name, busy=old.manager.busy.cycles())
                self.running[spec.name] = entry
            if not in_place:
                self._route()
            want = replicas if replicas is not None else count
            if want:
                manager.scale(want)
            return entry

    def _kept(self, spec: SFCSpec, replicas, generation: int, incarnation: int,
              vxlan) -> _Running | None:
        """Under the lock, before apply_sfc builds: StaleSpec if the node runs a newer
        generation; the running entry when only the gateway's address (or nothing) changed,
        which is then updated in place (nothing to build)."""
        old = self.running.get(spec.name)
        if old is not None and (incarnation, generation) < (old.incarnation, old.generation):
            raise StaleSpec(f"node {self.spec.name} runs {spec.name} generation "
                            f"{old.generation} (incarnation {old.incarnation}), newer "
                            f"than {generation} ({incarnation})")
        if old is not None and (incarnation, generation) == (old.incarnation,
                                                             old.generation) and \
                old.vxlan is not None and vxlan is not None and \
                _tagged(old.vxlan) == _tagged(vxlan) and old.spec == spec:
            # only the gateway's address changed: the SFC keeps its flows and instances
            self._set_gateway(vxlan)
            old.vxlan = vxlan
            if replicas is not None and replicas != old.replicas:
                old.manager.scale(replicas)
                old.replicas = replicas
            return old
        return None

    def _check_fits(self, spec: SFCSpec, vxlan):
        """Under the lock, before apply_sfc builds and again before it runs what it built:
        SpecError if `spec` does not fit beside the node's other SFCs (ports, tags, match)."""
        others = [r for r in self.running.values() if r.spec.name != spec.name]
        check_references(self.spec, [r.spec for r in others] + [spec],
                         {r.spec.name: r.vxlan for r in others if r.vxlan} |
                         ({spec.name: vxlan} if vxlan else {}))

    def _out_port(self, spec: SFCSpec) -> int:
        """The DPDK port `spec`'s packets leave by (`output: gateway`: the underlay port)."""
        if spec.output == OUTPUT_GATEWAY:
            return self.ports[self.spec.underlay.port]
        return self.ports[spec.output or self.spec.output]

    def _set_gateway(self, vxlan: VxlanRoute):
        """The node's gateway is the last route's: a new address replaces the old one."""
        if self.gateway != (vxlan.gateway_ip, vxlan.gateway_mac):
            self.router.set_gateway(vxlan.gateway_ip, vxlan.gateway_mac)
            self.gateway = (vxlan.gateway_ip, vxlan.gateway_mac)

    def remove_sfc(self, name: str, timeout: float = 5.0):
        """Stop routing to SFC `name`, let its held packets through, retire its instances
        and forget it. Its state stays in the state manager's files."""
        with self._sfc_locks.hold(name), self._lock:
            with self._usage_lock:
                entry = self._leaving[name] = self.running.pop(name)
            self._route()
            if entry.vxlan is not None:
                self.router.clear_sfc_vxlan(entry.sfc_id)
            self.router.quiesce()
            deadline = time.monotonic() + timeout
            while self.router.held(entry.sfc_id) and time.monotonic() < deadline:
                time.sleep(0.001)  # the manager starts an instance for them if none runs
            entry.manager.close()
            if self.router.held(entry.sfc_id):  # no pool process to take them: say so
                raise RuntimeError(f"sfc {name}: packets still held after {timeout}s")
            with self._usage_lock:
                self._carry_all(name, entry)
                del self._leaving[name]
            self.router.remove_sfc(entry.sfc_id)
            entry.built.close(self.areas)

    def _route(self):
        """Give the router every running SFC's rules (in order), tags and the default."""
        rules, default, tags = [], -1, {}
        for entry in self.running.values():
            spec = entry.spec
            for rule in spec.match if entry.vxlan is None else ():  # routed: the gateway's
                rule = dict(rule, sfc=entry.sfc_id)
                if "port" in rule:
                    rule["in_port"] = self.ports[rule.pop("port")]
                rules.append(rule)
            if spec.tag is not None:
                tags[spec.tag] = entry.sfc_id
            if not spec.match and spec.tag is None:
                default = entry.sfc_id
        self.router.set_rules(rules)
        for vlan, sfc_id in tags.items():
            self.router.set_tag(vlan, sfc_id)
        for vlan in set(self._tags) - set(tags):
            self.router.set_tag(vlan, -1)
        self._tags = tags
        self.router.set_default_sfc(default)

    _tags: dict = {}

    # Calls on one SFC's instances and tables hold its lock, not the node's: one SFC's long
    # table copy or instance start never holds up another's (the router's and the pool's
    # own calls are safe from several threads: each SFC's instance manager makes them).

    def scale(self, sfc: str, n: int):
        with self._sfc_locks.hold(sfc):
            self.running[sfc].manager.scale(n)
            self.running[sfc].replicas = n

    def _entry(self, sfc: str) -> _Running:
        try:
            return self.running[sfc]
        except KeyError:
            raise NoSuchSFC(f"node {self.spec.name} runs no SFC {sfc!r}") from None

    def merge_state(self, sfc: str) -> int:
        """SFC `sfc`'s running instances merge their state now; how many did."""
        with self._sfc_locks.hold(sfc):
            return self._entry(sfc).manager.merge_state()

    def snapshot_state(self, sfc: str, nf: str) -> list[tuple[str, bytes]]:
        """All tables of NF `nf` of SFC `sfc`, copied while its instances are stopped."""
        with self._sfc_locks.hold(sfc):
            entry = self._entry(sfc)
            with entry.manager.paused():
                return self.state.read_nf(entry.spec.state_namespace(nf))

    def restore_state(self, sfc: str, nf: str, tables: list[tuple[str, bytes]]):
        """Make `tables` all the state of NF `nf` of SFC `sfc` (StateError: nothing changed),
        while its instances are stopped."""
        with self._sfc_locks.hold(sfc):
            entry = self._entry(sfc)
            with entry.manager.paused():
                self.state.replace_nf(entry.spec.state_namespace(nf), tables)

    def reset_state(self, sfc: str, nf: str, table: str = "") -> list[str]:
        """Delete table `table` (all tables if empty) of NF `nf` of SFC `sfc` while its
        instances are stopped; the next instances create them again, empty. Returns the
        tables deleted."""
        with self._sfc_locks.hold(sfc):
            entry = self._entry(sfc)
            with entry.manager.paused():
                return self.state.drop(entry.spec.state_namespace(nf), table or None)

    # ---- usage ----------------------------------------------------------------------------

    def _carry(self, name: str, packets: int = 0, nbytes: int = 0, busy: int = 0):
        c = self._carried.setdefault(name, [0, 0, 0])
        c[0] += packets
        c[1] += nbytes
        c[2] += busy

    def _carry_all(self, name: str, entry: _Running):
        """Keep what `entry` counted (its instances are gone, its router slot is going)."""
        st = self.router.stats()["sfcs"].get(entry.sfc_id) if self.router else None
        self._carry(name, *((st["out"] + st["dropped"], st["bytes"]) if st else (0, 0)),
                    busy=entry.manager.busy.cycles())

    def usage_counters(self) -> dict[str, dict]:
        """Per SFC (running now, or run since the node started): packets and bytes its
        instances processed and their CPU time (s) since the node started (never
        decreasing), and its tables' bytes now (running SFCs; 0 for those gone)."""
        with self._usage_lock:
            with self._router_lock:
                sfcs = self.router.stats()["sfcs"] if self.router else {}
            counted = {name: list(c) for name, c in self._carried.items()}
            running = list(self.running.items()) + list(self._leaving.items())
            for name, r in running:
                c = counted.setdefault(name, [0, 0, 0])
                st = sfcs.get(r.sfc_id)
                if st is not None:
                    c[0] += st["out"] + st["dropped"]
                    c[1] += st["bytes"]
                c[2] += r.manager.busy.cycles()
        hz = dp.tsc_hz()  # (cycles summed first: a float sum could seem to go back)
        out = {name: {"packets": c[0], "bytes": c[1], "cpu_seconds": c[2] / hz,
                      "state_bytes": 0} for name, c in counted.items()}
        state_dir = self.dataplane.config.state_dir if self.dataplane else None
        for name, r in running:
            if state_dir:
                out[name]["state_bytes"] += table_bytes(
                    state_dir, [r.spec.state_namespace(nf) for nf in r.spec.nfs])
        return out

    def usage(self, since: float | None = None) -> dict[str, dict]:
        """Per SFC {packets, bytes, cpu_seconds, state_byte_seconds}: the totals (kept across
        agent restarts), or those since Unix time `since` (from its minute on; at most 24 h
        back). As of the last sample (every usage_s)."""
        return self.meter.usage(since=since)[0] if self.meter else {}

    @property
    def state(self) -> StateManager:
        return StateManager(self.dataplane.config.state_dir)

    def stats(self) -> dict:
        """Counters by port and SFC name, with each SFC's running instances. Not under the
        node's lock, which a run holds while it starts an SFC: load reports and GetNode must
        not wait for it."""
        with self._router_lock:
            st = self.router.stats() if self.router else {"ports": {}, "sfcs": {}, "vxlan": {}}
        running = list(self.running.items())
        by_id = {v: k for k, v in (self.ports or {}).items()}
        ports = {by_id[pid]: c for pid, c in st["ports"].items() if pid in by_id}
        sfcs = {}
        for name, r in running:
            if r.sfc_id in st["sfcs"]:
                phase, message = r.manager.health()
                sfcs[name] = dict(st["sfcs"][r.sfc_id], instances=r.manager.count(),
                                  generation=r.generation, replicas=r.replicas,
                                  incarnation=r.incarnation, phase=phase, message=message,
                                  crashes=r.manager.crashes.total)
        underlay = self.spec.underlay
        return {"node": self.spec.name, "ports": ports, "sfcs": sfcs, "vxlan": st["vxlan"],
                "underlay": None if underlay is None or self.underlay_mac is None else
                {"ip": underlay.ip, "mac": self.underlay_mac, "mtu": underlay.mtu}}

    def router_metrics(self) -> dict | None:
        """The router's busy time, sleeps and sampled latency (agent/metrics.py), None when
        it does not run; under the lock close() takes, so the router outlives the read."""
        with self._router_lock:
            if self.router is None:
                return None
            st = self.router.stats()
            return {"busy_s": st["busy_s"], "sleeps": st["sleeps"],
                    "latency": self.router.latency()}

    def close(self):
        with self._lock:
            for entry in self.running.values():
                entry.manager.close()
            with self._usage_lock:  # what they counted stays for the meter's last sample
                for name, entry in self.running.items():
                    self._carry_all(name, entry)
                with self._router_lock:
                    if self.router is not None:
                        self.router.stop()
                        self.router = None
                running, self.running = self.running, {}
            for entry in running.values():
                entry.built.close(self.areas)
            if self.meter is not None:
                self.meter.close()  # a last sample, written
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


def start_from_files(prog: str, node_path: str, sfc_paths: list[str], **options):
    """For command lines: load, check and start a node from its spec files (`options`:
    Node's keyword arguments). Returns (node, 0), or (None, exit code) after printing why: 2 a
    bad spec, 1 a failed start."""
    import sys
    from serpens.common.node_spec import load_node
    from serpens.common.spec import load_sfc

    try:
        node = Node(load_node(node_path), [load_sfc(p) for p in sfc_paths], **options)
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
