"""The names users give to SFCs, NFs and nodes: one pattern each, checked by the spec
parsers (common/spec.py, common/node_spec.py) and the controller's API alike.

They become etcd keys (common/keys.py), file names of state tables and parts of DPDK device
names, hence lower-case letters, digits and '-' (NFs also '_') and short.
"""
from __future__ import annotations

import re

SFC_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,22}[a-z0-9])?$")
NF_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,21}$")
NODE_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")


def node_file_prefix(node: str, pid: int) -> str:
    """The DPDK --file-prefix of node `node`'s agent running as `pid` (its hugepage files are
    /dev/hugepages/<prefix>map_*): unique per process, known to whoever knows both."""
    return f"serpens-node-{node}-{pid}"


def gateway_file_prefix(gateway: str, pid: int) -> str:
    """The DPDK --file-prefix of gateway `gateway`'s process `pid`."""
    return f"serpens-gw-{gateway}-{pid}"
