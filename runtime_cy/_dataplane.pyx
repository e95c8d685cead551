# cython: language_level=3
"""Every DPDK call of a Serpens process (DESIGN §3 "One DPDK build").

The agent (primary) uses it to own mempools and rings and, in tests and benchmarks, to push
packets into an instance and pull them back; a pool process (secondary) uses it to attach and
to run serpens_runtime_main(). Errors cross into Python once, as OSError.
"""
import array
import time

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.errno cimport errno
from libc.stdint cimport int8_t, int16_t, int32_t, uint8_t, uint16_t, uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset, strncpy, strerror
from posix.mman cimport MAP_FAILED, MAP_SHARED, PROT_READ, PROT_WRITE, mmap, munmap

from includes.core cimport *
from includes.dpdk cimport *

cdef extern from "router.h" nogil:
    int SERPENS_ROUTER_MAX_INSTANCES, SERPENS_ROUTER_MAX_SFCS, SERPENS_ROUTER_MAX_PORTS
    int SERPENS_ROUTER_MAX_RULES
    int SERPENS_INST_EMPTY, SERPENS_INST_ACTIVE, SERPENS_INST_DRAINING
    int SERPENS_INST_DEAD, SERPENS_INST_REAPED
    struct serpens_rx_meta:
        uint64_t rx_tsc
        uint32_t flow, seq
    struct serpens_lat_rec:
        uint64_t rx_tsc, tx_tsc
        uint32_t flow, seq
    struct serpens_router_instance:
        uint32_t state
        uint16_t sfc
        int efd
        rte_ring *rx
        rte_ring *tx
        serpens_pool_ctl *ctl
        int pidfd, pid
        uint64_t budget_cycles, budget_ns, last_return_tsc, suspect_batch, suspect_cpu_ns
        uint64_t crash_seen_tsc
        uint32_t waiting, npending
        uint64_t enqueued, returned, wakeups
        uint32_t drained
        uint64_t barrier
        uint32_t barrier_on, shedding, watchdog_fired
        uint64_t watchdog_tsc
        uint64_t stall_since, dropped
    struct serpens_router_sfc:
        uint32_t used
        int16_t next
        uint16_t out_port
        uint32_t wants_instance
        int notify_fd
        int32_t rebalance_to
        uint32_t drop_all, nheld, moving, hold_shedding
        uint64_t rx, out, dropped, new_flows, moved_flows, rebalanced_flows
        uint64_t drop_died, drop_stuck, drop_hold, drop_failed
    struct serpens_match_rule:
        uint32_t src, src_mask, dst, dst_mask
        uint16_t sport_lo, sport_hi, dport_lo, dport_hi
        uint8_t proto
        int8_t in_port
        uint16_t sfc
    struct serpens_router_port:
        uint16_t id
        uint8_t input
        double pace_cycles, pace_next
        uint32_t pace_depth
        uint64_t rx, tx, tx_failed, unmatched, missed, rx_empty
    struct serpens_router:
        uint32_t stop, requests
        int label_off, meta_off
        uint32_t wake_batch
        uint64_t wake_cycles, drain_cycles, stall_cycles, hold_cycles
        uint32_t nports, nrules
        int32_t default_sfc
        serpens_router_port ports[8]
        serpens_match_rule rules[64]
        uint8_t tag_sfc[4096]
        serpens_router_sfc sfcs[16]
        serpens_router_instance inst[64]
        uint32_t log_on
        serpens_lat_rec *log
        uint64_t log_cap, log_n
        uint32_t npending, nheld, nstalled
        uint64_t rx, tx, dropped, tx_failed, sleeps, loops
    int serpens_router_run(serpens_router *r)
    void serpens_router_reap(serpens_router *r, int i)
    int serpens_router_lcore_main(void *arg)

LABEL_OUT = SERPENS_LABEL_OUT
LABEL_DROP = SERPENS_LABEL_DROP
BURST = SERPENS_BURST
MAX_STEPS = SERPENS_MAX_STEPS
MAX_PORTS = SERPENS_MAX_PORTS
MAX_IMAGES = SERPENS_MAX_IMAGES
CONFIG_MAX = SERPENS_CONFIG_MAX
STEP_NF = SERPENS_STEP_NF
STEP_HASH = SERPENS_STEP_HASH
LOAD_MAP = SERPENS_LOAD_MAP
LOAD_DLOPEN = SERPENS_LOAD_DLOPEN
LOAD_FORK = SERPENS_LOAD_FORK
STATE_LOCAL, STATE_REDIS, STATE_REDIS_GLOBAL = 0, 1, 2  # nf_api.h serpens_state_backend
CMD_START = SERPENS_CMD_START
CMD_STOP = SERPENS_CMD_STOP
CMD_EXIT = SERPENS_CMD_EXIT
POOL_BOOTING = SERPENS_POOL_BOOTING
POOL_IDLE = SERPENS_POOL_IDLE
POOL_RUNNING = SERPENS_POOL_RUNNING
POOL_EXITED = SERPENS_POOL_EXITED
CTL_SIZE = sizeof(serpens_pool_ctl)

DEF LABEL_DYNFIELD_NAME = b"serpens_label"
LABEL_DYNFIELD = LABEL_DYNFIELD_NAME
cdef int label_off = -1
cdef int meta_off = -1


def _rte_error(what):
    return OSError(rte_errno, f"{what}: {rte_strerror(rte_errno).decode()}")


# ---- EAL -----------------------------------------------------------------------------------

def eal_init(args):
    """rte_eal_init with `args` (argv[0] included). Once per process."""
    cdef int argc = len(args)
    cdef char **argv = <char **>malloc(sizeof(char *) * (argc + 1))
    encoded = [a.encode() for a in args]
    for i, a in enumerate(encoded):
        argv[i] = a
    argv[argc] = NULL
    cdef int rc
    with nogil:
        rc = rte_eal_init(argc, argv)
    free(argv)  # EAL keeps pointers into argv strings only during init
    if rc < 0:
        raise _rte_error("rte_eal_init")
    serpens_clock_init()


def eal_cleanup():
    with nogil:  # (it can wait on a lock a dead secondary held: callers bound it)
        rte_eal_cleanup()


def register_label_field():
    """Primary: register the per-mbuf verdict field; secondaries look it up."""
    global label_off
    cdef rte_mbuf_dynfield p
    memset(&p, 0, sizeof(p))
    strncpy(p.name, LABEL_DYNFIELD_NAME, sizeof(p.name) - 1)
    p.size = sizeof(uint16_t)
    p.align = sizeof(uint16_t)
    if rte_eal_process_type() == RTE_PROC_PRIMARY:
        label_off = rte_mbuf_dynfield_register(&p)
    else:
        label_off = rte_mbuf_dynfield_lookup(LABEL_DYNFIELD_NAME, NULL)
    if label_off < 0:
        raise _rte_error("mbuf label dynfield")
    if rte_eal_process_type() == RTE_PROC_PRIMARY:  # the router's per-packet metadata
        global meta_off
        memset(&p, 0, sizeof(p))
        strncpy(p.name, b"serpens_rx_meta", sizeof(p.name) - 1)
        p.size = sizeof(serpens_rx_meta)
        p.align = sizeof(uint64_t)
        meta_off = rte_mbuf_dynfield_register(&p)
        if meta_off < 0:
            raise _rte_error("mbuf rx metadata dynfield")
    return label_off


def tsc_hz():
    return rte_get_tsc_hz()


def rdtsc():
    return rte_rdtsc()


def stall_probe(double seconds, double threshold_us=50):
    """Spin on the calling thread's CPU for `seconds`, timing every gap longer than
    `threshold_us` in which it did not run (the host or the kernel took the CPU):
    (gaps, total_us, max_us). Benchmarks report it: such gaps set tail latency here."""
    cdef uint64_t hz = rte_get_tsc_hz(), last, now, gap, end, total = 0, worst = 0
    cdef uint64_t limit = <uint64_t>(hz * threshold_us / 1e6)
    cdef unsigned n = 0
    with nogil:
        last = rte_rdtsc()
        end = last + <uint64_t>(seconds * hz)
        while last < end:
            now = rte_rdtsc()
            gap = now - last
            if gap > limit:
                n += 1
                total += gap
                if gap > worst:
                    worst = gap
            last = now
    return n, total * 1e6 / hz, worst * 1e6 / hz


def region_reserve():
    cdef int rc = serpens_region_reserve()
    if rc:
        raise OSError(-rc, f"reserving the NF region: {strerror(-rc).decode()}")


# ---- mempools and rings --------------------------------------------------------------------

cdef class Mempool:
    cdef rte_mempool *mp
    cdef readonly str name

    def __cinit__(self, str name, unsigned n=8191, unsigned cache=256, uint16_t data_room=2176):
        self.name = name
        self.mp = rte_mempool_lookup(name.encode())
        if self.mp == NULL:
            self.mp = rte_pktmbuf_pool_create(name.encode(), n, cache, 0, data_room,
                                              rte_socket_id())
        if self.mp == NULL:
            raise _rte_error(f"mempool {name}")

    @property
    def size(self):
        return self.mp.size

    def available(self):
        """Free mbufs, per-lcore caches included."""
        return rte_mempool_avail_count(self.mp)


cdef class Ring:
    cdef rte_ring *r
    cdef readonly str name
    cdef bint owner

    def __cinit__(self, str name, unsigned size=1024, bint create=True):
        self.name = name
        if create:
            self.r = rte_ring_create(name.encode(), size, rte_socket_id(),
                                     RING_F_SP_ENQ | RING_F_SC_DEQ)
            self.owner = True
        else:
            self.r = rte_ring_lookup(name.encode())
        if self.r == NULL:
            raise _rte_error(f"ring {name}")

    def count(self):
        return rte_ring_count(self.r)

    @property
    def address(self):
        """Same in every DPDK process of this file prefix."""
        return <uintptr_t>self.r

    def free(self):
        if self.owner and self.r != NULL:
            free_all(self)
            rte_ring_free(self.r)
        self.r = NULL


def push(Ring ring, Mempool pool, frames):
    """Copy `frames` (bytes) into fresh mbufs and enqueue them; returns how many went in
    (the mbufs of the rest are freed)."""
    cdef rte_mbuf *bufs[512]
    cdef unsigned n = len(frames), i, done
    cdef char *dst
    if n > 512:
        raise ValueError("push at most 512 frames at a time")
    if n == 0:
        return 0
    if rte_pktmbuf_alloc_bulk(pool.mp, bufs, n) != 0:
        raise MemoryError(f"mempool {pool.name}: no {n} free mbufs")
    for i in range(n):
        f = frames[i]
        dst = rte_pktmbuf_append(bufs[i], len(f))
        if dst == NULL:
            rte_pktmbuf_free_bulk(bufs, n)
            raise ValueError(f"frame {i}: {len(f)} bytes do not fit an mbuf")
        memcpy(dst, PyBytes_AS_STRING(f), len(f))
    done = rte_ring_enqueue_burst(ring.r, <void **>bufs, n, NULL)
    if done < n:
        rte_pktmbuf_free_bulk(bufs + done, n - done)
    return done


def pull(Ring ring, unsigned max_n=512):
    """Dequeue up to max_n mbufs; return [(label, bytes)] and free the mbufs."""
    cdef void *objs[512]
    cdef rte_mbuf *m
    cdef unsigned n, i
    if max_n > 512:
        max_n = 512
    n = rte_ring_dequeue_burst(ring.r, objs, max_n, NULL)
    out = []
    for i in range(n):
        m = <rte_mbuf *>objs[i]
        label = serpens_label_get(m, label_off) if label_off >= 0 else LABEL_OUT
        out.append((label, PyBytes_FromStringAndSize(serpens_mtod(m), m.data_len)))
    rte_pktmbuf_free_bulk(<rte_mbuf **>objs, n)
    return out


def free_all(Ring ring):
    """Dequeue and free every mbuf in the ring; returns the count."""
    cdef void *objs[512]
    cdef unsigned n, total = 0
    while True:
        n = rte_ring_dequeue_burst(ring.r, objs, 512, NULL)
        if n == 0:
            return total
        rte_pktmbuf_free_bulk(<rte_mbuf **>objs, n)
        total += n


cdef extern from "lost_batch.h" nogil:
    uint32_t serpens_free_lost_batch(serpens_pool_ctl *ctl, rte_ring *rx, const rte_ring *tx)


# ---- pool process control block ------------------------------------------------------------

cdef class PoolCtl:
    """The shared control block of one pool process (pool_ctl.h), mapped from its memfd."""
    cdef serpens_pool_ctl *c

    def __cinit__(self, int fd):
        cdef void *p = mmap(NULL, sizeof(serpens_pool_ctl), PROT_READ | PROT_WRITE,
                            MAP_SHARED, fd, 0)
        if p == MAP_FAILED:
            raise OSError(errno, "mapping the pool control block")
        self.c = <serpens_pool_ctl *>p

    def __dealloc__(self):
        if self.c != NULL:
            munmap(self.c, sizeof(serpens_pool_ctl))

    def bump_cmd_seq(self):
        self.c.wake_cycles = rte_rdtsc()
        return serpens_inc_u32(&self.c.cmd_seq)

    def request_merge(self):
        """Ask the running instance to merge its state now; the request's number (done
        once merge_done reaches it). Wake it with wake_if_sleeping() afterwards."""
        return serpens_inc_u32(&self.c.merge_req)

    @property
    def merge_done(self): return serpens_load_u32(&self.c.merge_done)
    @property
    def cmd_seq(self): return self.c.cmd_seq
    @property
    def ack_seq(self): return serpens_load_u32(&self.c.ack_seq)
    @property
    def state(self): return self.c.state
    @property
    def sleeping(self):
        serpens_fence()
        return self.c.sleeping != 0
    @property
    def own_cpu(self): return bool(self.c.own_cpu)
    @own_cpu.setter
    def own_cpu(self, bint alone):
        """The agent placed the process alone on a CPU (it may spin waiting for ring room)."""
        self.c.own_cpu = alone
    @property
    def last_error(self): return self.c.last_error
    @property
    def error(self): return self.c.error.decode(errors="replace")
    @property
    def pid(self): return self.c.pid
    @property
    def instance_id(self): return self.c.instance_id

    def stats(self):
        return {"rx_pkts": self.c.rx_pkts, "tx_pkts": self.c.tx_pkts,
                "drop_pkts": self.c.drop_pkts, "bad_labels": self.c.bad_labels,
                "bad_mbufs": self.c.bad_mbufs,
                "batches": self.c.batches, "wakeups": self.c.wakeups,
                "forked_done": self.c.forked_done}

    def timing_cycles(self):
        """(wake, command read, NFs ready, first burst out) TSC stamps of the last start."""
        return (self.c.wake_cycles, self.c.t_cmd_cycles, self.c.t_ready_cycles,
                self.c.t_burst_cycles)

    def reset_timing(self):
        self.c.t_cmd_cycles = self.c.t_ready_cycles = self.c.t_burst_cycles = 0

    def burst_done(self):
        return self.c.t_burst_cycles != 0

    def nf_counters(self, int nsteps):
        """Per step: {"in": n, "dropped": n, "counters": {name: value}}."""
        out = []
        for s in range(min(nsteps, SERPENS_MAX_STEPS)):
            nf = &self.c.nf[s]
            named = {nf.names[k].decode(errors="replace"): nf.values[k]
                     for k in range(min(nf.n, SERPENS_MAX_COUNTERS))}
            out.append({"in": nf.in_pkts, "dropped": nf.dropped, "counters": named})
        return out

    def crash(self):
        """How the process died, as its fatal-signal handler recorded it (runtime.c), or
        None: {"signo", "code", "step" (-1: outside any NF), "syscall", "addr", "ip"}."""
        if not serpens_load_u32(&self.c.crash.signo):
            return None
        cr = &self.c.crash
        return {"signo": cr.signo, "code": cr.code, "step": cr.step, "syscall": cr.syscall,
                "addr": cr.addr, "ip": cr.ip, "tsc": cr.tsc}

    def first_batch_cycles(self):
        """TSC when the running (or last) instance began its first batch; 0: not yet."""
        return self.c.t_batch_cycles

    def current_step(self):
        """The step whose NF runs now (-1: none): a stuck or killed instance's culprit."""
        return self.c.cur_step


def free_lost_batch(PoolCtl ctl, Ring rx, Ring tx):
    """Free the packets of the last batch an instance's dead process took from `rx` and never
    gave to `tx` (lost_batch.h); returns how many. For ring owners without a router."""
    return serpens_free_lost_batch(ctl.c, rx.r, tx.r)


def build_command(*, int kind, uint32_t seq, uint32_t instance_id=0, str rx_ring="",
                  str tx_ring="", uint64_t rx_ring_addr=0, uint64_t tx_ring_addr=0, images=(),
                  steps=(), bytes config=b"",
                  int load_mode=SERPENS_LOAD_MAP, bint populate=False, dl_paths=(),
                  uint32_t state_backend=0, uint32_t redis_port=6379):
    """Pack a serpens_cmd. images: [(base, text_len, relro_len, data_len, entry_off)];
    steps: [(kind, image, [next labels], config_off, config_len, name)]. Only the bytes in use
    are sent: the message stops at the end of `config`."""
    cdef size_t head = serpens_cmd_head()
    if len(images) > SERPENS_MAX_IMAGES or len(steps) > SERPENS_MAX_STEPS:
        raise ValueError("too many images or steps")
    if len(config) > SERPENS_CONFIG_MAX:
        raise ValueError(f"NF configuration is {len(config)} bytes, at most {SERPENS_CONFIG_MAX}")
    if len(rx_ring) >= 32 or len(tx_ring) >= 32:
        raise ValueError("ring names are at most 31 characters")
    cdef serpens_cmd *c = <serpens_cmd *>malloc(head + len(config))
    if c == NULL:
        raise MemoryError()
    try:
        return _fill_command(c, head, kind, seq, instance_id, rx_ring, tx_ring, rx_ring_addr,
                             tx_ring_addr, images, steps, config, load_mode, populate,
                             dl_paths, state_backend, redis_port)
    finally:
        free(c)


cdef bytes _fill_command(serpens_cmd *c, size_t head, int kind, uint32_t seq,
                         uint32_t instance_id, str rx_ring, str tx_ring, uint64_t rx_ring_addr,
                         uint64_t tx_ring_addr, images, steps, bytes config, int load_mode,
                         bint populate, dl_paths, uint32_t state_backend, uint32_t redis_port):
    cdef serpens_cmd *cmd = c
    memset(cmd, 0, head)
    cmd[0].magic = SERPENS_CMD_MAGIC
    cmd[0].kind = kind
    cmd[0].seq = seq
    cmd[0].instance_id = instance_id
    cmd[0].load_mode = load_mode
    cmd[0].populate = populate
    cmd[0].state_backend = state_backend
    cmd[0].redis_port = redis_port
    cmd[0].nsteps = len(steps)
    cmd[0].nimages = len(images)
    cmd[0].config_len = len(config)
    strncpy(cmd[0].rx_ring, rx_ring.encode(), 31)
    strncpy(cmd[0].tx_ring, tx_ring.encode(), 31)
    cmd[0].rx_ring_addr = rx_ring_addr
    cmd[0].tx_ring_addr = tx_ring_addr
    for i, (base, text_len, relro_len, data_len, entry_off) in enumerate(images):
        cmd[0].images[i].base = base
        cmd[0].images[i].text_len = text_len
        cmd[0].images[i].relro_len = relro_len
        cmd[0].images[i].data_len = data_len
        cmd[0].images[i].entry_off = entry_off
    for i, path in enumerate(dl_paths):
        p = path.encode()
        if len(p) >= 108:
            raise ValueError(f"path too long: {path}")
        strncpy(cmd[0].dl_path[i], p, 107)
    for i, (skind, image, nexts, coff, clen, name) in enumerate(steps):
        if not 1 <= len(nexts) <= SERPENS_MAX_PORTS:
            raise ValueError(f"step {i}: 1..{SERPENS_MAX_PORTS} ports")
        cmd[0].steps[i].kind = skind
        cmd[0].steps[i].image = image
        cmd[0].steps[i].nports = len(nexts)
        for k, label in enumerate(nexts):
            cmd[0].steps[i].next[k] = label
        cmd[0].steps[i].config_off = coff
        cmd[0].steps[i].config_len = clen
        if len(name.encode()) > 47:
            raise ValueError(f"step {i}: name {name!r} is longer than 47 bytes")
        strncpy(cmd[0].steps[i].name, name.encode(), 47)
    if config:
        memcpy(cmd[0].config, PyBytes_AS_STRING(config), len(config))
    return PyBytes_FromStringAndSize(<char *>cmd, head + len(config))


def run_pool_process(int ctl_fd, int sock, int efd, uint32_t idle_us=200):
    """A pool process's life after EAL init: returns when told to exit."""
    cdef serpens_runtime_env env
    ctl = PoolCtl(ctl_fd)
    env.ctl = (<PoolCtl>ctl).c
    env.sock = sock
    env.efd = efd
    env.label_off = label_off
    env.idle_us = idle_us
    cdef int rc
    with nogil:
        rc = serpens_runtime_main(&env)
    if rc:
        raise OSError(-rc, f"pool process: {strerror(-rc).decode()}")


def wake_if_sleeping(PoolCtl ctl, int efd):
    """Producer side of the sleep handshake (pool_ctl.h): call after enqueueing. True if this
    call wrote the eventfd (at most once per sleep)."""
    return serpens_pool_wake(ctl.c, efd) == 1


def parse(bytes frame):
    """serpens_parse on a frame (tests): (result, dict of the parsed offsets)."""
    cdef serpens_hdrs h
    cdef int r = serpens_parse(<const unsigned char *>PyBytes_AS_STRING(frame), len(frame), &h)
    return r, {"ethertype": h.ethertype, "l3_off": h.l3_off, "l4_off": h.l4_off,
               "payload_off": h.payload_off, "payload_len": h.payload_len,
               "l3_len": h.l3_len, "family": h.family, "flags": h.flags}


# ---- state tables (the state manager's view) -----------------------------------------------

PER_FLOW, GLOBAL, READ, WRITE, RELEASE, EVENTUAL = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20


def set_state_dir(str path):
    """Where this process's NFs open their state tables."""
    serpens_state_set_dir(path.encode())


cdef class StateTable:
    """A state table file mapped into this process: `StateTable(dir, nf, name)` opens an
    existing one; with flags/key_size/value_size/capacity it is created when absent."""
    cdef serpens_table t
    cdef readonly str path

    def __cinit__(self, str state_dir, str nf, str name, uint32_t flags=0,
                  uint32_t key_size=0, uint32_t value_size=0, uint32_t capacity=0):
        cdef char err[256]
        self.path = f"{state_dir}/{nf}/{name}.tbl"
        rc = serpens_table_open(&self.t, state_dir.encode(), nf.encode(), name.encode(), flags,
                                key_size, value_size, capacity, err, sizeof(err))
        if rc:
            msg = err.decode(errors="replace") or strerror(-rc).decode()
            raise OSError(-rc, msg)

    def __dealloc__(self):
        serpens_table_close(&self.t)

    def close(self):
        serpens_table_close(&self.t)

    def _check(self):
        if self.t.hdr == NULL:
            raise ValueError("table is closed")

    @property
    def info(self):
        self._check()
        h = self.t.hdr
        return {"name": h.name.decode(), "flags": h.flags, "key_size": h.key_size,
                "value_size": h.value_size, "capacity": h.capacity, "count": h.count,
                "slots": h.nslots, "file_size": h.file_size, "epoch": h.epoch}

    def __len__(self):
        self._check()
        return self.t.hdr.count

    def get(self, bytes key):
        self._check()
        if len(key) != self.t.hdr.key_size:
            raise ValueError(f"key is {self.t.hdr.key_size} bytes, got {len(key)}")
        cdef void *v = serpens_table_get(&self.t, PyBytes_AS_STRING(key))
        if v == NULL:
            return None
        return PyBytes_FromStringAndSize(<char *>v, self.t.hdr.value_size)

    def put(self, bytes key, bytes value):
        self._check()
        if len(key) != self.t.hdr.key_size or len(value) != self.t.hdr.value_size:
            raise ValueError("key or value of the wrong size")
        rc = serpens_table_put(&self.t, PyBytes_AS_STRING(key), PyBytes_AS_STRING(value), NULL)
        if rc:
            raise OSError(-rc, strerror(-rc).decode())

    def delete(self, bytes key):
        self._check()
        rc = serpens_table_delete(&self.t, PyBytes_AS_STRING(key))
        if rc:
            raise OSError(-rc, strerror(-rc).decode())

    def items(self):
        """[(key, value)] of every live entry (a reader: never blocks the writers)."""
        self._check()
        cdef uint64_t pos = 0
        cdef const void *k
        cdef const void *v
        out = []
        ks, vs = self.t.hdr.key_size, self.t.hdr.value_size
        while serpens_table_next(&self.t, &pos, &k, &v) >= 0:
            out.append((PyBytes_FromStringAndSize(<const char *>k, ks),
                        PyBytes_FromStringAndSize(<const char *>v, vs)))
        return out

    def bench_get_ns(self, keys, int rounds=3):
        """Mean ns per lookup when looking up `keys` (bytes) in bursts of 32 (get_state_bulk)."""
        self._check()
        cdef Py_ssize_t n = len(keys), i, j, b
        cdef const void *ptrs[32]
        cdef void *vals[32]
        cdef uint64_t t0, t1, found = 0
        buf = b"".join(keys)
        cdef const char *base = PyBytes_AS_STRING(buf)
        cdef uint32_t ks = self.t.hdr.key_size
        t0 = serpens_now_ns()
        with nogil:
            for j in range(rounds):
                i = 0
                while i + 32 <= n:
                    for b in range(32):
                        ptrs[b] = base + (i + b) * ks
                    found += serpens_table_get_bulk(&self.t, ptrs, 32, vals)
                    i += 32
        t1 = serpens_now_ns()
        return (t1 - t0) / max(1, (n // 32) * 32 * rounds), found

    def bench_put_ns(self, keys, int rounds=3):
        """Mean ns per put (overwriting existing entries; value = the key's first bytes)."""
        self._check()
        cdef Py_ssize_t n = len(keys), i, j
        cdef uint64_t t0, t1
        buf = b"".join(keys)
        cdef const char *base = PyBytes_AS_STRING(buf)
        cdef uint32_t ks = self.t.hdr.key_size
        if self.t.hdr.value_size > ks:
            raise ValueError("values longer than keys")
        t0 = serpens_now_ns()
        with nogil:
            for j in range(rounds):
                for i in range(n):
                    serpens_table_put(&self.t, base + i * ks, base + i * ks, NULL)
        t1 = serpens_now_ns()
        return (t1 - t0) / max(1, n * rounds)


# ---- benchmark traffic ---------------------------------------------------------------------

cdef extern from "driver.h" nogil:
    int serpens_drive(rte_ring *rx, rte_ring *tx, rte_mempool *mp, const unsigned char *frames,
                      const uint16_t *len, uint32_t nframes, uint32_t inflight, double warmup,
                      double seconds, int rewrite, serpens_pool_ctl *ctl, int efd,
                      int label_offset, serpens_drive_result *res)


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


# ---- ports and offline replay --------------------------------------------------------------

cdef extern from "ports.h" nogil:
    int serpens_port_open(const char *name, rte_mempool *mp, char *err, size_t errlen)
    int serpens_port_start(uint16_t port, const char *name, rte_mempool *mp, char *err,
                           size_t errlen)
    void serpens_port_close(uint16_t port)

cdef extern from "replay.h" nogil:
    struct serpens_replay_stats:
        uint64_t rx
        uint64_t out
        uint64_t dropped
        uint64_t tx_failed
    int serpens_replay(uint16_t in_port, uint16_t out_port, rte_ring *rx, rte_ring *tx,
                       serpens_pool_ctl *ctl, int efd, int label_offset,
                       serpens_replay_stats *st)


def port_open(str name, Mempool pool):
    """Configure and start the DPDK port `name` (one RX and one TX queue); returns its id."""
    cdef char err[256]
    err[0] = 0
    rc = serpens_port_open(name.encode(), pool.mp, err, sizeof(err))
    if rc < 0:
        raise OSError(-rc, err.decode(errors="replace"))
    return rc


def port_close(uint16_t port):
    serpens_port_close(port)


def replay(uint16_t in_port, uint16_t out_port, Ring rx, Ring tx, PoolCtl ctl, int efd):
    """Run a capture through an instance (see replay.h): returns the router's counts."""
    cdef serpens_replay_stats st
    cdef int rc
    with nogil:
        rc = serpens_replay(in_port, out_port, rx.r, tx.r, ctl.c, efd, label_off, &st)
    if rc:
        raise OSError(-rc, strerror(-rc).decode())
    return {"rx": st.rx, "out": st.out, "dropped": st.dropped, "tx_failed": st.tx_failed}


# ---- the router ----------------------------------------------------------------------------

cdef extern from "rte_eth_ring.h" nogil:
    int rte_eth_from_rings(const char *name, rte_ring * const rx_queues[], unsigned nb_rx_queues,
                           rte_ring * const tx_queues[], unsigned nb_tx_queues,
                           unsigned numa_node)

cdef extern from "rte_launch.h" nogil:
    ctypedef int (*lcore_function_t)(void *)
    int rte_eal_remote_launch(lcore_function_t f, void *arg, unsigned worker_id)
    int rte_eal_wait_lcore(unsigned worker_id)

ROUTER_MAX_INSTANCES = SERPENS_ROUTER_MAX_INSTANCES
ROUTER_MAX_SFCS = SERPENS_ROUTER_MAX_SFCS
LAT_REC_FORMAT = "<QQII"  # serpens_lat_rec: rx_tsc, tx_tsc, flow, seq


def port_from_rings(str name, Ring rx, Ring tx, Mempool pool):
    """A started DPDK port whose RX reads `rx` and whose TX writes `tx` (tests, local
    traffic); returns its id."""
    cdef rte_ring *rxq[1]
    cdef rte_ring *txq[1]
    rxq[0] = rx.r
    txq[0] = tx.r
    cdef char err[256]
    port = rte_eth_from_rings(name.encode(), rxq, 1, txq, 1, rte_socket_id())
    if port < 0:
        raise _rte_error(f"port {name}")
    rc = serpens_port_start(port, name.encode(), pool.mp, err, sizeof(err))
    if rc < 0:
        raise OSError(-rc, err.decode(errors="replace"))
    return port


cdef class Router:
    """The router of router/router.h. Ports are DPDK port ids; SFCs and instance slots are the
    router's small integers. Configure SFCs, rules and tags before traffic for them flows."""
    cdef serpens_router *r
    cdef object refs
    cdef int lcore
    cdef bint on_thread  # run() is running it on some thread

    def __cinit__(self, in_ports, out_port=None, uint32_t wake_batch=128, double wake_us=50,
                  double drain_us=100, double stall_us=2000, double hold_ms=200):
        """stall_us: the longest one instance or hold queue may stop the node's RX before
        its packets are dropped instead; hold_ms: the longest a packet waits for an instance
        (router.h "Containment")."""
        self.r = <serpens_router *>calloc(1, sizeof(serpens_router))
        if self.r == NULL:
            raise MemoryError()
        for i in range(SERPENS_ROUTER_MAX_INSTANCES):
            self.r.inst[i].pidfd = -1
        self.r.stall_cycles = <uint64_t>(rte_get_tsc_hz() * stall_us / 1e6)
        self.r.hold_cycles = <uint64_t>(rte_get_tsc_hz() * hold_ms / 1e3)
        self.r.wake_batch = wake_batch
        self.r.wake_cycles = <uint64_t>(rte_get_tsc_hz() * wake_us / 1e6)
        self.r.drain_cycles = <uint64_t>(rte_get_tsc_hz() * drain_us / 1e6)
        self.r.default_sfc = -1
        self.refs = {}
        self.lcore = -1
        for port in ([in_ports] if isinstance(in_ports, int) else in_ports):
            self.r.ports[self._port(port)].input = 1
        if out_port is not None:  # the one-SFC node: everything goes to SFC 0
            self.r.default_sfc = self.add_sfc(out_port)

    def __dealloc__(self):
        if self.lcore >= 0:
            self.r.stop = 1
            rte_eal_wait_lcore(self.lcore)
        free(self.r.log)
        free(self.r)

    cdef int _port(self, uint16_t port) except -1:
        """The router's index of a DPDK port (added on first use)."""
        for i in range(self.r.nports):
            if self.r.ports[i].id == port:
                return i
        if self.r.nports == SERPENS_ROUTER_MAX_PORTS:
            raise ValueError(f"router: at most {SERPENS_ROUTER_MAX_PORTS} ports")
        i = self.r.nports
        self.r.ports[i].id = port
        serpens_fence()
        self.r.nports += 1
        return i

    # ---- configuration ----------------------------------------------------------------------

    def add_sfc(self, out_port=None, next_sfc=None):
        """A new SFC; its OUT packets go to DPDK port `out_port` or, chained, into SFC
        `next_sfc` (local-proxy mode: the hop between NFs passes the router). Returns its id."""
        cdef serpens_router_sfc *s
        if (out_port is None) == (next_sfc is None):
            raise ValueError("an SFC leaves by exactly one of out_port, next_sfc")
        for sfc in range(SERPENS_ROUTER_MAX_SFCS):
            s = &self.r.sfcs[sfc]
            if s.used:
                continue
            if next_sfc is not None:
                if not (0 <= next_sfc < SERPENS_ROUTER_MAX_SFCS and self.r.sfcs[next_sfc].used):
                    raise ValueError(f"next SFC {next_sfc} does not exist")
                s.next, s.out_port = next_sfc, 0  # chains point back only: no cycle
            else:
                s.next, s.out_port = -1, self._port(out_port)
            s.rx = s.out = s.dropped = s.new_flows = s.moved_flows = s.rebalanced_flows = 0
            s.notify_fd = -1
            serpens_fence()
            s.used = 1
            return sfc
        raise ValueError(f"router: at most {SERPENS_ROUTER_MAX_SFCS} SFCs")

    def remove_sfc(self, int sfc):
        """Forget SFC `sfc`. The caller first unroutes it (rules, tag, default), waits for
        quiesce(), and retires its instances; what is still held for it is refused here."""
        self._check_sfc(sfc)
        s = &self.r.sfcs[sfc]
        for i in range(SERPENS_ROUTER_MAX_INSTANCES):
            if self.r.inst[i].state != SERPENS_INST_EMPTY and self.r.inst[i].sfc == sfc:
                raise ValueError(f"SFC {sfc} still has an instance in slot {i}")
        if s.nheld:
            raise ValueError(f"SFC {sfc} still holds {s.nheld} packets")
        for k in range(SERPENS_ROUTER_MAX_SFCS):
            if self.r.sfcs[k].used and k != sfc and self.r.sfcs[k].next == sfc:
                raise ValueError(f"SFC {k} is chained into SFC {sfc}")
        for i in range(self.r.nrules):
            if self.r.rules[i].sfc == sfc:
                raise ValueError(f"match rule {i} still routes to SFC {sfc}")
        if self.r.default_sfc == sfc:
            self.r.default_sfc = -1
        for vlan in range(4096):
            if self.r.tag_sfc[vlan] == sfc + 1:
                self.r.tag_sfc[vlan] = 0
        serpens_fence()
        s.notify_fd = -1
        s.used = 0

    def quiesce(self, double timeout=1.0):
        """Wait until the router began two more iterations (a routing change made before the
        call is then seen by every packet it routes). False if it is not running or slow."""
        cdef uint64_t start = serpens_load_u64(&self.r.loops)
        if self.lcore < 0:
            return False
        deadline = time.monotonic() + timeout
        while serpens_load_u64(&self.r.loops) < start + 2:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.0001)
        return True

    def held(self, int sfc):
        """Packets of `sfc` waiting in its hold queue."""
        self._check_sfc(sfc)
        return serpens_load_u32(&self.r.sfcs[sfc].nheld)

    def set_default_sfc(self, int sfc):
        """Packets no tag and no rule classify go to `sfc` (-1: counted as unmatched, freed)."""
        if sfc >= 0:
            self._check_sfc(sfc)
        self.r.default_sfc = sfc

    def set_tag(self, int vlan, int sfc):
        """Packets whose outer VLAN ID is `vlan` belong to `sfc` (-1: forget the tag)."""
        if not 0 < vlan < 4095:
            raise ValueError(f"VLAN ID 1..4094, got {vlan}")
        if sfc >= 0:
            self._check_sfc(sfc)
        self.r.tag_sfc[vlan] = sfc + 1

    def set_rules(self, rules):
        """The match table, first match wins: dicts with `sfc` and optional `src`, `dst`
        (IPv4 prefixes), `proto` (number), `sport`, `dport` ((lo, hi)), `in_port` (DPDK port)."""
        import ipaddress
        if len(rules) > SERPENS_ROUTER_MAX_RULES:
            raise ValueError(f"at most {SERPENS_ROUTER_MAX_RULES} match rules")
        cdef serpens_match_rule table[64]
        cdef serpens_match_rule *m
        memset(table, 0, sizeof(table))
        for i, rule in enumerate(rules):
            m = &table[i]
            self._check_sfc(rule["sfc"])
            m.sfc = rule["sfc"]
            for field in ("src", "dst"):
                net = ipaddress.IPv4Network(rule.get(field, "0.0.0.0/0"), strict=False)
                addr = int(net.network_address).to_bytes(4, "big")
                mask = int(net.netmask).to_bytes(4, "big")
                if field == "src":
                    m.src, m.src_mask = int.from_bytes(addr, "little"), int.from_bytes(mask, "little")
                else:
                    m.dst, m.dst_mask = int.from_bytes(addr, "little"), int.from_bytes(mask, "little")
            m.proto = rule.get("proto", 0)
            m.sport_lo, m.sport_hi = rule.get("sport", (0, 65535))
            m.dport_lo, m.dport_hi = rule.get("dport", (0, 65535))
            m.in_port = self._port(rule["in_port"]) if rule.get("in_port") is not None else -1
        self.r.nrules = 0
        serpens_fence()
        memcpy(self.r.rules, table, sizeof(table))
        serpens_fence()
        self.r.nrules = len(rules)

    def _check_sfc(self, int sfc):
        if not (0 <= sfc < SERPENS_ROUTER_MAX_SFCS and self.r.sfcs[sfc].used):
            raise ValueError(f"SFC {sfc} does not exist")

    def pace(self, uint16_t port, double pps, uint32_t depth=4096):
        """Emulate a NIC fed at `pps` on an input port whose source never runs dry (e.g.
        net_pcap infinite_rx): arrivals are stamped with their scheduled time, and more than
        `depth` arrivals waiting are lost (counted as `missed`). pps 0: unpaced."""
        cdef serpens_router_port *p = &self.r.ports[self._port(port)]
        p.pace_cycles = 0
        serpens_fence()
        if pps > 0:
            p.pace_depth = depth
            p.pace_next = <double>rte_rdtsc()
            serpens_fence()
            p.pace_cycles = rte_get_tsc_hz() / pps

    # ---- latency log ------------------------------------------------------------------------

    def log_start(self, uint64_t capacity):
        """Record (rx_tsc, tx_tsc, flow, seq) of each of the next `capacity` packets sent."""
        self.r.log_on = 0
        serpens_fence()
        free(self.r.log)
        self.r.log = <serpens_lat_rec *>malloc(capacity * sizeof(serpens_lat_rec))
        if self.r.log == NULL:
            raise MemoryError()
        # touched now: page faults while the router records would show up as latency
        memset(self.r.log, 0, capacity * sizeof(serpens_lat_rec))
        self.r.log_cap, self.r.log_n = capacity, 0
        serpens_fence()
        self.r.log_on = 1

    def log_take(self):
        """Stop recording; the records as bytes (LAT_REC_FORMAT each)."""
        self.r.log_on = 0
        serpens_fence()
        n = serpens_load_u64(&self.r.log_n)
        return PyBytes_FromStringAndSize(<char *>self.r.log, n * sizeof(serpens_lat_rec))

    # ---- instances --------------------------------------------------------------------------

    def reserve_slot(self):
        """An instance slot for set_instance(), kept from other callers until then (or until
        release_slot())."""
        for i in range(SERPENS_ROUTER_MAX_INSTANCES):
            if self.r.inst[i].state == SERPENS_INST_EMPTY and i not in self.refs:
                self.refs[i] = None
                return i
        raise ValueError(f"router: all {SERPENS_ROUTER_MAX_INSTANCES} instance slots in use")

    def release_slot(self, int i):
        """Give back a reserved slot that set_instance() never filled."""
        if self.r.inst[i].state == SERPENS_INST_EMPTY and self.refs.get(i, 0) is None:
            del self.refs[i]

    def set_instance(self, int i, Ring rx, Ring tx, PoolCtl ctl, int efd, int sfc=0,
                     int pidfd=-1, int pid=0, double budget_ms=0):
        """Slot i now holds a running instance of `sfc` that takes new flows; with `pidfd`,
        `pid` and `budget_ms`, the watchdog kills it when one batch takes longer."""
        if not 0 <= i < SERPENS_ROUTER_MAX_INSTANCES:
            raise IndexError(i)
        self._check_sfc(sfc)
        inst = &self.r.inst[i]
        if inst.state != SERPENS_INST_EMPTY:
            raise ValueError(f"router slot {i} is in use")
        self.refs[i] = (rx, tx, ctl)  # the rings and control block outlive their use here
        inst.rx, inst.tx, inst.ctl, inst.efd, inst.sfc = rx.r, tx.r, ctl.c, efd, sfc
        inst.pidfd, inst.pid = pidfd, pid
        inst.budget_cycles = <uint64_t>(rte_get_tsc_hz() * budget_ms / 1e3)
        inst.budget_ns = <uint64_t>(budget_ms * 1e6)
        inst.suspect_batch = inst.suspect_cpu_ns = inst.crash_seen_tsc = 0
        inst.last_return_tsc = rte_rdtsc()
        inst.shedding = inst.watchdog_fired = 0
        inst.stall_since = inst.dropped = 0
        inst.waiting = inst.npending = 0
        inst.enqueued = inst.returned = inst.wakeups = 0
        inst.drained = 0
        # a barrier of the slot's previous instance (a rebalance it took part in) means
        # nothing for this one, whose counters start at 0: it would hold the SFC forever
        inst.barrier_on = 0
        inst.barrier = 0
        serpens_fence()
        inst.state = SERPENS_INST_ACTIVE

    def rebalance(self, int sfc, int to):
        """Move a share of `sfc`'s flows to its new instance in slot `to`, in order, with no
        packet of a flow at two instances at once (router.h)."""
        self._check_sfc(sfc)
        if self.r.inst[to].state != SERPENS_INST_ACTIVE or self.r.inst[to].sfc != sfc:
            raise ValueError(f"slot {to} is not an active instance of SFC {sfc}")
        self.r.sfcs[sfc].rebalance_to = to + 1
        serpens_fence()
        self.r.requests = 1

    def drain_instance(self, int i):
        """Give slot i no new flows; its flows move once it has drained (drained(i)). Only
        an active instance drains (the router may have reaped a crashed one meanwhile)."""
        self.r.inst[i].drained = 0
        serpens_fence()
        serpens_cas_u32(&self.r.inst[i].state, SERPENS_INST_ACTIVE, SERPENS_INST_DRAINING)

    def drained(self, int i):
        return self.r.inst[i].state == SERPENS_INST_DRAINING and self.r.inst[i].drained == 1

    def clear_instance(self, int i, double timeout=2.0):
        """Forget slot i once its process stopped or died: the router forwards what it
        finished and frees (counting them as dropped) the packets still queued for it or
        lost in its last batch (router.h "Containment"). Its rings may be freed after this
        returns True; False (the router did not answer in `timeout`) leaves the slot taken."""
        cdef serpens_router_instance *inst = &self.r.inst[i]
        if inst.state == SERPENS_INST_EMPTY:
            self.refs.pop(i, None)
            return True
        serpens_fence()
        # (the router may have reaped it already: then it stays REAPED)
        if not serpens_cas_u32(&inst.state, SERPENS_INST_ACTIVE, SERPENS_INST_DEAD):
            serpens_cas_u32(&inst.state, SERPENS_INST_DRAINING, SERPENS_INST_DEAD)
        serpens_fence()
        if self.lcore < 0 and not self.on_thread:
            serpens_router_reap(self.r, i)  # nobody else runs the router
        deadline = time.monotonic() + timeout
        while serpens_load_u32(&inst.state) != SERPENS_INST_REAPED:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.0001)
        inst.pidfd = -1
        inst.state = SERPENS_INST_EMPTY
        serpens_fence()
        self.refs.pop(i, None)
        return True

    def reaped(self, int i):
        """The router let go of slot i by itself: its process recorded a fatal signal."""
        return serpens_load_u32(&self.r.inst[i].state) == SERPENS_INST_REAPED

    def watchdog_fired(self, int i):
        """TSC when the watchdog killed slot i's instance (stuck in one batch); 0: it did
        not."""
        if not serpens_load_u32(&self.r.inst[i].watchdog_fired):
            return 0
        return self.r.inst[i].watchdog_tsc

    def set_drop_all(self, int sfc, bint drop):
        """Drop `sfc`'s packets instead of holding them for an instance (a failed SFC)."""
        self._check_sfc(sfc)
        self.r.sfcs[sfc].drop_all = drop
        serpens_fence()

    def run(self):
        """Run on the calling thread until stop() (nogil)."""
        self._prepare()
        self.on_thread = True
        try:
            with nogil:
                serpens_router_run(self.r)
        finally:
            self.on_thread = False

    def _prepare(self):
        if label_off < 0 or meta_off < 0:
            raise RuntimeError("register_label_field() first (the agent's dataplane does)")
        self.r.label_off, self.r.meta_off = label_off, meta_off
        self.r.stop = 0

    def launch(self, unsigned lcore):
        """Run on EAL worker lcore `lcore` (DESIGN §3: the router owns a core); stop() ends it."""
        self._prepare()
        rc = rte_eal_remote_launch(serpens_router_lcore_main, self.r, lcore)
        if rc:
            raise OSError(-rc, f"launching the router on lcore {lcore}: "
                               f"{strerror(-rc).decode()}")
        self.lcore = lcore

    def stop(self):
        self.r.stop = 1
        serpens_fence()
        if self.lcore >= 0:
            with nogil:
                rte_eal_wait_lcore(self.lcore)
            self.lcore = -1

    def set_notify_fd(self, int fd, int sfc=0):
        """An eventfd the router writes when packets of `sfc` wait and it has no instance."""
        self._check_sfc(sfc)
        self.r.sfcs[sfc].notify_fd = fd

    def take_instance_request(self, int sfc=0):
        """True once per episode of packets of `sfc` waiting with no instance running."""
        serpens_fence()
        if self.r.sfcs[sfc].wants_instance:
            self.r.sfcs[sfc].wants_instance = 0
            return True
        return False

    def activity(self, int i):
        """Packets given to slot i so far (the instance manager's idle clock)."""
        return self.r.inst[i].enqueued

    def stats(self):
        r = self.r
        per = {i: {"sfc": r.inst[i].sfc, "enqueued": r.inst[i].enqueued,
                   "returned": r.inst[i].returned, "wakeups": r.inst[i].wakeups,
                   "dropped": r.inst[i].dropped,
                   "state": r.inst[i].state}
               for i in range(SERPENS_ROUTER_MAX_INSTANCES) if r.inst[i].state}
        ports = {r.ports[i].id: {"rx": r.ports[i].rx, "tx": r.ports[i].tx,
                                 "tx_failed": r.ports[i].tx_failed,
                                 "unmatched": r.ports[i].unmatched, "missed": r.ports[i].missed,
                                 "rx_empty": r.ports[i].rx_empty}
                 for i in range(r.nports)}
        sfcs = {k: {"rx": r.sfcs[k].rx, "out": r.sfcs[k].out, "dropped": r.sfcs[k].dropped,
                    "drops": {"instance_died": r.sfcs[k].drop_died,
                              "instance_stuck": r.sfcs[k].drop_stuck,
                              "no_instance": r.sfcs[k].drop_hold,
                              "sfc_failed": r.sfcs[k].drop_failed},
                    "new_flows": r.sfcs[k].new_flows, "moved_flows": r.sfcs[k].moved_flows,
                    "rebalanced_flows": r.sfcs[k].rebalanced_flows, "held": r.sfcs[k].nheld,
                    "moving": r.sfcs[k].moving}
                for k in range(SERPENS_ROUTER_MAX_SFCS) if r.sfcs[k].used}
        return {"rx": r.rx, "tx": r.tx, "dropped": r.dropped, "tx_failed": r.tx_failed,
                "sleeps": r.sleeps, "pending": r.npending, "held": r.nheld,
                "new_flows": sum(s["new_flows"] for s in sfcs.values()),
                "moved_flows": sum(s["moved_flows"] for s in sfcs.values()),
                "ports": ports, "sfcs": sfcs, "instances": per}


cdef extern from "rte_dev.h" nogil:
    int rte_dev_probe(const char *devargs)
    int rte_dev_remove(void *dev)

cdef extern from "rte_ethdev.h" nogil:
    int rte_eth_dev_get_port_by_name(const char *name, uint16_t *port_id)


def port_attach(str devargs, Mempool pool):
    """Hot-plug a device (e.g. "net_af_packet0,iface=veth0") into a running primary, then
    configure and start it like port_open; returns the port id."""
    cdef uint16_t port
    cdef char err[256]
    name = devargs.split(",", 1)[0]
    rc = rte_dev_probe(devargs.encode())
    if rc < 0:
        raise OSError(-rc, f"port {name}: cannot attach {devargs!r}: {strerror(-rc).decode()}")
    if rte_eth_dev_get_port_by_name(name.encode(), &port) != 0:
        raise OSError(19, f"port {name}: attached but no ethdev of that name")
    rc = serpens_port_start(port, name.encode(), pool.mp, err, sizeof(err))
    if rc < 0:
        raise OSError(-rc, err.decode(errors="replace"))
    return port


# ---- sandbox (runtime_cy/src/sandbox.h) -------------------------------------------------------

cdef extern from "sandbox.h" nogil:
    int serpens_sandbox_enter(int flags, char *err, size_t errlen)
    int SERPENS_SANDBOX_NET


def sandbox_enter(bint network=False):
    """Enter the pool process sandbox (no_new_privs, no capabilities, seccomp allow-list) for
    every thread of this process, for good; `network`: also an AF_INET client (the Redis
    state baseline of the benchmarks). OSError naming the step that failed."""
    cdef char err[256]
    rc = serpens_sandbox_enter(SERPENS_SANDBOX_NET if network else 0, err, sizeof(err))
    if rc:
        raise OSError(-rc, err.decode(errors="replace"))
