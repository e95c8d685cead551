"""Small filesystems of a test's own (state directories that fill up, hugetlbfs)."""
import contextlib
import os
import subprocess
import tempfile

import pytest


@contextlib.contextmanager
def small_fs(fstype: str, size: str):
    """A fresh `fstype` mount of `size` on a temporary folder, unmounted on leaving."""
    path = tempfile.mkdtemp(prefix=f"serpens-{fstype}-")
    # hugetlbfs: its pages reserved at mount (min_size), or a DPDK process of the session,
    # whose memory grows from the same pool, could take them before the test fills them
    opts = f"size={size}" + (f",min_size={size},pagesize=2M" if fstype == "hugetlbfs" else "")
    done = subprocess.run(["mount", "-t", fstype, "-o", opts, f"serpens-{fstype}", path],
                          capture_output=True, text=True)
    if done.returncode:
        os.rmdir(path)
        pytest.skip(f"cannot mount a {fstype}: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], check=True)
        os.rmdir(path)
