"""The test NFs' C sources (tests/nfs/*.c: each one's header comment says what it does)."""
import os

NFS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "nfs")


def nf_source(name: str) -> str:
    with open(os.path.join(NFS_DIR, name)) as f:
        return f.read()
