# The pool process sandbox (runtime_cy/src/sandbox.h; included by _dataplane.pyx).

def sandbox_enter(bint network=False):
    """Enter the pool process sandbox (no_new_privs, no capabilities, seccomp allow-list) for
    every thread of this process, for good; `network`: also an AF_INET client (the Redis
    state baseline of the benchmarks). OSError naming the step that failed."""
    cdef char err[256]
    rc = serpens_sandbox_enter(SERPENS_SANDBOX_NET if network else 0, err, sizeof(err))
    if rc:
        raise OSError(-rc, err.decode(errors="replace"))
