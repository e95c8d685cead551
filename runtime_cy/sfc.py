"""SFC expressions and their compilation into the chainer's flat step list (paper §III-C, Fig. 6).

An SFC is built from NFs with three combinators:

- ``chain(a, b, ...)``: a then b then ...
- ``distribute(*branches, selector="port" | "hash")``: fan out. With ``"port"`` the NF just
  before decides per packet (its output port k leads to branch k; paper Fig. 6(b)); with
  ``"hash"`` packets are spread over the branches by flow hash. A branch may be ``None``: those
  packets skip straight to what follows.
- ``aggregate(x)``: the join after a distribute: every branch's output continues at ``x``.
  (A plain item after a distribute joins the same way; aggregate says so explicitly.)

Compilation emits steps in topological order, so a packet's label (the index of its next step)
only ever grows and the chainer runs every branch in one pass over the steps. Exits left
dangling at the end of the SFC lead OUT.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

# The chainer's numbers, from the DPDK-free copy of its headers: the controller compiles SFCs
# to check them and must not load the DPDK extension (DESIGN §2).
from .constants import (CONFIG_MAX, LABEL_DROP, LABEL_OUT, MAX_IMAGES, MAX_PORTS, MAX_STEPS,
                        STEP_HASH, STEP_NF)


class SFCError(ValueError):
    """An SFC expression that cannot be compiled; the message names the offending part."""


@dataclass(frozen=True, eq=False)
class NF:
    """An NF in an SFC: a prepared image (anything with .name and .layout) and its config."""
    image: object
    config: bytes = b""
    ports: int = 1
    name: str = ""

    def __post_init__(self):
        if not self.name:
            object.__setattr__(self, "name", getattr(self.image, "name", "nf"))


@dataclass(frozen=True)
class Chain:
    items: tuple


@dataclass(frozen=True)
class Distribute:
    branches: tuple
    selector: str


@dataclass(frozen=True)
class Aggregate:
    item: object


# What an SFC is built from: an NF, a combinator of them, or None (a branch that skips ahead).
SFCExpr = Union[NF, Chain, Distribute, Aggregate, None]


def chain(*items: SFCExpr) -> Chain:
    return Chain(tuple(items))


def distribute(*branches: SFCExpr, selector: str = "port") -> Distribute:
    if selector not in ("port", "hash"):
        raise SFCError(f"distribute: selector must be 'port' or 'hash', not {selector!r}")
    if not 2 <= len(branches) <= MAX_PORTS:
        raise SFCError(f"distribute: 2..{MAX_PORTS} branches, got {len(branches)}")
    return Distribute(tuple(branches), selector)


def aggregate(item: SFCExpr) -> Aggregate:
    return Aggregate(item)


@dataclass
class Step:
    kind: int
    image: int
    next: list
    config_off: int
    config_len: int
    name: str

    def as_tuple(self):
        return (self.kind, self.image, list(self.next), self.config_off, self.config_len,
                self.name)


@dataclass
class CompiledSFC:
    """What a pool process needs to run an SFC: steps, the images they call, their configs."""
    steps: list = field(default_factory=list)
    images: list = field(default_factory=list)   # prepared images, index = Step.image
    config: bytes = b""


class _Compiler:
    def __init__(self):
        self.out = CompiledSFC()
        self.config = bytearray()
        self.image_index = {}

    def new_step(self, kind, nports, name, image=0, config=b""):
        if len(self.out.steps) >= MAX_STEPS:
            raise SFCError(f"an SFC has at most {MAX_STEPS} steps")
        off = len(self.config)
        self.config += config
        if len(self.config) > CONFIG_MAX:
            raise SFCError(f"NF configurations exceed {CONFIG_MAX} bytes in total")
        self.out.steps.append(Step(kind, image, [LABEL_DROP] * nports, off, len(config), name))
        return len(self.out.steps) - 1

    def wire(self, exits, label):
        for step, port in exits:
            self.out.steps[step].next[port] = label

    def emit(self, expr, exits):
        """Emit `expr` reached from `exits` [(step, port)]; return its own dangling exits."""
        if expr is None:
            return exits
        if isinstance(expr, NF):
            return self.emit_nf(expr, exits)
        if isinstance(expr, Aggregate):
            return self.emit(expr.item, exits)
        if isinstance(expr, Chain):
            for item in expr.items:
                exits = self.emit(item, exits)
            return exits
        if isinstance(expr, Distribute):
            return self.emit_distribute(expr, exits)
        raise SFCError(f"not an SFC element: {expr!r}")

    def emit_nf(self, nf, exits):
        if not 1 <= nf.ports <= MAX_PORTS:
            raise SFCError(f"NF {nf.name}: 1..{MAX_PORTS} ports")
        # An image's .data/.bss are its globals: two steps sharing one image would share them.
        key = id(nf.image)
        if key in self.image_index:
            raise SFCError(f"NF {nf.name}: its image is already used by step "
                           f"{self.image_index[key]}; each step needs its own image (prepare "
                           "one per occurrence, in its own area)")
        if len(self.out.images) >= MAX_IMAGES:
            raise SFCError(f"an SFC uses at most {MAX_IMAGES} NF images")
        self.image_index[key] = len(self.out.steps)
        self.out.images.append(nf.image)
        step = self.new_step(STEP_NF, nf.ports, nf.name, len(self.out.images) - 1, nf.config)
        self.wire(exits, step)
        return [(step, p) for p in range(nf.ports)]

    def emit_distribute(self, d, exits):
        n = len(d.branches)
        if d.selector == "hash":
            sel = self.new_step(STEP_HASH, n, "hash")
            self.wire(exits, sel)
        else:
            steps = {s for s, _ in exits}
            if len(steps) != 1 or self.out.steps[next(iter(steps))].kind != STEP_NF:
                raise SFCError("distribute(selector='port') must follow a single NF, whose "
                               "output ports choose the branch")
            sel = next(iter(steps))
            # The deciding NF gets one port per branch (extra ports it sets are drops).
            self.out.steps[sel].next = [LABEL_DROP] * n
        joined = []
        for port, branch in enumerate(d.branches):
            joined += self.emit(branch, [(sel, port)])
        return joined


def compile_sfc(expr: SFCExpr) -> CompiledSFC:
    """Compile an SFC expression (or a single NF) into steps; dangling exits go OUT."""
    c = _Compiler()
    exits = c.emit(expr, [])
    for step, port in exits:
        c.out.steps[step].next[port] = LABEL_OUT
    c.out.config = bytes(c.config)
    return c.out
