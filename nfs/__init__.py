"""Stock NFs. Each lives in nfs/<name>/: the C source (its header comment is the manual) and
an __init__.py whose encode_config(dict) -> bytes validates a configuration from an SFC spec
and packs it for the NF's init()."""
import os

NFS_DIR = os.path.dirname(__file__)


def source_path(name: str) -> str:
    return os.path.join(NFS_DIR, name, f"{name}.c")


def source(name: str) -> str:
    with open(source_path(name)) as f:
        return f.read()
