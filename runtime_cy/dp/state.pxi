# State tables, the state manager's view (included by _dataplane.pyx).

PER_FLOW, GLOBAL, READ, WRITE, RELEASE, EVENTUAL, FLOW_VALUE = \
    0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40
TABLE_LOG = 512         # state_table.h SERPENS_TABLE_LOG: inserts remembered


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

    def get_bulk(self, keys):
        """[value or None] of up to 32 keys, looked up together (serpens_table_get_bulk: the
        lookup NFs' get_state_bulk makes)."""
        self._check()
        cdef const void *ptrs[32]
        cdef void *vals[32]
        cdef Py_ssize_t n = len(keys), k
        if n > 32:
            raise ValueError(f"at most 32 keys, got {n}")
        for k in range(n):
            if len(keys[k]) != self.t.hdr.key_size:
                raise ValueError(f"key is {self.t.hdr.key_size} bytes, got {len(keys[k])}")
            ptrs[k] = PyBytes_AS_STRING(keys[k])
        found = serpens_table_get_bulk(&self.t, ptrs, <uint32_t>n, vals)
        out = [None if vals[k] == NULL else
               PyBytes_FromStringAndSize(<char *>vals[k], self.t.hdr.value_size)
               for k in range(n)]
        assert found == sum(v is not None for v in out)
        return out

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

    def put_many(self, bytes keys, bytes values):
        """Put n entries given as n keys and n values back to back (moving flows in bulk);
        returns n. Stops at the first error (OSError: that many were put before it)."""
        self._check()
        cdef uint32_t ks = self.t.hdr.key_size, vs = self.t.hdr.value_size
        cdef Py_ssize_t n = len(keys) // ks, i
        cdef const char *k = PyBytes_AS_STRING(keys)
        cdef const char *v = PyBytes_AS_STRING(values)
        cdef int rc = 0
        if len(keys) != n * ks or len(values) != n * vs:
            raise ValueError(f"{len(keys)} bytes of keys and {len(values)} of values are not "
                             f"whole entries of {ks} and {vs} bytes")
        with nogil:
            for i in range(n):
                rc = serpens_table_put(&self.t, k + i * ks, v + i * vs, NULL)
                if rc:
                    break
        if rc:
            raise OSError(-rc, f"{strerror(-rc).decode()} after {i} of {n} entries")
        return n

    def delete_many(self, bytes keys):
        """Delete the entries of n keys given back to back; returns how many were there."""
        self._check()
        cdef uint32_t ks = self.t.hdr.key_size
        cdef Py_ssize_t n = len(keys) // ks, i, gone = 0
        cdef const char *k = PyBytes_AS_STRING(keys)
        if len(keys) != n * ks:
            raise ValueError(f"{len(keys)} bytes are not whole keys of {ks} bytes")
        with nogil:
            for i in range(n):
                if serpens_table_delete(&self.t, k + i * ks) == 0:
                    gone += 1
        return gone

    def populate(self):
        """Map all of the table into this process now (serpens_table_populate): a mover's
        later reads and writes fault in no page. OSError if the kernel cannot."""
        self._check()
        cdef int rc
        with nogil:
            rc = serpens_table_populate(&self.t)
        if rc:
            raise OSError(-rc, strerror(-rc).decode())

    @property
    def inserts(self):
        """Entries inserted since the table was made (a counter: logged_keys())."""
        self._check()
        return serpens_table_inserts(&self.t)

    def logged_keys(self, uint64_t since):
        """The keys (back to back) of the slots the inserts from number `since` on went into
        (`inserts` read before), or None when more than TABLE_LOG were made since: hints
        (a slot may hold another key, or none, by now: look them up, get_many())."""
        self._check()
        cdef uint64_t now = serpens_table_inserts(&self.t), seq
        cdef uint32_t ks = self.t.hdr.key_size
        cdef const void *key
        if now - since > TABLE_LOG or since > now:
            return None
        out = bytearray((now - since) * ks)
        cdef char *o = out
        cdef Py_ssize_t n = 0
        with nogil:
            for seq in range(since, now):
                if serpens_table_logged(&self.t, seq, &key):
                    memcpy(o + n * ks, key, ks)
                    n += 1
        # inserts made meanwhile may have written over the positions read: then it is not
        # the whole list (those made since `now` are the next reader's)
        if serpens_table_inserts(&self.t) - since > TABLE_LOG:
            return None
        return bytes(out[:n * ks])

    def get_many(self, bytes keys):
        """(keys, values) of the entries of `keys` (back to back) that are there, each once,
        looked up 32 at a time (a mover's export of keys read before: Snapshot)."""
        self._check()
        cdef uint32_t ks = self.t.hdr.key_size, vs = self.t.hdr.value_size
        cdef Py_ssize_t n = len(keys) // ks, i, j, b, kept = 0
        cdef const char *k = PyBytes_AS_STRING(keys)
        cdef const void *ptrs[32]
        cdef void *vals[32]
        cdef uint64_t idx
        if len(keys) != n * ks:
            raise ValueError(f"{len(keys)} bytes are not whole keys of {ks} bytes")
        cdef uint8_t *seen = <uint8_t *>calloc(<size_t>self.t.mask // 8 + 1, 1)
        if seen == NULL:
            raise MemoryError()
        out_keys = bytearray(n * ks)
        out_values = bytearray(n * vs)
        cdef char *ok = out_keys
        cdef char *ov = out_values
        try:
            with nogil:
                for i in range(0, n, 32):
                    b = min(32, n - i)
                    for j in range(b):
                        ptrs[j] = k + (i + j) * ks
                    serpens_table_get_bulk(&self.t, ptrs, <uint32_t>b, vals)
                    for j in range(b):
                        if vals[j] == NULL:
                            continue
                        idx = (<uint8_t *>vals[j] - self.t.slots) // self.t.slot_size
                        if seen[idx >> 3] >> (idx & 7) & 1:
                            continue   # asked twice
                        seen[idx >> 3] |= 1 << (idx & 7)
                        memcpy(ok + kept * ks, ptrs[j], ks)
                        memcpy(ov + kept * vs, vals[j], vs)
                        kept += 1
        finally:
            free(seen)
        return bytes(out_keys[:kept * ks]), bytes(out_values[:kept * vs])

    def items(self, limit=None):
        """[(key, value)] of every live entry, or of the first `limit` (a reader: never
        blocks the writers)."""
        self._check()
        cdef uint64_t pos = 0
        cdef const void *k
        cdef const void *v
        cdef Py_ssize_t left = -1 if limit is None else max(0, limit)
        out = []
        ks, vs = self.t.hdr.key_size, self.t.hdr.value_size
        while left != 0 and serpens_table_next(&self.t, &pos, &k, &v) >= 0:
            left -= 1
            out.append((PyBytes_FromStringAndSize(<const char *>k, ks),
                        PyBytes_FromStringAndSize(<const char *>v, vs)))
        return out

    def dump(self):
        """(keys, values): every live entry's key and value, each back to back (items() in
        two blobs: moving flows in bulk; a reader, never blocks the writers)."""
        self._check()
        cdef uint64_t pos = 0, n = 0, cap = self.t.hdr.count + 256
        cdef uint32_t ks = self.t.hdr.key_size, vs = self.t.hdr.value_size
        cdef const void *k
        cdef const void *v
        cdef char *kb = <char *>malloc(cap * ks)
        cdef char *vb = <char *>malloc(cap * vs + 1)
        cdef char *grown
        try:
            if kb == NULL or vb == NULL:
                raise MemoryError()
            while serpens_table_next(&self.t, &pos, &k, &v) >= 0:
                if n == cap:  # writers added entries meanwhile
                    cap *= 2
                    grown = <char *>realloc(kb, cap * ks)
                    if grown == NULL:
                        raise MemoryError()
                    kb = grown
                    grown = <char *>realloc(vb, cap * vs + 1)
                    if grown == NULL:
                        raise MemoryError()
                    vb = grown
                memcpy(kb + n * ks, k, ks)
                memcpy(vb + n * vs, v, vs)
                n += 1
            return PyBytes_FromStringAndSize(kb, n * ks), PyBytes_FromStringAndSize(vb, n * vs)
        finally:
            free(kb)
            free(vb)

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
