# The benchmarks' native parts, built into the one DPDK extension (included by
# runtime_cy/_dataplane.pyx): the traffic driver that plays router for one instance, and the
# baseline loaders' modes (loaders.c registers them when the extension loads).
from driver_decl cimport *

LOAD_DLOPEN = SERPENS_LOAD_DLOPEN  # SOCK-style: dlopen() the NF's .so (build_command dl_paths)
LOAD_FORK = SERPENS_LOAD_FORK      # SAND-style: a zygote forks a child per start

def drive(Ring rx, Ring tx, Mempool pool, frames, double seconds, PoolCtl ctl=None,
          int efd=-1, double warmup=0.2, uint32_t inflight=512, bint rewrite=True):
    """Keep an instance busy with `frames` for `seconds` (benchmarks): returns
    {"packets", "out", "seconds", "mpps"} measured after `warmup`. rewrite=False when the NFs
    leave packets unchanged: each mbuf then keeps cycling with its own frame."""
    cdef serpens_drive_result res
    blob = b"".join(frames)
    lens = array.array("H", [len(f) for f in frames])
    cdef const unsigned char[:] fb = blob
    cdef const uint16_t[:] lb = lens
    cdef serpens_pool_ctl *c = ctl.c if ctl is not None else NULL
    cdef int rc
    cdef uint32_t nframes = len(lens)
    if inflight >= 1024:
        raise ValueError("inflight must stay below the ring size")
    with nogil:
        rc = serpens_drive(rx.r, tx.r, pool.mp, &fb[0], &lb[0], nframes, inflight, warmup,
                           seconds, rewrite, c, efd, label_off, &res)
    if rc:
        raise OSError(-rc, f"driver: {strerror(-rc).decode()}")
    secs = res.ns / 1e9
    return {"packets": res.packets, "out": res.out, "seconds": secs,
            "mpps": res.packets / secs / 1e6 if secs else 0.0}
