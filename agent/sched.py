"""CPU scheduling of pool processes that share a core.

Instances sharing a core pass it on when idle (they yield or sleep), but one with work keeps it
for its whole time slice: milliseconds with the kernel's default, which is what another
instance's packets (or a new instance's start) would wait. Linux 6.12+ (EEVDF) lets a
SCHED_OTHER task ask for a shorter slice through sched_setattr's sched_runtime; older kernels
ignore the request (best effort, nothing fails).
"""
from __future__ import annotations

import ctypes
import os
import platform
import struct

_SYSCALLS = {"x86_64": 314, "aarch64": 274}  # sched_setattr
_libc = ctypes.CDLL(None, use_errno=True)


def set_time_slice(pid: int, slice_us: int) -> bool:
    """Ask for a `slice_us` time slice for process `pid`; True if the kernel took it."""
    nr = _SYSCALLS.get(platform.machine())
    if nr is None or slice_us <= 0:
        return False
    # struct sched_attr (v1, 56 bytes): size, policy, flags, nice, priority, runtime, deadline,
    # period; policy 0 = SCHED_OTHER, nice kept at 0.
    attr = ctypes.create_string_buffer(struct.pack("<IIQiIQQQ", 56, 0, 0, os.getpriority(
        os.PRIO_PROCESS, pid), 0, slice_us * 1000, 0, 0))
    return _libc.syscall(nr, pid, attr, 0) == 0
