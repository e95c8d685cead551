"""Run the compiler on untrusted NF source so it can read nothing but the toolchain.

The builder's text checks (builder.check_source) refuse #include and assembler directives that
read host files; this is the layer beneath them, for whatever slips past (a macro, a string
spliced in asm). Each compiler process runs under
- a Landlock ruleset (kernel ABI >= 1): read/execute only the toolchain (/usr, /lib*, /bin,
  /etc/ld.so.cache) and the NF ABI headers, read/write only the build directory and /dev/null.
  `#include "/etc/shadow"` or `.incbin` of it fails with EACCES however it was spelled;
- resource limits: address space, CPU time, size of any file written (so `#include
  "/dev/zero"` or a pathological source cannot eat the machine), and a wall-clock timeout.

The ruleset is built in the parent (building one restricts nobody); a small launcher (a fresh
interpreter, `confined()`) sets the limits, prctl(PR_SET_NO_NEW_PRIVS) and
landlock_restrict_self() and then execs the compiler.
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


# The confining step runs in a fresh interpreter between our fork and the compiler's exec:
# a preexec_fn would run Python (ctypes, allocation) in the child of a multi-threaded parent
# (the controller has gRPC's threads), where a lock another thread held at fork time can
# abort or deadlock it. Only the standard library, no site: it starts in ~15 ms.
_LAUNCHER = """
import ctypes, os, resource, sys
fd, limits, argv = int(sys.argv[1]), [int(v) for v in sys.argv[2:6]], sys.argv[7:]
for what, v in zip((resource.RLIMIT_AS, resource.RLIMIT_CPU, resource.RLIMIT_FSIZE,
                    resource.RLIMIT_CORE), limits):
    resource.setrlimit(what, (v, v))
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(38, 1, 0, 0, 0) != 0:
    sys.exit("compiler jail: no_new_privs: " + os.strerror(ctypes.get_errno()))
if libc.syscall(446, fd, ctypes.c_uint32(0)) != 0:
    sys.exit("compiler jail: landlock_restrict_self: " + os.strerror(ctypes.get_errno()))
os.close(fd)
try:
    os.execvp(argv[0], argv)
except OSError as e:
    sys.stderr.write("compiler jail: cannot run " + argv[0] + ": " + str(e.strerror) + "\\n")
    os._exit(127)
"""
NOT_RUN = 127  # the launcher's exit status when the compiler could not be run


def confined(argv: list[str], ruleset: int, limits: Limits) -> list[str]:
    """`argv` run under the ruleset (its fd must be passed: pass_fds), no_new_privs and the
    limits."""
    import sys
    return [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(ruleset),
            str(limits.address_space), str(limits.cpu_seconds), str(limits.file_size), "0",
            "--", *argv]
