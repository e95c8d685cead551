# A pool process: its control block (pool_ctl.h), its commands, its main loop
# (included by _dataplane.pyx).

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

    def request_split(self, str only=""):
        """Ask the running instance to split a share of every release pool (or only of the
        one `only` names, "<namespace>/<table>") off into `<table>@out` (docs/state.md
        "Between servers"); the request's number (done once split_done reaches it,
        split_result() then says how it went). Wake it afterwards."""
        cdef bytes raw = only.encode()
        if len(raw) >= sizeof(self.c.split_only):
            raise ValueError(f"only: {only!r} longer than {sizeof(self.c.split_only) - 1} bytes")
        memset(self.c.split_only, 0, sizeof(self.c.split_only))
        memcpy(self.c.split_only, <char *>raw, len(raw))
        return serpens_inc_u32(&self.c.split_req)   # a full barrier: split_only is seen first

    @property
    def split_done(self): return serpens_load_u32(&self.c.split_done)

    def split_result(self):
        """(rc, reason) of the last split answered: 0 or -errno."""
        serpens_fence()
        return self.c.split_rc, self.c.split_error.decode(errors="replace")

    def nf_ops(self, int step):
        """Which ops the NF of `step` has, as its instance found them at start:
        {"merge": bool, "split": bool}."""
        if not 0 <= step < SERPENS_MAX_STEPS:
            raise ValueError(f"step {step}")
        serpens_fence()
        ops = self.c.nf[step].ops
        return {"merge": bool(ops & 1), "split": bool(ops & 2)}
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
    def state_error(self):
        """Why the instance's state backend stopped serving state ("": it did not)."""
        serpens_fence()
        return self.c.state_error.decode(errors="replace")
    @property
    def last_error(self): return self.c.last_error
    @property
    def error(self): return self.c.error.decode(errors="replace")
    @property
    def pid(self): return self.c.pid
    @property
    def instance_id(self): return self.c.instance_id
    @property
    def busy_cycles(self):
        """TSC cycles the running (or last) instance spent on batches since its start
        (usage metering; written by the instance, so only as honest as its NFs)."""
        return self.c.busy_cycles

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

    @property
    def nf_cycles_on(self): return bool(self.c.nf_cycles_on)
    @nf_cycles_on.setter
    def nf_cycles_on(self, bint on):
        """Count each NF call's TSC cycles from the next burst on (benchmarks: nf_cycles())."""
        self.c.nf_cycles_on = on

    def nf_cycles(self, int nsteps):
        """Per step: (TSC cycles of its process() calls, packets in them) counted while
        nf_cycles_on, since the instance started."""
        return [(self.c.nf[s].timed_cycles, self.c.nf[s].timed_pkts)
                for s in range(min(nsteps, SERPENS_MAX_STEPS))]

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

    def observe(self, uint32_t gen, *, bint capture=False, int step=-1, int at=0,
                uint32_t snaplen=0, uint32_t trace=0):
        """Arm capture or trace as generation `gen` (obs_arm)."""
        obs_arm(&self.c.obs, gen, capture, step, at, snaplen, trace)

    def observe_off(self, uint32_t gen):
        """Disarm arming `gen` if still armed (a later one is left alone)."""
        serpens_cas_u32(&self.c.obs.on, gen, 0)

    @property
    def observing(self): return serpens_load_u32(&self.c.obs.on)

    @property
    def observe_lost(self):
        """Records lost to a full ring since the process began (packets were not)."""
        return serpens_load_u64(&self.c.obs.lost)

    def take_observed(self):
        """The records published since the last take, consumed (obs_take)."""
        return obs_take(&self.c.obs)

    def current_step(self):
        """The step whose NF runs now (-1: none): a stuck or killed instance's culprit."""
        return self.c.cur_step


AT_IN, AT_OUT, AT_DROP = SERPENS_AT_IN, SERPENS_AT_OUT, SERPENS_AT_DROP
OBS_RING = SERPENS_OBS_RING


cdef obs_arm(serpens_obs *o, uint32_t gen, bint capture, int step, int at, uint32_t snaplen,
             uint32_t trace):
    """Arm capture (at step `step`, -1: the SFC; `at` AT_IN/OUT/DROP, `snaplen` bytes) and/or
    trace (the next `trace` packets) as generation `gen` (not 0); records of earlier armings
    still in the ring are skipped (pool_ctl.h "Capture and trace")."""
    if gen == 0:
        raise ValueError("gen: an arming's generation is not 0")
    if at not in (SERPENS_AT_IN, SERPENS_AT_OUT, SERPENS_AT_DROP):
        raise ValueError(f"at: {at}")
    serpens_store_u32(&o.on, 0)
    o.flags = (SERPENS_OBS_CAPTURE if capture else 0) | (SERPENS_OBS_TRACE if trace else 0)
    o.step = step
    o.at = at
    o.snaplen = snaplen
    o.trace_max = trace
    serpens_store_u64(&o.tail, serpens_load_u64(&o.head))
    serpens_store_u32(&o.on, gen)


cdef bytes obs_take(serpens_obs *o):
    """The records published since the last take, consumed (at most the ring's size): bytes
    for serpens.agent.capture.parse_records()."""
    cdef uint64_t tail = o.tail
    cdef uint64_t head = serpens_load_u64(&o.head)
    cdef uint64_t n = head - tail
    cdef uint64_t pos, first
    if n > SERPENS_OBS_RING:  # cannot happen with a sane producer; drop it all
        serpens_store_u64(&o.tail, head)
        return b""
    out = PyBytes_FromStringAndSize(NULL, n)
    cdef char *dst = PyBytes_AS_STRING(out)
    pos = tail & (SERPENS_OBS_RING - 1)
    first = min(n, SERPENS_OBS_RING - pos)
    memcpy(dst, <char *>o.ring + pos, first)
    memcpy(dst + first, <char *>o.ring, n - first)
    serpens_store_u64(&o.tail, head)
    return out


cdef class ObsRing:
    """A capture record ring outside any pool process: the router's drops of one SFC
    (Router.set_drop_capture). The same interface as a PoolCtl's for agent/capture.py."""
    cdef serpens_obs *o

    def __cinit__(self):
        # anonymous memory: zero, page aligned, touched only as records are written
        cdef void *p = mmap(NULL, sizeof(serpens_obs), PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        if p == MAP_FAILED:
            raise OSError(errno, "mapping a capture ring")
        self.o = <serpens_obs *>p

    def __dealloc__(self):
        if self.o != NULL:
            munmap(self.o, sizeof(serpens_obs))

    def observe(self, uint32_t gen, *, bint capture=False, int step=-1, int at=0,
                uint32_t snaplen=0, uint32_t trace=0):
        obs_arm(self.o, gen, capture, step, at, snaplen, trace)

    def observe_off(self, uint32_t gen):
        serpens_cas_u32(&self.o.on, gen, 0)

    @property
    def observing(self): return serpens_load_u32(&self.o.on)

    @property
    def observe_lost(self): return serpens_load_u64(&self.o.lost)

    def take_observed(self):
        return obs_take(self.o)


def free_lost_batch(PoolCtl ctl, Ring rx, Ring tx):
    """Free the packets of the last batch an instance's dead process took from `rx` and never
    gave to `tx` (lost_batch.h); returns how many. For ring owners without a router."""
    return serpens_free_lost_batch(ctl.c, rx.r, tx.r)


def build_command(*, int kind, uint32_t seq, uint32_t instance_id=0, str rx_ring="",
                  str tx_ring="", uint64_t rx_ring_addr=0, uint64_t tx_ring_addr=0, images=(),
                  steps=(), bytes config=b"",
                  int load_mode=SERPENS_LOAD_MAP, bint populate=False, dl_paths=(),
                  uint32_t state_backend=SERPENS_STATE_LOCAL, str state_arg=""):
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
    if len(state_arg.encode()) >= SERPENS_STATE_ARG:
        raise ValueError(f"state_arg is at most {SERPENS_STATE_ARG - 1} bytes")
    cdef serpens_cmd *c = <serpens_cmd *>malloc(head + len(config))
    if c == NULL:
        raise MemoryError()
    try:
        return _fill_command(c, head, kind, seq, instance_id, rx_ring, tx_ring, rx_ring_addr,
                             tx_ring_addr, images, steps, config, load_mode, populate,
                             dl_paths, state_backend, state_arg)
    finally:
        free(c)


cdef bytes _fill_command(serpens_cmd *c, size_t head, int kind, uint32_t seq,
                         uint32_t instance_id, str rx_ring, str tx_ring, uint64_t rx_ring_addr,
                         uint64_t tx_ring_addr, images, steps, bytes config, int load_mode,
                         bint populate, dl_paths, uint32_t state_backend, str state_arg):
    cdef serpens_cmd *cmd = c
    memset(cmd, 0, head)
    cmd[0].magic = SERPENS_CMD_MAGIC
    cmd[0].kind = kind
    cmd[0].seq = seq
    cmd[0].instance_id = instance_id
    cmd[0].load_mode = load_mode
    cmd[0].populate = populate
    cmd[0].state_backend = state_backend
    cmd[0].nsteps = len(steps)
    cmd[0].nimages = len(images)
    cmd[0].config_len = len(config)
    strncpy(cmd[0].rx_ring, rx_ring.encode(), 31)
    strncpy(cmd[0].tx_ring, tx_ring.encode(), 31)
    strncpy(cmd[0].state_arg, state_arg.encode(), SERPENS_STATE_ARG - 1)
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
