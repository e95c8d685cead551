"""Run the compiler on untrusted NF source so it can read nothing but the toolchain.

The builder's text checks (builder.check_source) refuse #include and assembler directives that
read host files; this is the layer beneath them, for whatever slips past (a macro, a string
spliced in asm). Each compiler process runs under
- a Landlock ruleset (kernel ABI >= 1): read/execute only the toolchain (/usr, /lib*, /bin,
  /etc/ld.so.cache) and the NF ABI headers, read/write only the build directory and /dev/null.
  `#include "/etc/shadow"` or `.incbin` of it fails with EACCES however it was spelled;
- resource limits: address space, CPU time, size of any file written (so `#include
  "/dev/zero"` or a pathological source cannot eat the machine), and a wall-clock timeout.

The ruleset is built in the parent (building one restricts nobody); the child only calls
prctl(PR_SET_NO_NEW_PRIVS) and landlock_restrict_self() between fork and exec.
"""
from __future__ import annotations

import ctypes
import os
import resource
from dataclasses import dataclass

_SYS_landlock_create_ruleset = 444
_SYS_landlock_add_rule = 445
_SYS_landlock_restrict_self = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

# linux/landlock.h access rights, by the ABI version that introduced them
_EXECUTE, _WRITE_FILE, _READ_FILE, _READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_ABI1_ALL = (1 << 13) - 1      # execute .. make_sym
_REFER = 1 << 13               # ABI 2
_TRUNCATE = 1 << 14            # ABI 3
_FILE_RIGHTS = _EXECUTE | _WRITE_FILE | _READ_FILE | _TRUNCATE  # the rights a file rule takes

READ_ONLY_PATHS = ("/usr", "/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin",
                   "/etc/ld.so.cache")
READ_WRITE_PATHS = ("/dev/null",)


@dataclass(frozen=True)
class Limits:
    address_space: int = 1 << 30   # bytes of virtual memory per compiler process
    cpu_seconds: int = 30
    file_size: int = 64 << 20      # bytes of any one file written (objects, temporaries)
    wall_seconds: float = 60.0


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 without Landlock."""
    v = _libc.syscall(_SYS_landlock_create_ruleset, None, ctypes.c_size_t(0),
                      ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION))
    return max(v, 0)


def _handled(abi: int) -> int:
    return _ABI1_ALL | (_REFER if abi >= 2 else 0) | (_TRUNCATE if abi >= 3 else 0)


def _add_rule(ruleset: int, path: str, access: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return  # /lib32 and the like exist on some systems only
    try:
        if not os.path.isdir(path):
            access &= _FILE_RIGHTS
        rule = _PathBeneath(access, fd)
        if _libc.syscall(_SYS_landlock_add_rule, ruleset, _LANDLOCK_RULE_PATH_BENEATH,
                         ctypes.byref(rule), ctypes.c_uint32(0)) < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"landlock rule for {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def build_ruleset(read_only: list[str], read_write: list[str]) -> int:
    """A Landlock ruleset fd (close-on-exec) allowing read/execute of `read_only` and
    everything in `read_write`, nothing else. OSError without Landlock."""
    abi = landlock_abi()
    if abi < 1:
        raise OSError(38, "this kernel has no Landlock: NF sources cannot be compiled safely")
    handled = ctypes.c_uint64(_handled(abi))
    ruleset = _libc.syscall(_SYS_landlock_create_ruleset, ctypes.byref(handled),
                            ctypes.c_size_t(8), ctypes.c_uint32(0))
    if ruleset < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"landlock_create_ruleset: {os.strerror(err)}")
    try:
        for path in read_only:
            _add_rule(ruleset, path, _EXECUTE | _READ_FILE | _READ_DIR)
        for path in read_write:
            _add_rule(ruleset, path, handled.value)
    except BaseException:
        os.close(ruleset)
        raise
    return ruleset


def confine(ruleset: int, limits: Limits):
    """A preexec_fn for subprocess: no new privileges, the ruleset, the limits. Only calls
    into libc and `resource` (no imports, no allocation-heavy work) between fork and exec."""
    prctl, syscall = _libc.prctl, _libc.syscall
    rlimits = ((resource.RLIMIT_AS, limits.address_space),
               (resource.RLIMIT_CPU, limits.cpu_seconds),
               (resource.RLIMIT_FSIZE, limits.file_size),
               (resource.RLIMIT_CORE, 0))

    def preexec():
        for what, value in rlimits:
            resource.setrlimit(what, (value, value))
        if prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "no_new_privs")
        if syscall(_SYS_landlock_restrict_self, ruleset, ctypes.c_uint32(0)) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self")

    return preexec
