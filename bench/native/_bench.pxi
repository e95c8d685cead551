# The benchmarks' native parts, built into the one DPDK extension (included by
# runtime_cy/_dataplane.pyx): the traffic driver that plays router for one instance, the
# baseline loaders' modes and state backends (loaders.c and redis_state.c register them when
# the extension loads), and the global proxy's loop.
from driver_decl cimport *
from baselines_decl cimport *

LOAD_DLOPEN = SERPENS_LOAD_DLOPEN  # SOCK-style: dlopen() the NF's .so (build_command dl_paths)
LOAD_FORK = SERPENS_LOAD_FORK      # SAND-style: a zygote forks a child per start
STATE_REDIS = SERPENS_STATE_REDIS  # Fission-style: every table in Redis (build_command state_arg)
STATE_REDIS_GLOBAL = SERPENS_STATE_REDIS_GLOBAL  # SNF-style: global tables in Redis

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


def bench_proxy(PoolCtl ctl, rx_names, tx_names, int label_offset):
    """The global proxy's loop (proxy.h): forward rx_names[h] to tx_names[h] until ctl's
    cmd_seq moves; ctl.state is RUNNING meanwhile. Returns the packets forwarded per hop."""
    cdef rte_ring *rx[16]
    cdef rte_ring *tx[16]
    cdef uint64_t fwd[16]
    cdef uint32_t n = len(rx_names), running
    cdef int rc
    if n > SERPENS_BENCH_PROXY_HOPS or n != len(tx_names):
        raise ValueError(f"1 to {SERPENS_BENCH_PROXY_HOPS} hops, an RX and a TX ring each")
    for h in range(n):
        rx[h] = rte_ring_lookup(rx_names[h].encode())
        tx[h] = rte_ring_lookup(tx_names[h].encode())
        if rx[h] == NULL or tx[h] == NULL:
            raise OSError(errno, f"no ring {rx_names[h]} or {tx_names[h]}")
    memset(fwd, 0, sizeof(fwd))
    running = ctl.c.cmd_seq
    ctl.c.state = SERPENS_POOL_RUNNING
    serpens_fence()
    with nogil:
        rc = serpens_bench_proxy(rx, tx, n, label_offset, &ctl.c.cmd_seq, running, fwd)
    ctl.c.state = SERPENS_POOL_EXITED
    serpens_fence()
    return [fwd[h] for h in range(n)]
