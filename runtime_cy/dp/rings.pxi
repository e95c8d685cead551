# Mempools and rings, and moving frames in and out of them (included by _dataplane.pyx).

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
