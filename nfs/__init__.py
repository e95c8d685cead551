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


class ConfigError(ValueError):
    """An NF configuration the NF would refuse: .field names the offending part (e.g.
    "rules[2].dport"); str() is "field: message", as the API's INVALID_ARGUMENT says it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def is_int(v) -> bool:
    """An int that is not a bool (YAML and JSON give both)."""
    return isinstance(v, int) and not isinstance(v, bool)
