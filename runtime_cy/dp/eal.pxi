# EAL: init and cleanup, the mbuf dynfields, the TSC clock (included by _dataplane.pyx).

def _rte_error(what):
    return OSError(rte_errno, f"{what}: {rte_strerror(rte_errno).decode()}")


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
    (gaps, total_us, max_us, elapsed_us). Benchmarks report it: such gaps set tail latency
    here. elapsed_us is the time that actually passed (a gap can overrun `seconds`)."""
    cdef uint64_t hz = rte_get_tsc_hz(), start, last, now, gap, end, total = 0, worst = 0
    cdef uint64_t limit = <uint64_t>(hz * threshold_us / 1e6)
    cdef unsigned n = 0
    with nogil:
        last = rte_rdtsc()
        start = last
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
    return n, total * 1e6 / hz, worst * 1e6 / hz, (last - start) * 1e6 / hz


def region_reserve():
    cdef int rc = serpens_region_reserve()
    if rc:
        raise OSError(-rc, f"reserving the NF region: {strerror(-rc).decode()}")
