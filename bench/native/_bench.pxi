# The benchmarks' native parts, built into the one DPDK extension (included by
# runtime_cy/_dataplane.pyx): the traffic driver that plays router for one instance, the
# baseline loaders' modes and state backends (loaders.c and redis_state.c register them when
# the extension loads), and the global proxy's loop.
from driver_decl cimport *
from baselines_decl cimport *
from gwdrive_decl cimport *

cdef extern from "cpulink.h" nogil:
    double serpens_cpulink_ns(int cpu_a, int cpu_b, uint32_t batches, uint32_t rounds,
                              uint64_t timeout_ns)

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


def encap_ns(Mempool pool, bytes frame, uint32_t iters=20000):
    """Nanoseconds per VXLAN encapsulation of `frame` (gwdrive.h serpens_encap_cycles)."""
    cdef double cycles
    cdef const uint8_t *f = <const uint8_t *>PyBytes_AS_STRING(frame)
    cdef uint16_t n = len(frame)
    with nogil:
        cycles = serpens_encap_cycles(pool.mp, f, n, iters)
    if not cycles:
        raise MemoryError("encap_ns: no mbufs")
    return cycles * 1e9 / rte_get_tsc_hz()


cdef class GatewayDriver:
    """The outside world around a Gateway on its lcore (bench/native/gwdrive.h): paced traffic
    into `ingress` (a Ring the gateway's ingress port reads), stamped; what the gateway sends
    out through `egress` (the Ring its egress port writes) is counted and its latency logged."""
    cdef serpens_gwdrive d
    cdef Gateway gw
    cdef object keep
    cdef int lcore
    cdef uint32_t depth
    cdef uint64_t log_alloc   # records d.log has room for (written through: no page faults)

    def __cinit__(self, Gateway gw, Ring ingress, Ring egress, Mempool pool, frames,
                  uint32_t stamp_off=42, uint32_t depth=4096):
        self.lcore = -1
        for f in frames:
            if len(f) < stamp_off + 12:
                raise ValueError(f"frames need {stamp_off + 12} bytes for the stamp")
        blob = b"".join(frames)
        lens = array.array("H", [len(f) for f in frames])
        offs = array.array("I", [0] * len(frames))
        at = 0
        for i, f in enumerate(frames):
            offs[i] = at
            at += len(f)
        self.keep = (blob, lens, offs, gw)
        cdef const unsigned char[:] fb = blob
        cdef const uint16_t[:] lb = lens
        cdef const uint32_t[:] ob = offs
        memset(&self.d, 0, sizeof(self.d))
        self.gw = gw
        self.d.g = gw.g
        self.d.in_ = ingress.r
        self.d.out = egress.r
        self.d.mp = pool.mp
        self.d.frames = &fb[0]
        self.d.len = &lb[0]
        self.d.off = &ob[0]
        self.d.nframes = len(frames)
        self.d.stamp_off = stamp_off
        self.depth = depth

    def __dealloc__(self):
        if self.lcore >= 0:
            self.d.stop = 1
            rte_eal_wait_lcore(self.lcore)
        free(self.d.log)

    def launch(self, unsigned lcore):
        self.pace(1)  # held back until told
        self.d.stop = 0
        rc = rte_eal_remote_launch(serpens_gwdrive_lcore_main, &self.d, lcore)
        if rc:
            raise OSError(-rc, f"launching the gateway driver on lcore {lcore}")
        self.lcore = lcore

    def stop(self):
        self.d.stop = 1
        serpens_fence()
        if self.lcore >= 0:
            with nogil:
                rte_eal_wait_lcore(self.lcore)
            self.lcore = -1

    def pace(self, double pps, depth=None):
        """Offer `pps` (0: unpaced, as much as the ingress ring takes); `depth`: arrivals
        the input holds (default: the depth given at construction)."""
        serpens_pace_set(&self.d.pace, pps, self.depth if depth is None else depth)

    def counts(self):
        """(sent, missed, received): frames into the gateway, arrivals lost, frames out."""
        return (serpens_load_u64(&self.d.sent), serpens_load_u64(&self.d.pace.missed),
                serpens_load_u64(&self.d.received))

    def log_reserve(self, uint64_t capacity):
        """Make (and write through) room for `capacity` records now, so that a log_start()
        under load takes no page faults."""
        self.d.log_on = 0
        serpens_fence()
        if capacity <= self.log_alloc:
            return
        free(self.d.log)
        self.log_alloc = self.d.log_cap = 0
        self.d.log = <serpens_lat_rec *>malloc(capacity * sizeof(serpens_lat_rec))
        if self.d.log == NULL:
            raise MemoryError()
        memset(self.d.log, 0, capacity * sizeof(serpens_lat_rec))
        self.log_alloc = capacity

    def log_start(self, uint64_t capacity):
        """Record the next `capacity` frames back (in the room reserved, or made now)."""
        self.log_reserve(capacity)
        self.d.log_cap, self.d.log_n = capacity, 0
        serpens_fence()
        self.d.log_on = 1

    def log_take(self):
        """Stop recording; the records (LAT_REC_FORMAT each)."""
        self.d.log_on = 0
        serpens_fence()
        n = serpens_load_u64(&self.d.log_n)
        return PyBytes_FromStringAndSize(<char *>self.d.log, n * sizeof(serpens_lat_rec))


def cpu_link_ns(int cpu_a=0, int cpu_b=1, uint32_t batches=16, uint32_t rounds=200,
                double timeout_ms=20):
    """How far apart the host has put two CPUs now: the fastest round trip of a cache line
    between threads pinned on each, in ns (bench/native/cpulink.h); None if no batch of
    `rounds` finished within `timeout_ms` or a CPU does not exist."""
    cdef double ns
    with nogil:
        ns = serpens_cpulink_ns(cpu_a, cpu_b, batches, rounds, <uint64_t>(timeout_ms * 1e6))
    return round(ns, 1) if ns >= 0 else None
