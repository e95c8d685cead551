"""The records Serpens keeps in etcd (keys in common/keys.py), typed, each with the one JSON
encoder and decoder that every reader and writer uses (the controller's API and reconciler,
the agent's registration, serpensctl).

Anything may be written under the key prefix (an operator's etcdctl, a bug, a restored
backup): a value that is not JSON, or not the shape this version writes, must cost one
record, not the reconciler's loop nor `get sfc` for every other record. `decode()` raises
MalformedRecord saying what is wrong; callers skip the record and report it (the SFC's
status; the log once per key revision, `Reported`). Fields a record carries that this
version does not know (a newer writer's) are ignored. Well-formed JSON can still hold what
no writer writes and a reader cannot carry (a count of -1 or 2**70, NaN, a name that is no
key or file name): numbers are checked against their protobuf types' ranges (int64, uint32)
and floats must be finite, names must match common/names.py.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import math
import re
from dataclasses import asdict, dataclass, field


from serpens.common.names import NF_NAME, NODE_NAME, SFC_NAME

log = logging.getLogger(__name__)


class MalformedRecord(ValueError):
    """A stored value this version cannot use; str() says why."""


_NUMBER = (int, float)
_REQUIRED = object()
_INT64 = (-(1 << 63), (1 << 63) - 1)   # the protobuf types the records are served as
_COUNT = (0, (1 << 63) - 1)            # int64, never negative (generations, sizes)
_UINT32 = (0, (1 << 32) - 1)           # replicas, instances, pool processes
_WHAT = {int: "an integer", str: "a string", dict: "an object", list: "a list"}


def _object(value: bytes | str) -> dict:
    try:
        record = json.loads(value)
    except (ValueError, RecursionError) as e:
        raise MalformedRecord(f"not JSON ({type(e).__name__}: {str(e)[:80]})") from None
    if not isinstance(record, dict):
        raise MalformedRecord(f"a JSON {type(record).__name__}, not an object")
    return record


def _field(record: dict, name: str, types, where: str = "", default=_REQUIRED,
           bounds: tuple | None = None):
    """record[name], checked to be of `types` (bool is no number); `default` if absent.
    A number must be finite and within `bounds` (lo, hi), or int64 for an integer."""
    if name not in record and default is not _REQUIRED:
        return default
    value = record.get(name)
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in
                                        (types if isinstance(types, tuple) else (types,))):
        raise MalformedRecord(f"{where}{name}: missing or not {_WHAT.get(types, 'a number')}")
    if isinstance(value, float) and not math.isfinite(value):
        raise MalformedRecord(f"{where}{name}: {value} is not a finite number")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        lo, hi = bounds or (_INT64 if isinstance(value, int) else (-math.inf, math.inf))
        if not lo <= value <= hi:
            raise MalformedRecord(f"{where}{name}: {value} is out of range [{lo}, {hi}]")
    return value


def _names(record: dict, name: str, where: str = "", default=_REQUIRED) -> tuple[str, ...]:
    value = _field(record, name, list, where, default)
    if not all(isinstance(n, str) for n in value):
        raise MalformedRecord(f"{where}{name}: not a list of names")
    return tuple(value)


def _check_name(record: dict, name: str | None, pattern: re.Pattern,
                required: bool = True) -> str:
    """The record's own name, which must be the one its key gives (when given) and match
    `pattern`; a record that need not carry it (`required` False) takes the key's."""
    if required or "name" in record or name is None:
        own = _field(record, "name", str)
    else:
        own = name
    if name is not None and own != name:
        raise MalformedRecord(f"name: {own!r} under the key of {name!r}")
    if not pattern.match(own):
        raise MalformedRecord(f"name: {own[:64]!r} is not a valid name ({pattern.pattern})")
    return own


def _encode(fields: dict) -> str:
    return json.dumps(fields, sort_keys=True)


# -- NFs --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class NFRecord:
    """`nfs/<name>`: an NF deployed through the API, compiled and verified when deployed."""
    name: str
    description: str
    source: str                 # the C source, sent to agents with RunSFC
    source_sha256: str
    image_size: int             # bytes of the verified shared object
    created: float
    updated: float

    @classmethod
    def decode(cls, value: bytes | str, name: str | None = None) -> NFRecord:
        r = _object(value)
        return cls(name=_check_name(r, name, NF_NAME),
                   description=_field(r, "description", str),
                   source=_field(r, "source", str),
                   source_sha256=_field(r, "source_sha256", str),
                   image_size=_field(r, "image_size", int, bounds=_COUNT),
                   created=_field(r, "created", _NUMBER), updated=_field(r, "updated", _NUMBER))

    def to_dict(self) -> dict:
        return asdict(self)

    def encode(self) -> str:
        return _encode(self.to_dict())


# -- SFCs -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ScaleRecord:
    replicas: int               # instances the node is asked to run
    min: int
    max: int
    target_pps: float | None = None  # autoscaled: packets/s one instance should take
    changed_at: float = 0.0     # when replicas last changed (the autoscaler's scale-in wait)

    @classmethod
    def decode(cls, r: dict) -> ScaleRecord:
        target = r.get("target_pps")
        if target is not None:
            target = _field(r, "target_pps", _NUMBER, "scale.")
        lo, hi = (_field(r, f, int, "scale.", bounds=_UINT32) for f in ("min", "max"))
        if lo > hi:
            raise MalformedRecord(f"scale: min {lo} > max {hi}")
        return cls(replicas=_field(r, "replicas", int, "scale.", bounds=_UINT32),
                   min=lo, max=hi, target_pps=target,
                   changed_at=_field(r, "changed_at", _NUMBER, "scale.", 0.0))

    def to_dict(self) -> dict:
        out = {"replicas": self.replicas, "min": self.min, "max": self.max}
        if self.target_pps is not None:
            out["target_pps"] = self.target_pps
        if self.changed_at:
            out["changed_at"] = self.changed_at
        return out


@dataclass(frozen=True)
class SFCRecord:
    """`sfcs/<name>`: what the user asked for. `generation` is bumped when the spec's
    document changes (not on a scale); what runs is the SFCStatus."""
    name: str
    spec: str                   # the text as applied (YAML or JSON)
    doc: dict                   # the same, parsed
    nfs: tuple[str, ...]        # the deployed NFs it names (nf: NAME)
    generation: int
    scale: ScaleRecord
    created: float
    updated: float

    @classmethod
    def decode(cls, value: bytes | str, name: str | None = None) -> SFCRecord:
        r = _object(value)
        own = _check_name(r, name, SFC_NAME)
        nfs = _names(r, "nfs")
        bad = next((nf for nf in nfs if not NF_NAME.match(nf)), None)
        if bad is not None:
            raise MalformedRecord(f"nfs: {bad[:64]!r} is not a valid NF name")
        return cls(name=own, spec=_field(r, "spec", str), doc=_field(r, "doc", dict),
                   nfs=nfs, generation=_field(r, "generation", int, bounds=_COUNT),
                   scale=ScaleRecord.decode(_field(r, "scale", dict)),
                   created=_field(r, "created", _NUMBER), updated=_field(r, "updated", _NUMBER))

    def to_dict(self) -> dict:
        return {"name": self.name, "spec": self.spec, "doc": self.doc, "nfs": list(self.nfs),
                "generation": self.generation, "scale": self.scale.to_dict(),
                "created": self.created, "updated": self.updated}

    def encode(self) -> str:
        return _encode(self.to_dict())


@dataclass(frozen=True)
class SFCStatus:
    """`status/<name>`: the leading controller's word on an SFC (phase Pending, Running,
    Degraded or Failed; where it runs, which generation, how many instances)."""
    phase: str
    message: str = ""
    node: str = ""
    generation: int = 0
    instances: int = 0
    # served by several servers: node -> its instances there (`node` the first); else empty
    nodes: tuple[tuple[str, int], ...] = ()
    # checkpoints (docs/state.md): the node `node` ships them to; after a lost node, which
    # one, how old its checkpoint was at the restore (ms, -1: none: started empty), in words
    checkpoint_to: str = ""
    restored_of: str = ""
    restored_age_ms: int = 0
    restore: str = ""
    # routed: the nodes serving it in the order they joined (scale-in removes the last first)
    joined: tuple[str, ...] = ()
    moving_to: str = ""         # a MoveSFC not done yet: the node its flows go to
    moves: int = 0              # MoveSFC moves completed
    stuck: str = ""             # why servers on cordoned nodes cannot leave ("" none)
    move_error: str = ""        # the last move's flows that did not move, and why
    # checkpoints: when the last acknowledged one was taken (Unix ms, the oldest of its
    # nodes'), why they fail now ("" when they succeed)
    checkpoint_unix_ms: int = 0
    checkpoint_error: str = ""
    # served by several nodes: node -> the node it ships its checkpoints to
    checkpoint_peers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def decode(cls, value: bytes | str, name: str | None = None) -> SFCStatus:
        r = _object(value)
        nodes = _field(r, "nodes", dict, default={})
        for node, count in nodes.items():
            if not NODE_NAME.match(node):
                raise MalformedRecord(f"nodes: {node[:64]!r} is not a node name")
            _field(nodes, node, int, "nodes.", bounds=_UINT32)
        peers = _field(r, "checkpoint_peers", dict, default={})
        for node, peer in peers.items():
            if not NODE_NAME.match(node) or not isinstance(peer, str) or \
                    not NODE_NAME.match(peer):
                raise MalformedRecord(f"checkpoint_peers: {node[:64]!r}: not node names")
        joined = _names(r, "joined", default=[])
        for node in joined:
            if not NODE_NAME.match(node):
                raise MalformedRecord(f"joined: {node[:64]!r} is not a node name")
        return cls(phase=_field(r, "phase", str, default=""),
                   message=_field(r, "message", str, default=""),
                   node=_field(r, "node", str, default=""),
                   generation=_field(r, "generation", int, default=0, bounds=_COUNT),
                   instances=_field(r, "instances", int, default=0, bounds=_UINT32),
                   nodes=tuple(sorted(nodes.items())), joined=joined,
                   moving_to=_field(r, "moving_to", str, default=""),
                   moves=_field(r, "moves", int, default=0, bounds=_COUNT),
                   checkpoint_to=_field(r, "checkpoint_to", str, default=""),
                   restored_of=_field(r, "restored_of", str, default=""),
                   restored_age_ms=_field(r, "restored_age_ms", int, default=0),
                   restore=_field(r, "restore", str, default=""),
                   stuck=_field(r, "stuck", str, default=""),
                   move_error=_field(r, "move_error", str, default=""),
                   checkpoint_unix_ms=_field(r, "checkpoint_unix_ms", int, default=0,
                                             bounds=_COUNT),
                   checkpoint_error=_field(r, "checkpoint_error", str, default=""),
                   checkpoint_peers=tuple(sorted(peers.items())))

    def to_dict(self) -> dict:
        out = asdict(self)
        out["nodes"] = dict(self.nodes)
        out["joined"] = list(self.joined)
        out["checkpoint_peers"] = dict(self.checkpoint_peers)
        for empty in ("nodes", "joined", "moving_to", "moves",  # as older versions wrote them
                      "checkpoint_to", "restored_of", "restored_age_ms", "restore",
                      "stuck", "move_error", "checkpoint_unix_ms", "checkpoint_error",
                      "checkpoint_peers"):
            if not out[empty]:
                del out[empty]
        return out

    def encode(self) -> str:
        return _encode(self.to_dict())

    def to_message(self):
        from serpens.proto.serpens.v1 import serpens_pb2 as pb
        return pb.SFCStatus(**self.to_dict())


# -- nodes ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SFCLoad:
    in_pps: float = 0.0         # packets/s over the agent's last report period
    out_pps: float = 0.0
    instances: int = 0


@dataclass(frozen=True)
class PortLoad:
    rx_pps: float = 0.0
    tx_pps: float = 0.0


@dataclass(frozen=True)
class NodeLoad:
    sfcs: dict[str, SFCLoad] = field(default_factory=dict)
    ports: dict[str, PortLoad] = field(default_factory=dict)

    @classmethod
    def decode(cls, r: dict) -> NodeLoad:
        def table(kind, where, fields):
            rows = _field(r, where, dict, "load.", {})
            out = {}
            for name, row in rows.items():
                if not isinstance(row, dict):
                    raise MalformedRecord(f"load.{where}.{name}: not an object")
                out[name] = kind(**{f: _field(row, f, types, f"load.{where}.{name}.", 0,
                                              bounds=(0, _UINT32[1] if types is int
                                                      else math.inf))
                                    for f, types in fields.items()})
            return out
        return cls(sfcs=table(SFCLoad, "sfcs", {"in_pps": _NUMBER, "out_pps": _NUMBER,
                                                "instances": int}),
                   ports=table(PortLoad, "ports", {"rx_pps": _NUMBER, "tx_pps": _NUMBER}))


@dataclass(frozen=True)
class NodeRecord:
    """`nodes/<name>`: an agent's node, put under the agent's lease (gone when it dies) and
    refreshed with its load every report period."""
    name: str
    address: str                # the Agent service's host:port
    ports: tuple[str, ...] = ()
    input: tuple[str, ...] = ()
    pool: int = 0               # pool processes: instances it can run at once
    cpus: str = ""
    reported_at: float = 0.0
    load: NodeLoad = field(default_factory=NodeLoad)
    underlay: Underlay | None = None   # the node's VXLAN address (Node spec.underlay)

    @classmethod
    def decode(cls, value: bytes | str, name: str | None = None) -> NodeRecord:
        r = _object(value)
        address = _field(r, "address", str)
        if not address:
            raise MalformedRecord("address: empty (the agent's host:port)")
        underlay = _field(r, "underlay", dict, default=None)
        return cls(name=_check_name(r, name, NODE_NAME, required=False), address=address,
                   ports=_names(r, "ports", default=[]), input=_names(r, "input", default=[]),
                   pool=_field(r, "pool", int, default=0, bounds=_UINT32),
                   cpus=_field(r, "cpus", str, default=""),
                   reported_at=_field(r, "reported_at", _NUMBER, default=0.0),
                   load=NodeLoad.decode(_field(r, "load", dict, default={})),
                   underlay=None if underlay is None else Underlay.decode(underlay))

    def to_dict(self) -> dict:
        out = asdict(self)
        out["ports"], out["input"] = list(self.ports), list(self.input)
        if self.underlay is None:
            del out["underlay"]
        return out

    def encode(self) -> str:
        return _encode(self.to_dict())


@dataclass(frozen=True)
class CordonRecord:
    """`cordons/<node>`: the node takes no new placement and everything it serves is moved
    off it (Serpens.DrainNode; deleted by UndrainNode). Not under a lease: a drained node
    stays drained across agent and controller restarts."""
    node: str
    since: float = 0.0          # when it was cordoned (time.time())

    @classmethod
    def decode(cls, value: bytes | str, name: str | None = None) -> CordonRecord:
        r = _object(value)
        node = _field(r, "node", str)
        if not NODE_NAME.match(node) or (name is not None and node != name):
            raise MalformedRecord(f"node: {node[:64]!r} is not this key's node name")
        return cls(node=node, since=_field(r, "since", _NUMBER, default=0.0))

    def to_dict(self) -> dict:
        return asdict(self)

    def encode(self) -> str:
        return _encode(self.to_dict())


@dataclass(frozen=True)
class MoveRecord:
    """`moves/<sfc>`: Serpens.MoveSFC asked for every flow of the SFC to go to `node`; the
    leader deletes it when the SFC is served by `node` alone (or the SFC is gone)."""
    sfc: str
    node: str
    asked_at: float = 0.0
    # the nodes serving it when the move was asked: each must hand its flows over (one
    # lost meanwhile lost them: the status says so)
    sources: tuple[str, ...] = ()

    @classmethod
    def decode(cls, value: bytes | str, name: str | None = None) -> MoveRecord:
        r = _object(value)
        sfc, node = _field(r, "sfc", str), _field(r, "node", str)
        if not SFC_NAME.match(sfc) or (name is not None and sfc != name):
            raise MalformedRecord(f"sfc: {sfc[:64]!r} is not this key's SFC name")
        if not NODE_NAME.match(node):
            raise MalformedRecord(f"node: {node[:64]!r} is not a node name")
        sources = _names(r, "sources", default=[])
        for source in sources:
            if not NODE_NAME.match(source):
                raise MalformedRecord(f"sources: {source[:64]!r} is not a node name")
        return cls(sfc=sfc, node=node, asked_at=_field(r, "asked_at", _NUMBER, default=0.0),
                   sources=tuple(sources))

    def to_dict(self) -> dict:
        out = asdict(self)
        out["sources"] = list(self.sources)
        if not self.sources:
            del out["sources"]     # as older versions wrote it
        return out

    def encode(self) -> str:
        return _encode(self.to_dict())


# -- gateways and routes (DESIGN §7) ----------------------------------------------------------

_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_TAG = (1, (1 << 24) - 1)      # a VXLAN SFC tag (24 bits; 0 is "none")
_VNI = (0, (1 << 24) - 1)


def _ipv4(r: dict, name: str, where: str = "") -> str:
    value = _field(r, name, str, where)
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise MalformedRecord(f"{where}{name}: {value[:64]!r} is not an IPv4 address") from None


def _mac(r: dict, name: str, where: str = "") -> str:
    value = _field(r, name, str, where)
    if not _MAC.match(value):
        raise MalformedRecord(f"{where}{name}: {value[:64]!r} is not a MAC (aa:bb:cc:dd:ee:ff)")
    return value


@dataclass(frozen=True)
class Underlay:
    """A server's or gateway's address on the underlay network (VXLAN)."""
    ip: str
    mac: str                    # lower-case aa:bb:cc:dd:ee:ff
    mtu: int = 1500

    @classmethod
    def decode(cls, r: dict, where: str = "underlay.") -> Underlay:
        return cls(ip=_ipv4(r, "ip", where), mac=_mac(r, "mac", where),
                   mtu=_field(r, "mtu", int, where, 1500, bounds=(51, 9216)))


@dataclass(frozen=True)
class GatewayRecord:
    """`gateways/<name>`: a gateway, put under its lease (gone when it dies)."""
    name: str
    address: str                # the Gateway service's host:port
    underlay: Underlay
    ingress: tuple[str, ...] = ()   # its ingress port names (spec.match `port` names these)
    term: int = 0               # the route term it last applied (0: none yet)
    reported_at: float = 0.0

    @classmethod
    def decode(cls, value: bytes | str, name: str | None = None) -> GatewayRecord:
        r = _object(value)
        address = _field(r, "address", str)
        if not address:
            raise MalformedRecord("address: empty (the gateway's host:port)")
        return cls(name=_check_name(r, name, NODE_NAME, required=False), address=address,
                   underlay=Underlay.decode(_field(r, "underlay", dict)),
                   ingress=_names(r, "ingress", default=[]),
                   term=_field(r, "term", int, default=0, bounds=_COUNT),
                   reported_at=_field(r, "reported_at", _NUMBER, default=0.0))

    def to_dict(self) -> dict:
        out = asdict(self)
        out["ingress"] = list(self.ingress)
        return out

    def encode(self) -> str:
        return _encode(self.to_dict())


@dataclass(frozen=True)
class RouteServer:
    node: str
    ip: str
    mac: str
    weight: int                 # its instances of the SFC (at least 1)


@dataclass(frozen=True)
class RouteRecord:
    """`routes/<sfc>`: how the gateway reaches an SFC (the leader's, fenced): its tag (unique
    in the cluster, kept for the SFC's life), VNI, classification (spec match and VLAN tag, as
    the router's) and the servers serving it, weighted by their instances."""
    sfc: str
    tag: int
    vni: int = 0
    match: tuple = ()           # spec.match rules (dicts), as in the spec
    vlan: int = 0               # spec.tag (0: none)
    servers: tuple[RouteServer, ...] = ()

    @classmethod
    def decode(cls, value: bytes | str, name: str | None = None) -> RouteRecord:
        r = _object(value)
        sfc = _field(r, "sfc", str)
        if name is not None and sfc != name:
            raise MalformedRecord(f"sfc: {sfc!r} under the key of {name!r}")
        if not SFC_NAME.match(sfc):
            raise MalformedRecord(f"sfc: {sfc[:64]!r} is not a valid SFC name")
        match = _field(r, "match", list, default=[])
        if not all(isinstance(rule, dict) for rule in match):
            raise MalformedRecord("match: not a list of rules")
        servers = []
        for i, row in enumerate(_field(r, "servers", list, default=[])):
            where = f"servers[{i}]."
            if not isinstance(row, dict):
                raise MalformedRecord(f"servers[{i}]: not an object")
            node = _field(row, "node", str, where)
            if not NODE_NAME.match(node):
                raise MalformedRecord(f"{where}node: {node[:64]!r} is not a node name")
            servers.append(RouteServer(node, _ipv4(row, "ip", where), _mac(row, "mac", where),
                                       _field(row, "weight", int, where, bounds=(1, 1 << 16))))
        return cls(sfc=sfc, tag=_field(r, "tag", int, bounds=_TAG),
                   vni=_field(r, "vni", int, default=0, bounds=_VNI), match=tuple(match),
                   vlan=_field(r, "vlan", int, default=0, bounds=(0, 4095)),
                   servers=tuple(servers))

    def to_dict(self) -> dict:
        return {"sfc": self.sfc, "tag": self.tag, "vni": self.vni, "match": list(self.match),
                "vlan": self.vlan, "servers": [asdict(s) for s in self.servers]}

    def encode(self) -> str:
        return _encode(self.to_dict())

    def to_message(self):
        from serpens.proto.serpens.v1 import serpens_pb2 as pb
        return pb.Route(sfc=self.sfc, tag=self.tag, vni=self.vni,
                        match_json=json.dumps(list(self.match), sort_keys=True),
                        vlan=self.vlan,
                        servers=[pb.RouteServer(**asdict(s)) for s in self.servers])

    @classmethod
    def from_message(cls, m) -> RouteRecord:
        """A pushed Route, checked as a stored one (MalformedRecord names the field)."""
        try:
            match = json.loads(m.match_json or "[]")
        except ValueError as e:
            raise MalformedRecord(f"match_json: not JSON ({e})") from None
        except RecursionError:
            raise MalformedRecord("match_json: nested too deeply") from None
        return cls.decode(json.dumps({"sfc": m.sfc, "tag": m.tag, "vni": m.vni,
                                      "match": match, "vlan": m.vlan,
                                      "servers": [{"node": s.node, "ip": s.ip, "mac": s.mac,
                                                   "weight": s.weight} for s in m.servers]}))


RECORDS = {"nf": NFRecord, "sfc": SFCRecord, "status": SFCStatus, "node": NodeRecord,
           "gateway": GatewayRecord, "route": RouteRecord, "cordon": CordonRecord,
           "move": MoveRecord}


def decode(kind: str, value: bytes | str, name: str | None = None):
    """The record of `kind` ("nf", "sfc", "status", "node", "gateway", "route") stored as `value` under the key
    of `name` (None: not checked); MalformedRecord if it is not that shape."""
    return RECORDS[kind].decode(value, name)


class Reported:
    """Logs each malformed key once per revision (a reconcile every few seconds, or every
    List, would repeat it)."""

    def __init__(self):
        self._seen: dict[str, int] = {}

    def __call__(self, key: str, revision: int, error: MalformedRecord) -> None:
        if self._seen.get(key) != revision:
            self._seen[key] = revision
            log.warning("skipping malformed record %s (revision %d): %s", key, revision, error)

    def forget(self, key: str) -> None:
        self._seen.pop(key, None)
