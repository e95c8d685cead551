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
    # its envelope; DeployNF carries a source. (RestoreState's state tables come in pieces,
    # common/bulk.py, up to its MAX_MESSAGE in all.)
    request_bytes: int = 128 << 10
    deploy_request_bytes: int = (1 << 20) + (64 << 10)
    # The C sources of the deployed NFs one SFC names, together: RunSFC carries them to each
    # of its servers, whose agents read at most common/rpc.py RECEIVE_LIMIT_AGENT a message.
    chain_source_bytes: int = 8 << 20
    # A capture or trace (Capture): packets and seconds it may run for, bytes kept a packet.
    capture_count: int = 1_000_000
    capture_seconds: float = 24 * 3600.0
    capture_snaplen: int = 65535
    read_entries: int = 100_000       # entries per table a ReadState returns (its `limit`)


def capture_problem(request, limits: "InputLimits" = None) -> str | None:
    """What is wrong with a CaptureRequest's bounds ("field: why"), or None. The controller
    checks them before it relays the call (a NaN or huge `seconds` would otherwise become its
    own deadline to the agent) and the agent again."""
    limits = limits or LIMITS
    if request.count > limits.capture_count:
        return f"count: at most {limits.capture_count}, got {request.count}"
    if not 0 <= request.seconds <= limits.capture_seconds:  # (NaN too)
        return f"seconds: 0..{limits.capture_seconds:.0f}, got {request.seconds}"
    if request.snaplen > limits.capture_snaplen:
        return f"snaplen: 0..{limits.capture_snaplen}, got {request.snaplen}"
    return None


LIMITS = InputLimits()
