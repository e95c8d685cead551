"""From a validated SFC spec to what a pool process runs: NF images and compiled steps.

Every step gets its own image (an NF's globals are per step) in its own area of the NF
region; the step's name, `<sfc>.<nf>`, is the NF's state namespace.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

from serpens import nfs as stock_nfs
from serpens.common.spec import SFCSpec, SpecError
from serpens.runtime_cy import builder
from serpens.runtime_cy.sfc import NF, CompiledSFC, aggregate, chain, compile_sfc, distribute


@dataclass
class BuiltSFC:
    spec: SFCSpec
    compiled: CompiledSFC
    images: list = field(default_factory=list)
    areas: list = field(default_factory=list)
    # NF name -> (what code it runs: "stock:nat", "nf:NAME", "source:FILE", SHA-256 of its
    # C source): a state snapshot carries it, a restore into other code is refused.
    code: dict = field(default_factory=dict)

    def close(self, allocator=None):
        for img in self.images:
            img.close()
        if allocator is not None:
            for area in self.areas:
                allocator.free(area)
        self.images.clear()


def _source(name: str, nf, deployed: dict) -> str:
    if nf.stock:
        return stock_nfs.source(nf.stock)
    if nf.deployed:
        if nf.deployed not in deployed:
            raise SpecError(f"spec.nfs.{name}.nf", f"no source given for deployed NF "
                                                   f"{nf.deployed!r}")
        return deployed[nf.deployed]
    with open(nf.source_path) as f:
        return f.read()


def _code_label(nf) -> str:
    if nf.stock:
        return f"stock:{nf.stock}"
    if nf.deployed:
        return f"nf:{nf.deployed}"
    return f"source:{os.path.basename(nf.source_path)}"


def build_sfc(spec: SFCSpec, allocator: builder.AreaAllocator,
              deployed: dict | None = None) -> BuiltSFC:
    """Compile and prepare every NF of `spec` (NFBuildError / NFRefusedError name the NF).
    `deployed` maps the names of NFs deployed to the controller (`nf: NAME`) to their C
    source, as the controller sends them along with the spec."""
    built = BuiltSFC(spec, CompiledSFC())
    steps = {}
    try:
        for name, nf in spec.nfs.items():
            area = allocator.allocate()
            built.areas.append(area)
            source = _source(name, nf, deployed or {})
            built.code[name] = (_code_label(nf), hashlib.sha256(
                source.encode() if isinstance(source, str) else source).hexdigest())
            image = builder.build_nf(source, area, name)
            built.images.append(image)
            steps[name] = NF(image, config=nf.config, ports=nf.ports,
                             name=spec.state_namespace(name))
        built.compiled = compile_sfc(_expression(spec.chain, steps))
    except Exception:
        built.close(allocator)
        raise
    return built


def _expression(item, steps):
    if item is None:
        return None
    if isinstance(item, str):
        return steps[item]
    if isinstance(item, list):
        return chain(*[_expression(x, steps) for x in item])
    if "distribute" in item:
        return distribute(*[_expression(b, steps) for b in item["distribute"]],
                          selector=item["selector"])
    return aggregate(_expression(item["aggregate"], steps))
