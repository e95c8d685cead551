"""SFC specs: YAML or JSON, validated in full before anything changes (DESIGN §4).

    apiVersion: serpens/v1
    kind: SFC
    metadata:
      name: edge                     # [a-z0-9-], at most 24 characters
    spec:
      nfs:                           # the SFC's NFs by name ([a-z0-9_-], at most 22)
        fw:  {stock: fw, config: {rules: [...], default: deny}}
        ids: {stock: ids, ports: 2, config: {patterns: [attack]}}
        mine: {source: ./mine.c, config_hex: "0102"}   # a path relative to the spec
        dep: {nf: mine2, config_hex: "01"}             # an NF deployed to the controller
      chain: [fw, ids, {distribute: [null, mine], selector: port}]
      match:                         # optional: which packets a node gives this SFC
        - {dst: 198.51.100.0/24, proto: udp, dport: 53-53, port: wan}
      tag: 100                       # optional: packets with this outer VLAN ID (an SFC tag)
      output: lan                    # optional: the node port its packets leave by, or
                                     # `gateway`: back to the gateway over VXLAN
      vni: 0                         # optional: the tenant's VXLAN VNI (0..2^24-1, default 0)
      placement: {spread: 2}         # optional: serve it from up to 2 servers through the
                                     # gateway (replicas split among them; DESIGN §7)
      scale:                         # optional: instances kept in [min, max]; with
        {min: 1, max: 4, target_pps: 2000000, warm_s: 30}  # target_pps: autoscaled
      faults:                        # optional: an instance inside one batch over batch_ms
        {batch_ms: 10, restarts: 5, window_s: 60}  # is killed; over `restarts` crashes in
                                     # window_s and the SFC is Failed (agent/faults.py)
      state: {checkpoint_s: 5}       # optional: its tables checkpointed to another node every
                                     # 5 s (1..3600), restored from there if its node is lost

`chain` items: an NF name; a list (a chain); null (nothing: packets go straight on);
`{distribute: [branch, ...], selector: port|hash}`; `{aggregate: item}`. An NF's state lives
under `<sfc>.<nf>`, shared by every instance of that SFC and kept between runs.
Errors are SpecError("field: message"), the field a path such as `spec.chain[2].distribute[1]`.
The text is bounded before it is parsed (common/documents.py: size, no YAML anchors or
aliases, nesting depth) and a key this version does not know is refused by name at every
level (`spec.scale.foo: unknown key`), so nothing is stored that was not validated.
`match` rules (first match wins, over every SFC of a node in spec order) take `src`, `dst`
(IPv4 or IPv6 prefixes, one version per rule; a rule without addresses takes both), `proto`
(tcp, udp, icmp or a number), `sport`, `dport` (a port or lo-hi) and `port` (the node port it
arrives on); port names are checked against the node (agent/node.py).
`nf: NAME` names an NF deployed through the controller's DeployNF; the controller checks that
it exists. A spec sent to the controller cannot use `source:` (a path on the client).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from serpens.runtime_cy.constants import MAX_PORTS  # an NF's output ports

from .documents import SpecError, load_document
from .limits import LIMITS
from .names import NF_NAME as _NF_NAME
from .names import SFC_NAME as _SFC_NAME

API_VERSION = "serpens/v1"
STOCK_NFS = ("fw", "nat", "mon", "ids", "vpn")
_ENVELOPE = ("apiVersion", "kind", "metadata", "spec")


@dataclass(frozen=True)
class NFSpec:
    name: str
    stock: str | None
    source_path: str | None
    config: bytes
    ports: int
    deployed: str | None = None    # `nf: NAME`: an NF deployed through the controller


@dataclass(frozen=True)
class SFCSpec:
    name: str
    nfs: dict = field(default_factory=dict)   # name -> NFSpec
    chain: object = None                       # validated chain expression (plain data)
    match: tuple = ()                          # rules: dicts for Router.set_rules, `port` a name
    tag: int | None = None                     # outer VLAN ID that selects this SFC
    output: str | None = None                  # node port name (None: the node's default)
    scale: "ScalePolicy | None" = None         # spec.scale (None: replicas as scaled)
    faults: "FaultPolicy" = None               # spec.faults (watchdog, crash limits)
    vni: int = 0                               # the tenant's VXLAN network identifier
    spread: int = 1                            # spec.placement.spread: servers at most
    checkpoint_s: int = 0                      # spec.state.checkpoint_s (0: no checkpoints)
    # The whole document as parsed (plain data), for whoever stores it (the controller).
    document: dict | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if self.faults is None:
            object.__setattr__(self, "faults", FaultPolicy())

    def state_namespace(self, nf: str) -> str:
        return f"{self.name}.{nf}"


def read_file(path: str, limit: int = 16 * LIMITS.spec_bytes) -> str:
    """A spec file's text: at most `limit` characters are read (the parser bounds it again,
    in bytes); one that goes on (/dev/zero, a log) is refused, not read to the end."""
    try:
        with open(path) as f:
            text = f.read(limit + 1)
        if len(text) > limit:
            raise SpecError(path, f"over {limit} characters: not a spec")
        return text
    except OSError as e:
        raise SpecError(path, e.strerror) from None
    except UnicodeDecodeError:
        raise SpecError(path, "not a text file (UTF-8)") from None


def parse_document(text: str, kind: str, name_re, name_rule: str, fields: set):
    """The envelope every serpens/v1 document shares (YAML or JSON: apiVersion, kind,
    metadata.name, a spec mapping of known fields), bounded by common/limits.py before it
    is parsed; returns (name, spec, the whole document)."""
    doc = load_document(text)
    if not isinstance(doc, dict):
        raise SpecError("spec", "a mapping with apiVersion, kind, metadata and spec")
    _refuse_unknown(doc, "", _ENVELOPE)
    if doc.get("apiVersion") != API_VERSION:
        raise SpecError("apiVersion", f"must be {API_VERSION!r}, got {doc.get('apiVersion')!r}")
    if doc.get("kind") != kind:
        raise SpecError("kind", f"must be {kind!r}, got {doc.get('kind')!r}")
    metadata = doc.get("metadata")
    if not isinstance(metadata, dict):
        raise SpecError("metadata", "a mapping with name")
    _refuse_unknown(metadata, "metadata", ("name",))
    name = metadata.get("name")
    if not isinstance(name, str) or not name_re.match(name):
        raise SpecError("metadata.name", name_rule)
    body = doc.get("spec")
    if not isinstance(body, dict):
        raise SpecError("spec", f"a mapping of {', '.join(sorted(fields))}")
    _refuse_unknown(body, "spec", fields)
    return name, body, doc


def _refuse_unknown(mapping: dict, where: str, known) -> None:
    """SpecError naming the first key of `mapping` not in `known`."""
    unknown = sorted((str(k) for k in mapping if k not in known))
    if unknown:
        raise SpecError(f"{where}.{unknown[0]}" if where else unknown[0],
                        f"unknown key (known: {', '.join(sorted(known))})")


def load_sfc(path: str) -> SFCSpec:
    """Read and validate an SFC spec file (YAML or JSON)."""
    text = read_file(path)
    # Offline runs (replay, node) have no controller to resolve `nf: NAME` against.
    return parse_sfc(text, base_dir=os.path.dirname(os.path.abspath(path)),
                     allow_deployed=False)


def parse_sfc(text: str, base_dir: str = ".", *, allow_source: bool = True,
              allow_deployed: bool = True) -> SFCSpec:
    """Validate a spec's text. `allow_source=False` (the controller) refuses `source:` paths,
    which only mean something on the machine that wrote the spec; `allow_deployed=False`
    refuses `nf:` names, which only the controller can resolve."""
    name, body, doc = parse_document(
        text, "SFC", _SFC_NAME, "1-24 characters of a-z, 0-9 and '-', starting and ending "
        "with a letter or digit", {"nfs", "chain", "match", "tag", "output", "scale",
                                   "faults", "vni", "placement", "state"})
    nfs = _parse_nfs(body.get("nfs"), base_dir, allow_source, allow_deployed)
    used: set = set()
    chain = _check_chain(body.get("chain"), "spec.chain", nfs, used)
    unused = sorted(set(nfs) - used)
    if unused:
        raise SpecError(f"spec.nfs.{unused[0]}", "declared but not used in spec.chain")
    tag = body.get("tag")
    if tag is not None and (isinstance(tag, bool) or not isinstance(tag, int)
                            or not 1 <= tag <= 4094):
        raise SpecError("spec.tag", f"a VLAN ID 1..4094, got {tag!r}")
    output = body.get("output")
    if output is not None and (not isinstance(output, str) or not output):
        raise SpecError("spec.output", "the name of a node port")
    vni = body.get("vni", 0)
    if isinstance(vni, bool) or not isinstance(vni, int) or not 0 <= vni < 1 << 24:
        raise SpecError("spec.vni", f"a VXLAN network identifier 0..16777215, got {vni!r}")
    return SFCSpec(name, nfs, chain, _parse_match(body.get("match")), tag, output,
                   parse_scale(body.get("scale")), faults=_parse_faults(body.get("faults")),
                   vni=vni, spread=_parse_placement(body.get("placement")),
                   checkpoint_s=parse_checkpoint_s(body.get("state")), document=doc)


OUTPUT_GATEWAY = "gateway"   # spec.output: back to the gateway, over VXLAN
MAX_SPREAD = 64              # the gateway's servers per SFC (gateway.h)


def _parse_placement(raw) -> int:
    """`spec.placement`: {spread: N}, the most servers the SFC's replicas are split among
    (through the gateway); 1 (the default) keeps it on one node unless that node's pool
    cannot hold the replicas asked for."""
    if raw is None:
        return 1
    if not isinstance(raw, dict):
        raise SpecError("spec.placement", "a mapping such as {spread: 2}")
    _refuse_unknown(raw, "spec.placement", ("spread",))
    spread = raw.get("spread", 1)
    if isinstance(spread, bool) or not isinstance(spread, int) or \
            not 1 <= spread <= MAX_SPREAD:
        raise SpecError("spec.placement.spread", f"servers 1..{MAX_SPREAD}, got {spread!r}")
    return spread


MAX_CHECKPOINT_S = 3600


def parse_checkpoint_s(raw) -> int:
    """`spec.state`: {checkpoint_s: N}, the SFC's tables checkpointed to another node every N
    seconds (1..3600; docs/state.md "Checkpoints"); 0 when absent, the block's or the key's
    (`state: {}`: no checkpoints)."""
    if raw is None:
        return 0
    if not isinstance(raw, dict):
        raise SpecError("spec.state", "a mapping such as {checkpoint_s: 5}")
    _refuse_unknown(raw, "spec.state", ("checkpoint_s",))
    if "checkpoint_s" not in raw:
        return 0
    n = raw["checkpoint_s"]
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CHECKPOINT_S:
        raise SpecError("spec.state.checkpoint_s",
                        f"seconds 1..{MAX_CHECKPOINT_S}, got {n!r}")
    return n


@dataclass(frozen=True)
class ScalePolicy:
    """`spec.scale`: the controller keeps replicas in [min, max], at about `target_pps`
    packets/s per instance when given (autoscaling); `warm_s` overrides the node's warm
    period (idle instances stop after it, down to zero)."""
    min: int = 1
    max: int = 1
    target_pps: float | None = None
    warm_s: float | None = None


def parse_scale(raw) -> ScalePolicy | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise SpecError("spec.scale", "a mapping with min, max, target_pps, warm_s")
    _refuse_unknown(raw, "spec.scale", ("min", "max", "target_pps", "warm_s"))

    def number(key, types, lo, hi, default):
        v = raw.get(key, default)
        if v is not None and (isinstance(v, bool) or not isinstance(v, types)
                              or not lo <= v <= hi):
            raise SpecError(f"spec.scale.{key}", f"a number {lo}..{hi}, got {v!r}")
        return v
    lo = number("min", int, 0, LIMITS.replicas, 1)
    hi = number("max", int, 1, LIMITS.replicas, max(lo, 1))
    if hi < lo:
        raise SpecError("spec.scale.max", f"at least min ({lo}), got {hi}")
    return ScalePolicy(lo, hi, number("target_pps", (int, float), 1, 1e9, None),
                       number("warm_s", (int, float), 0.01, 86400, None))


@dataclass(frozen=True)
class FaultPolicy:
    """`spec.faults`: the watchdog's budget for one batch (1-1000 ms) and how many crashes
    within `window_s` the SFC survives before it is Failed."""
    batch_ms: float = 10.0
    restarts: int = 5
    window_s: float = 60.0


def _parse_faults(raw) -> FaultPolicy:
    if raw is None:
        return FaultPolicy()
    keys = ("batch_ms", "restarts", "window_s")
    if not isinstance(raw, dict):
        raise SpecError("spec.faults", "a mapping with " + ", ".join(keys))
    for key in raw:
        if key not in keys:
            raise SpecError(f"spec.faults.{key}", "unknown field (" + ", ".join(keys) + ")")
    # an untrusted SFC may not switch its watchdog off, nor hold a process for long
    limits = {"batch_ms": ((int, float), 1, 1000), "restarts": (int, 0, 1000000),
              "window_s": ((int, float), 1, 86400)}
    values = {}
    for key, (types, lo, hi) in limits.items():
        v = raw.get(key, getattr(FaultPolicy, key))
        if isinstance(v, bool) or not isinstance(v, types) or not lo <= v <= hi:
            raise SpecError(f"spec.faults.{key}", f"a number {lo}..{hi}, got {v!r}")
        values[key] = v
    return FaultPolicy(**values)


_PROTOS = {"tcp": 6, "udp": 17, "icmp": 1}


def _parse_match(raw) -> tuple:
    import ipaddress
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise SpecError("spec.match", "a list of rules")
    rules = []
    for i, rule in enumerate(raw):
        where = f"spec.match[{i}]"
        if not isinstance(rule, dict):
            raise SpecError(where, "a mapping of src, dst, proto, sport, dport, port")
        _refuse_unknown(rule, where, ("src", "dst", "proto", "sport", "dport", "port"))
        out = {}
        for key in ("src", "dst"):
            if key in rule:
                try:
                    out[key] = str(ipaddress.ip_network(str(rule[key]), strict=False))
                except ValueError:
                    raise SpecError(f"{where}.{key}", f"an IPv4 or IPv6 prefix, got "
                                                      f"{rule[key]!r}") from None
        if len({ipaddress.ip_network(out[k]).version for k in ("src", "dst") if k in out}) > 1:
            raise SpecError(f"{where}.dst", "the same IP version as src")
        if "proto" in rule:
            p = _PROTOS.get(rule["proto"], rule["proto"])
            if isinstance(p, bool) or not isinstance(p, int) or not 0 < p < 256:
                raise SpecError(f"{where}.proto", f"tcp, udp, icmp or 1..255, got {rule['proto']!r}")
            out["proto"] = p
        for key in ("sport", "dport"):
            if key in rule:
                out[key] = _port_range(rule[key], f"{where}.{key}")
        if "port" in rule:
            if not isinstance(rule["port"], str) or not rule["port"]:
                raise SpecError(f"{where}.port", "the name of a node port")
            out["port"] = rule["port"]
        rules.append(out)
    return tuple(rules)


def _port_range(value, where) -> tuple:
    text = str(value)
    lo, _, hi = text.partition("-")
    try:
        lo_i, hi_i = int(lo), int(hi or lo)
    except ValueError:
        raise SpecError(where, f"a port or lo-hi, got {value!r}") from None
    if not 0 <= lo_i <= hi_i <= 65535:
        raise SpecError(where, f"ports 0..65535 with lo <= hi, got {value!r}")
    return (lo_i, hi_i)


def _parse_nfs(raw, base_dir: str, allow_source: bool = True,
               allow_deployed: bool = True) -> dict:
    if not isinstance(raw, dict) or not raw:
        raise SpecError("spec.nfs", "a mapping of NF names to NFs, at least one")
    out = {}
    for name, nf in raw.items():
        where = f"spec.nfs.{name}"
        if not isinstance(name, str) or not _NF_NAME.match(name):
            raise SpecError(where, "NF names are 1-22 characters of a-z, 0-9, '_' and '-'")
        if not isinstance(nf, dict):
            raise SpecError(where, "a mapping with stock or source")
        _refuse_unknown(nf, where, ("stock", "source", "nf", "config", "config_hex", "ports"))
        if sum(k in nf for k in ("stock", "source", "nf")) != 1:
            raise SpecError(where, "exactly one of stock (a stock NF), source (a C file) "
                            "or nf (a deployed NF)")
        if "source" in nf and not allow_source:
            raise SpecError(f"{where}.source", "a file path cannot be sent to the controller; "
                            "deploy the NF (kind NF) and name it with `nf:`")
        if "nf" in nf and not allow_deployed:
            raise SpecError(f"{where}.nf", "names an NF deployed to the controller; "
                            "a spec run locally takes `source:` (a C file)")
        ports = nf.get("ports", 1)
        if isinstance(ports, bool) or not isinstance(ports, int) or not 1 <= ports <= MAX_PORTS:
            raise SpecError(f"{where}.ports", f"an integer 1..{MAX_PORTS}")
        if "stock" in nf:
            out[name] = NFSpec(name, _stock(nf, where), None, _stock_config(nf, where), ports)
        elif "nf" in nf:
            if not isinstance(nf["nf"], str) or not _NF_NAME.match(nf["nf"]):
                raise SpecError(f"{where}.nf", "the name of a deployed NF (1-22 characters "
                                "of a-z, 0-9, '_' and '-')")
            out[name] = NFSpec(name, None, None, _hex_config(nf, where), ports, nf["nf"])
        else:
            out[name] = NFSpec(name, None, _source(nf, where, base_dir), _hex_config(nf, where),
                               ports)
    return out


def _stock(nf, where):
    if nf["stock"] not in STOCK_NFS:
        raise SpecError(f"{where}.stock", f"one of {', '.join(STOCK_NFS)}, "
                        f"got {nf['stock']!r}")
    if "config_hex" in nf:
        raise SpecError(f"{where}.config_hex", "stock NFs take config (a mapping)")
    return nf["stock"]


def _stock_config(nf, where) -> bytes:
    # Named statically, not by importlib, so the import-linter contracts see these imports.
    from serpens.nfs import ConfigError, fw, ids, mon, nat, vpn
    module = {"fw": fw, "ids": ids, "mon": mon, "nat": nat, "vpn": vpn}[nf["stock"]]
    cfg = nf.get("config") or {}
    try:
        return module.encode_config(cfg)
    except ConfigError as e:
        raise SpecError(f"{where}.config.{e.field}", e.message) from None
    except ValueError as e:  # NFs whose errors carry the field in the message
        raise SpecError(f"{where}.config", str(e)) from None


def _source(nf, where, base_dir) -> str:
    src = nf["source"]
    if not isinstance(src, str) or not src:
        raise SpecError(f"{where}.source", "the path of the NF's C file")
    path = src if os.path.isabs(src) else os.path.join(base_dir, src)
    if not os.path.isfile(path):
        raise SpecError(f"{where}.source", f"no such file: {path}")
    return path


def _hex_config(nf, where) -> bytes:
    if "config" in nf:
        raise SpecError(f"{where}.config", "NFs from source take config_hex (their bytes)")
    try:
        return bytes.fromhex(nf.get("config_hex", "") or "")
    except (TypeError, ValueError):
        raise SpecError(f"{where}.config_hex", "hexadecimal bytes, e.g. '01ff'") from None


def _check_chain(item, where, nfs, used):
    """Validate a chain expression; returns it as plain data."""
    if item is None:
        return None
    if isinstance(item, str):
        if item not in nfs:
            raise SpecError(where, f"no NF named {item!r} in spec.nfs")
        if item in used:
            raise SpecError(where, f"NF {item!r} appears twice (declare a second NF)")
        used.add(item)
        return item
    if isinstance(item, list):
        return [_check_chain(x, f"{where}[{i}]", nfs, used) for i, x in enumerate(item)]
    if isinstance(item, dict) and "distribute" in item:
        _refuse_unknown(item, where, ("distribute", "selector"))
        branches = item["distribute"]
        if not isinstance(branches, list) or not 2 <= len(branches) <= MAX_PORTS:
            raise SpecError(f"{where}.distribute", f"a list of 2..{MAX_PORTS} branches")
        selector = item.get("selector", "port")
        if selector not in ("port", "hash"):
            raise SpecError(f"{where}.selector", "port or hash")
        return {"distribute": [_check_chain(b, f"{where}.distribute[{i}]", nfs, used)
                               for i, b in enumerate(branches)], "selector": selector}
    if isinstance(item, dict) and "aggregate" in item:
        _refuse_unknown(item, where, ("aggregate",))
        return {"aggregate": _check_chain(item["aggregate"], f"{where}.aggregate", nfs, used)}
    raise SpecError(where, "an NF name, a list, null, {distribute: [...], selector: ...} "
                    "or {aggregate: ...}")
