"""What the control plane accepts from a client: every bound in one place (issue 11 §5).

Each bound is checked before the thing it bounds is parsed or stored, so an oversized or
hostile input costs a length comparison, not memory or event-loop time: the request size in
the Serpens server's deserializer (controller/request_limits.py), the document size, YAML
anchors and nesting in common/documents.py, replicas in the spec and in Scale.

YAML anchors and aliases are refused outright, not bounded: no Serpens document needs them,
and a bound on expansion still lets a 500-byte spec grow to whatever the bound allows.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InputLimits:
    spec_bytes: int = 64 << 10        # an SFC or Node document (UTF-8 bytes)
    nf_source_bytes: int = 1 << 20    # one NF's C source (DeployNF)
    depth: int = 32                   # nesting of mappings and lists in a document
    replicas: int = 16                # instances of one SFC (InstanceManager.max_instances)
    # A Serpens request's serialized size, checked before it is deserialized: a spec and
    # its envelope; DeployNF carries a source; RestoreState carries whole state tables and
    # is bounded by the transport's common/rpc.py MAX_MESSAGE alone.
    request_bytes: int = 128 << 10
    deploy_request_bytes: int = (1 << 20) + (64 << 10)


LIMITS = InputLimits()
