/* State tables (see state_table.h for the theory of operation). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* fallocate, renameat2 */
#endif
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#include <smmintrin.h>

#include "pkt.h"
#include "serpens/nf.h"
#include "state_table.h"

#define SIG_EMPTY 0u
#define SIG_BUSY 1u
#define SIG_DELETED 2u
#define HUGETLBFS_MAGIC 0x958458f6
#define MAX_KEY 256
#define MAX_VALUE (64u << 20)

static uint32_t round8(uint32_t v) { return (v + 7u) & ~7u; }

/* Layout version 2 pads a slot of 33-63 bytes to 64, so such a slot never straddles two
 * cache lines: a lookup then misses one line, not two three times out of four (FW's 56-byte
 * and MON's 48-byte slots). Other sizes keep their length (a slot over 64 bytes spans two
 * lines or three whatever its padding; smaller ones rarely straddle). Version 1 tables,
 * unpadded, made before, are still opened as they are. */
#define TABLE_VERSION 2

static uint32_t slot_bytes(uint32_t version, uint32_t key_size, uint32_t value_size)
{
	uint32_t bytes = 8 + round8(key_size) + round8(value_size);
	return version >= 2 && bytes > 32 && bytes < 64 ? 64 : bytes;
}

static uint32_t sig_of(uint32_t hash) { return hash | 0x80000000u; }

static uint32_t *slot_sig(const struct serpens_table *t, uint32_t i)
{
	return (uint32_t *)(t->slots + (uint64_t)i * t->slot_size);
}

static uint8_t *slot_key(const struct serpens_table *t, uint32_t i)
{
	return t->slots + (uint64_t)i * t->slot_size + 8;
}

static uint8_t *slot_value(const struct serpens_table *t, uint32_t i)
{
	return t->slots + (uint64_t)i * t->slot_size + t->value_off;
}

#define KEY_SEED 0x5e7eu /* tables in files depend on it: never change it */

static uint32_t key_hash(const struct serpens_table *t, const void *key)
{
	return serpens_hash_crc(key, t->key_size, KEY_SEED);
}

int serpens_table_flags_valid(uint32_t f)
{
	uint32_t scope = f & (SERPENS_PER_FLOW | SERPENS_GLOBAL);
	uint32_t mode = f & (SERPENS_RELEASE | SERPENS_EVENTUAL);
	uint32_t known = SERPENS_PER_FLOW | SERPENS_GLOBAL | SERPENS_READ | SERPENS_WRITE |
			 SERPENS_RELEASE | SERPENS_EVENTUAL | SERPENS_FLOW_VALUE;

	if ((f & SERPENS_FLOW_VALUE) && scope != SERPENS_PER_FLOW)
		return SERPENS_EINVAL;
	if ((f & ~known) || (scope != SERPENS_PER_FLOW && scope != SERPENS_GLOBAL))
		return SERPENS_EINVAL;
	if (!(f & (SERPENS_READ | SERPENS_WRITE)))
		return SERPENS_EINVAL;
	/* Consistency is chosen for, and only for, global state that instances write. */
	if (scope == SERPENS_GLOBAL && (f & SERPENS_WRITE))
		return mode == SERPENS_RELEASE || mode == SERPENS_EVENTUAL ? 0 : SERPENS_EINVAL;
	return mode ? SERPENS_EINVAL : 0;
}

/* ---- lookup ----------------------------------------------------------------------------- */

/* Keys are mostly 5-tuples (40 bytes) or a few words (MON's 20-byte hosts): compare 16 bytes
 * at a time, then 8, then a 4-byte tail, inline (a libc memcmp call per found key cost 12% of
 * an SFC's time; with a constant n the loops unroll: a flow is two vector compares and one
 * word). */
static inline __attribute__((always_inline)) int key_equal(const uint8_t *a, const uint8_t *b,
							   uint32_t n)
{
	if (n & 3)
		return memcmp(a, b, n) == 0;
	__m128i wide = _mm_setzero_si128();
	uint64_t diff = 0;
	uint32_t i = 0;
	for (; i + 16 <= n; i += 16)
		wide = _mm_or_si128(wide, _mm_xor_si128(_mm_loadu_si128((const __m128i *)(a + i)),
							_mm_loadu_si128((const __m128i *)(b + i))));
	for (; i + 8 <= n; i += 8) {
		uint64_t x, y;
		memcpy(&x, a + i, 8);
		memcpy(&y, b + i, 8);
		diff |= x ^ y;
	}
	if (i < n) {
		uint32_t x, y;
		memcpy(&x, a + i, 4);
		memcpy(&y, b + i, 4);
		diff |= x ^ y;
	}
	return _mm_testz_si128(wide, wide) & (diff == 0);
}

/* key_size: t->key_size, or that as a constant (the bulk probe's specializations). */
static inline __attribute__((always_inline)) int64_t
find_sized(const struct serpens_table *t, const void *key, uint32_t hash, uint32_t key_size)
{
	uint32_t want = sig_of(hash);
	for (uint32_t n = 0, i = hash & t->mask; n <= t->mask; n++, i = (i + 1) & t->mask) {
		uint32_t s = __atomic_load_n(slot_sig(t, i), __ATOMIC_ACQUIRE);
		if (s == SIG_EMPTY)
			return -1;
		if (s == want && key_equal(slot_key(t, i), key, key_size))
			return i;
	}
	return -1;
}

static int64_t find(const struct serpens_table *t, const void *key, uint32_t hash)
{
	return find_sized(t, key, hash, t->key_size);
}

void *serpens_table_get(const struct serpens_table *t, const void *key)
{
	int64_t i = find(t, key, key_hash(t, key));
	return i < 0 ? NULL : slot_value(t, (uint32_t)i);
}

/* Bulk lookups specialized by key size. With a constant size the hash is straight CRC steps
 * and the compare a few loads, unrolled, and a batch's keys overlap in the core instead of
 * waiting on a call and a loop each (the generic loops took half an SFC's state-table time,
 * issue 18). The sizes the stock NFs use: a flow (40 bytes), MON's host (20), NAT's pair (8)
 * and address (4); any other size takes the generic path, with the same results. */
#define SPECIALIZED(X) X(40) X(20) X(8) X(4)

static inline __attribute__((always_inline)) void
hash_sized(const void *const *keys, uint32_t n, uint32_t *hashes, uint32_t key_size)
{
	for (uint32_t k = 0; k < n; k++)
		hashes[k] = serpens_hash_crc_inline(keys[k], key_size, KEY_SEED);
}

void serpens_table_hash_bulk(const struct serpens_table *t, const void *const *keys, uint32_t n,
			     uint32_t *hashes)
{
	switch (t->key_size) {
#define CASE(size) case size: hash_sized(keys, n, hashes, size); return;
	SPECIALIZED(CASE)
#undef CASE
	default:
		for (uint32_t k = 0; k < n; k++)
			hashes[k] = key_hash(t, keys[k]);
	}
}

/* Stage 1 of a bulk lookup (the keys hashed): prefetch each key's home slot: the line holding
 * the slot's start, and the next one only when the slot runs into it (a 64-byte slot on a
 * 64-byte boundary is one line, not two). Fewer lines in flight leave the core's fill buffers
 * to the lookups themselves: with every slot prefetched as two lines, 32 lookups asked for 64
 * lines at once and the prefetches stalled (issue 18). */
void serpens_table_prefetch_bulk(const struct serpens_table *t, const uint32_t *hashes,
				 uint32_t n)
{
	for (uint32_t k = 0; k < n; k++) {
		const uint8_t *slot = (const uint8_t *)slot_sig(t, hashes[k] & t->mask);
		__builtin_prefetch(slot);
		if (((uintptr_t)slot & 63) + t->slot_size > 64)
			__builtin_prefetch(slot + t->slot_size - 1);
	}
}

/* Stage 2, one pass (the slots prefetched: each line is here or on its way): each key's home
 * slot, its key compared where the signature matches, a probe further only where the home
 * slot is taken by another key (or busy, or deleted). The branch on the signature is
 * predicted (established flows hit); a pass for the signatures, then one for the keys, then
 * one for the probes took ~11 more cycles a packet in FW->MON->NAT (issue 18): three loops'
 * bookkeeping for misses the prefetches had already overlapped. */
static inline __attribute__((always_inline)) uint32_t
probe_sized(const struct serpens_table *t, const void *const *keys, uint32_t n,
	    const uint32_t *hashes, void **values, uint32_t key_size)
{
	/* the table's view in locals: stores to values[] could alias it, as far as the
	 * compiler knows, and would reload it for every key */
	const uint8_t *slots = t->slots;
	const uint32_t mask = t->mask, slot_size = t->slot_size, value_off = t->value_off;
	uint32_t found = 0;

	for (uint32_t k = 0; k < n; k++) {
		uint32_t h = hashes[k];
		const uint8_t *slot = slots + (uint64_t)(h & mask) * slot_size;
		uint32_t s = __atomic_load_n((const uint32_t *)slot, __ATOMIC_ACQUIRE);
		void *v = NULL;
		if (__builtin_expect(s == sig_of(h), 1) && key_equal(slot + 8, keys[k], key_size)) {
			v = (void *)(slot + value_off);
		} else if (s != SIG_EMPTY) { /* another key at home: linear probing goes on */
			int64_t i = find_sized(t, keys[k], h, key_size);
			if (i >= 0)
				v = slot_value(t, (uint32_t)i);
		}
		values[k] = v;
		found += v != NULL;
	}
	return found;
}

uint32_t serpens_table_probe_bulk(const struct serpens_table *t, const void *const *keys,
				  uint32_t n, const uint32_t *hashes, void **values)
{
	switch (t->key_size) {
#define CASE(size) case size: return probe_sized(t, keys, n, hashes, values, size);
	SPECIALIZED(CASE)
#undef CASE
	default:
		return probe_sized(t, keys, n, hashes, values, t->key_size);
	}
}

uint32_t serpens_table_get_bulk(const struct serpens_table *t, const void *const *keys, uint32_t n,
				void **values)
{
	uint32_t hashes[SERPENS_BURST];

	if (n > SERPENS_BURST)
		n = SERPENS_BURST;
	serpens_table_hash_bulk(t, keys, n, hashes);
	serpens_table_prefetch_bulk(t, hashes, n);
	return serpens_table_probe_bulk(t, keys, n, hashes, values);
}

/* ---- update ----------------------------------------------------------------------------- */

static void lock(volatile uint32_t *l)
{
	while (__atomic_exchange_n(l, 1, __ATOMIC_ACQUIRE))
		while (__atomic_load_n(l, __ATOMIC_RELAXED))
			__builtin_ia32_pause();
}

static void unlock(volatile uint32_t *l) { __atomic_store_n(l, 0, __ATOMIC_RELEASE); }

/* Claim a free slot for a key known to be absent, fill it and publish it. */
static int insert(struct serpens_table *t, const void *key, uint32_t hash, const void *value,
		  void **stored)
{
	struct serpens_table_hdr *h = t->hdr;

	if (__atomic_add_fetch(&h->count, 1, __ATOMIC_ACQ_REL) > h->capacity) {
		__atomic_sub_fetch(&h->count, 1, __ATOMIC_ACQ_REL);
		return SERPENS_ENOSPC;
	}
	for (uint32_t n = 0, i = hash & t->mask; n <= t->mask; n++, i = (i + 1) & t->mask) {
		uint32_t s = __atomic_load_n(slot_sig(t, i), __ATOMIC_ACQUIRE);
		if ((s == SIG_EMPTY || s == SIG_DELETED) &&
		    __atomic_compare_exchange_n(slot_sig(t, i), &s, SIG_BUSY, 0, __ATOMIC_ACQUIRE,
						__ATOMIC_RELAXED)) {
			memcpy(slot_key(t, i), key, t->key_size);
			if (value)
				memcpy(slot_value(t, i), value, h->value_size);
			else
				memset(slot_value(t, i), 0, h->value_size);
			__atomic_store_n(slot_sig(t, i), sig_of(hash), __ATOMIC_RELEASE);
			uint64_t seq = __atomic_fetch_add(&h->inserts, 1, __ATOMIC_RELAXED);
			__atomic_store_n(&h->inserted[seq & (SERPENS_TABLE_LOG - 1)], i,
					 __ATOMIC_RELEASE);
			if (stored)
				*stored = slot_value(t, i);
			return 0;
		}
	}
	__atomic_sub_fetch(&h->count, 1, __ATOMIC_ACQ_REL);
	return SERPENS_ENOSPC; /* cannot happen below the load factor; kept for safety */
}

int serpens_table_put(struct serpens_table *t, const void *key, const void *value, void **stored)
{
	uint32_t hash = key_hash(t, key);
	int64_t i = find(t, key, hash);
	int rc;

	if (i >= 0) {
		memcpy(slot_value(t, (uint32_t)i), value, t->hdr->value_size);
		if (stored)
			*stored = slot_value(t, (uint32_t)i);
		return 0;
	}
	if (t->flags & SERPENS_PER_FLOW)
		return insert(t, key, hash, value, stored);
	lock(&t->hdr->insert_lock);
	i = find(t, key, hash); /* another instance may have inserted it meanwhile */
	if (i >= 0) {
		memcpy(slot_value(t, (uint32_t)i), value, t->hdr->value_size);
		if (stored)
			*stored = slot_value(t, (uint32_t)i);
		rc = 0;
	} else {
		rc = insert(t, key, hash, value, stored);
	}
	unlock(&t->hdr->insert_lock);
	return rc;
}

int serpens_table_delete(struct serpens_table *t, const void *key)
{
	if (!(t->flags & SERPENS_PER_FLOW))
		return SERPENS_EPERM; /* global state is not deleted while the NF runs (§IV-A) */
	return serpens_table_remove(t, key);
}

int serpens_table_remove(struct serpens_table *t, const void *key)
{
	uint32_t hash = key_hash(t, key), want = sig_of(hash);
	int64_t i = find(t, key, hash);
	/* Two instances deleting one key at once (expiry races): only the CAS winner deletes and
	 * gives its slot back to `count`. */
	if (i < 0 || !__atomic_compare_exchange_n(slot_sig(t, (uint32_t)i), &want, SIG_DELETED, 0,
						  __ATOMIC_RELEASE, __ATOMIC_RELAXED))
		return SERPENS_ENOENT;
	__atomic_sub_fetch(&t->hdr->count, 1, __ATOMIC_ACQ_REL);
	return 0;
}

void serpens_table_lock(struct serpens_table *t) { lock(&t->hdr->insert_lock); }

void serpens_table_unlock(struct serpens_table *t) { unlock(&t->hdr->insert_lock); }

int serpens_table_get_or_zero_locked(struct serpens_table *t, const void *key, void **value)
{
	uint32_t hash = key_hash(t, key);
	int64_t i = find(t, key, hash);
	if (i >= 0) {
		*value = slot_value(t, (uint32_t)i);
		return 0;
	}
	return insert(t, key, hash, NULL, value);
}

int serpens_table_get_or_zero(struct serpens_table *t, const void *key, void **value)
{
	int64_t i = find(t, key, key_hash(t, key));
	if (i >= 0) {
		*value = slot_value(t, (uint32_t)i);
		return 0;
	}
	lock(&t->hdr->insert_lock);
	int rc = serpens_table_get_or_zero_locked(t, key, value);
	unlock(&t->hdr->insert_lock);
	return rc;
}

int serpens_table_fetch_add(struct serpens_table *t, const void *key, uint64_t delta,
			    uint64_t *before)
{
	void *v;
	if ((t->flags & (SERPENS_GLOBAL | SERPENS_WRITE)) != (SERPENS_GLOBAL | SERPENS_WRITE) ||
	    t->hdr->value_size < 8)
		return SERPENS_EPERM;
	int rc = serpens_table_get_or_zero(t, key, &v);
	if (rc)
		return rc;
	uint64_t old = __atomic_fetch_add((uint64_t *)v, delta, __ATOMIC_ACQ_REL);
	if (before)
		*before = old;
	return 0;
}

int64_t serpens_table_next(const struct serpens_table *t, uint64_t *pos, const void **key,
			   const void **value)
{
	for (uint64_t i = *pos; i <= t->mask; i++) {
		uint32_t s = __atomic_load_n(slot_sig(t, (uint32_t)i), __ATOMIC_ACQUIRE);
		if (s & 0x80000000u) {
			*key = slot_key(t, (uint32_t)i);
			*value = slot_value(t, (uint32_t)i);
			*pos = i + 1;
			return (int64_t)i;
		}
	}
	*pos = (uint64_t)t->mask + 1;
	return -1;
}

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14 */
#endif

int serpens_table_populate(const struct serpens_table *t)
{
	return madvise(t->hdr, t->map_size, MADV_POPULATE_WRITE) ? -errno : 0;
}

uint64_t serpens_table_inserts(const struct serpens_table *t)
{
	return __atomic_load_n(&t->hdr->inserts, __ATOMIC_ACQUIRE);
}

int serpens_table_logged(const struct serpens_table *t, uint64_t seq, const void **key)
{
	uint32_t i = __atomic_load_n(&t->hdr->inserted[seq & (SERPENS_TABLE_LOG - 1)],
				     __ATOMIC_ACQUIRE);
	if (i > t->mask || !(__atomic_load_n(slot_sig(t, i), __ATOMIC_ACQUIRE) & 0x80000000u))
		return 0;
	*key = slot_key(t, i);
	return 1;
}

/* ---- files ------------------------------------------------------------------------------ */

static int mkdirs(char *path)
{
	for (char *p = path + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = 0;
		int rc = mkdir(path, 0700);
		*p = '/';
		if (rc && errno != EEXIST)
			return -errno;
	}
	if (mkdir(path, 0700) && errno != EEXIST)
		return -errno;
	return 0;
}

static uint64_t table_size(uint32_t nslots, uint32_t slot_size, int huge)
{
	uint64_t align = huge ? (2ull << 20) : 4096;
	uint64_t size = SERPENS_TABLE_HDR + (uint64_t)nslots * slot_size;
	return (size + align - 1) & ~(align - 1);
}

static void view_of(struct serpens_table *t, void *base, uint64_t map_size)
{
	t->hdr = base;
	t->slots = (uint8_t *)base + SERPENS_TABLE_HDR;
	t->mask = t->hdr->nslots - 1;
	t->slot_size = t->hdr->slot_size;
	t->key_size = t->hdr->key_size;
	t->value_off = t->hdr->value_off;
	t->flags = t->hdr->flags;
	t->map_size = map_size;
}

/* Give the file `size` bytes of real pages now: tmpfs allocates them, hugetlbfs takes huge
 * pages from its pool. A full filesystem is then -ENOSPC here, not a SIGBUS on the first touch
 * of a hole in the mapping (ftruncate alone makes holes). Filesystems without fallocate keep
 * the holes. */
static int reserve(int fd, uint64_t size)
{
	if (fallocate(fd, 0, 0, (off_t)size) == 0)
		return 0;
	if (errno != EOPNOTSUPP)
		return -errno;
	return ftruncate(fd, (off_t)size) ? -errno : 0;
}

static void say_errno(char *err, size_t errlen, const char *what, const char *path, int rc,
		      uint64_t size)
{
	if (rc == -ENOSPC)
		snprintf(err, errlen, "state filesystem full (ENOSPC): no room for the %llu bytes "
			 "of %s", (unsigned long long)size, path); /* reason first: messages get cut */
	else
		snprintf(err, errlen, "%s %s: %s", what, path, strerror(-rc));
}

/* Fill a new file's header and slots (all zero: empty) through a shared mapping. */
static int init_file(struct serpens_table *t, int fd, uint64_t size, const char *name,
		     uint32_t flags, uint32_t ks, uint32_t vs, uint32_t cap, uint32_t nslots)
{
	void *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (base == MAP_FAILED)
		return -errno;
	struct serpens_table_hdr *h = base;
	h->magic = SERPENS_TABLE_MAGIC;
	h->version = TABLE_VERSION;
	h->flags = flags;
	h->key_size = ks;
	h->value_size = vs;
	h->capacity = cap;
	h->nslots = nslots;
	h->slot_size = slot_bytes(TABLE_VERSION, ks, vs);
	h->key_off = 8;
	h->value_off = 8 + round8(ks);
	h->file_size = size;
	snprintf(h->name, sizeof(h->name), "%s", name);
	h->ready = 1;
	view_of(t, base, size);
	return 0;
}

/* Create the table as `.<name>.tbl.<pid>` beside `path` and rename it into place only once
 * complete, so `path` never names a half-made table and a failure (a full filesystem) leaves
 * nothing behind. Returns 0, -EEXIST when another process renamed its table in first (the
 * caller attaches to that one), or another -errno with `err` set. */
static int create(struct serpens_table *t, const char *folder, const char *path, int huge,
		  const char *name, uint32_t flags, uint32_t ks, uint32_t vs, uint32_t cap,
		  char *err, size_t errlen)
{
	char tmp[512];
	uint32_t nslots = 16;
	while ((uint64_t)nslots * 3 < (uint64_t)cap * 4)
		nslots <<= 1;
	uint64_t size = table_size(nslots, slot_bytes(TABLE_VERSION, ks, vs), huge);

	if (snprintf(tmp, sizeof(tmp), "%s/.%s.tbl.%d", folder, name, (int)getpid()) >=
	    (int)sizeof(tmp))
		return -ENAMETOOLONG;
	unlink(tmp); /* left by a crashed process that had our pid */
	int fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0) {
		int rc = -errno;
		say_errno(err, errlen, "creating", path, rc, 0);
		return rc;
	}
	int rc = reserve(fd, size);
	if (rc == 0)
		rc = init_file(t, fd, size, name, flags, ks, vs, cap, nslots);
	close(fd);
	if (rc) {
		say_errno(err, errlen, "creating", path, rc, size);
	} else if (renameat2(AT_FDCWD, tmp, AT_FDCWD, path, RENAME_NOREPLACE)) {
		rc = -errno;
		serpens_table_close(t);
		if (rc != -EEXIST)
			say_errno(err, errlen, "creating", path, rc, 0);
	}
	if (rc)
		unlink(tmp);
	return rc;
}

/* A table file's header describes a table that fits the file (a truncated or corrupt file
 * left by a crash, a bad restore): checked on a copy before mapping, so a bad file is an
 * error, never a SIGBUS or a write outside the slots. */
static int check_header(const struct serpens_table_hdr *h, uint64_t st_size, const char *path,
			char *err, size_t errlen)
{
	const char *why = NULL;
	if (h->magic != SERPENS_TABLE_MAGIC || h->version < 1 || h->version > TABLE_VERSION ||
	    !h->ready)
		why = "not a state table (bad magic or version, or never initialised)";
	else if (h->key_size == 0 || h->key_size > MAX_KEY || h->value_size == 0 ||
		 h->value_size > MAX_VALUE || h->key_off != 8 ||
		 h->value_off != 8 + round8(h->key_size) ||
		 h->slot_size != slot_bytes(h->version, h->key_size, h->value_size) ||
		 h->nslots == 0 || (h->nslots & (h->nslots - 1)) ||
		 (uint64_t)h->nslots * 3 < (uint64_t)h->capacity * 4)
		why = "inconsistent header";
	else if (h->file_size > st_size ||
		 SERPENS_TABLE_HDR + (uint64_t)h->nslots * h->slot_size > h->file_size)
		why = "file shorter than its table";
	if (!why)
		return 0;
	snprintf(err, errlen, "%s: %s; drop it with `serpensctl state reset`", path, why);
	return -EIO;
}

static int attach(struct serpens_table *t, int fd, const char *path, uint32_t flags, uint32_t ks,
		  uint32_t vs, uint32_t cap, char *err, size_t errlen)
{
	struct serpens_table_hdr h;
	struct stat st;
	int rc;

	if (fstat(fd, &st))
		return -errno;
	if (st.st_size < SERPENS_TABLE_HDR || pread(fd, &h, sizeof(h), 0) != (ssize_t)sizeof(h)) {
		snprintf(err, errlen, "%s: truncated (%lld bytes); drop it with `serpensctl state "
			 "reset`", path, (long long)st.st_size);
		return -EIO;
	}
	if ((rc = check_header(&h, (uint64_t)st.st_size, path, err, errlen)) != 0)
		return rc;
	/* SERPENS_FLOW_VALUE describes the values, not the layout: a table made before an NF
	 * declared it is the same table (its header learns the flag below). */
	if (flags && ((h.flags | SERPENS_FLOW_VALUE) != (flags | SERPENS_FLOW_VALUE) ||
		      h.key_size != ks || h.value_size != vs || h.capacity != cap)) {
		snprintf(err, errlen,
			 "%s exists with flags 0x%x key %u value %u capacity %u (asked 0x%x %u %u %u)",
			 path, h.flags, h.key_size, h.value_size, h.capacity, flags, ks, vs, cap);
		return SERPENS_EEXIST;
	}
	/* Holes (a table made by ftruncate alone): fill them now or fail, rather than SIGBUS
	 * when an instance or the agent first touches one on a full filesystem. */
	if ((uint64_t)st.st_blocks * 512 < (uint64_t)st.st_size &&
	    (rc = reserve(fd, (uint64_t)st.st_size)) != 0) {
		say_errno(err, errlen, "reserving", path, rc, (uint64_t)st.st_size);
		return rc;
	}
	void *base = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (base == MAP_FAILED) {
		rc = -errno;
		say_errno(err, errlen, "mapping", path, rc, (uint64_t)st.st_size);
		return rc;
	}
	if (flags & SERPENS_FLOW_VALUE)
		__atomic_fetch_or(&((struct serpens_table_hdr *)base)->flags, SERPENS_FLOW_VALUE,
				  __ATOMIC_RELAXED);
	view_of(t, base, (uint64_t)st.st_size);
	return 0;
}

static int open_existing(struct serpens_table *t, const char *path, uint32_t flags, uint32_t ks,
			 uint32_t vs, uint32_t cap, char *err, size_t errlen)
{
	int fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int rc = attach(t, fd, path, flags, ks, vs, cap, err, errlen);
	close(fd);
	return rc;
}

int serpens_table_open(struct serpens_table *t, const char *dir, const char *ns, const char *name,
		       uint32_t flags, uint32_t ks, uint32_t vs, uint32_t cap, char *err,
		       size_t errlen)
{
	char folder[512], path[512];
	int rc;

	memset(t, 0, sizeof(*t));
	err[0] = 0;
	if (!name || !name[0] || strchr(name, '/') || strlen(name) >= SERPENS_TABLE_NAME ||
	    !ns || !ns[0] || strchr(ns, '/')) {
		snprintf(err, errlen, "table and NF names must be non-empty, without '/'");
		return SERPENS_EINVAL;
	}
	if (flags && (serpens_table_flags_valid(flags) || ks == 0 || ks > MAX_KEY || vs == 0 ||
		      vs > MAX_VALUE || cap == 0 || cap > (1u << 28) ||
		      ((flags & SERPENS_FLOW_VALUE) && vs < sizeof(struct serpens_flow)))) {
		snprintf(err, errlen, "table %s: invalid flags 0x%x or sizes", name, flags);
		return SERPENS_EINVAL;
	}
	if (snprintf(folder, sizeof(folder), "%s/%s", dir, ns) >= (int)sizeof(folder) ||
	    snprintf(path, sizeof(path), "%s/%s.tbl", folder, name) >= (int)sizeof(path))
		return -ENAMETOOLONG;

	rc = open_existing(t, path, flags, ks, vs, cap, err, errlen);
	if (rc != -ENOENT || !flags) {
		if (rc && !err[0])
			say_errno(err, errlen, "opening", path, rc, 0);
		return rc;
	}
	if ((rc = mkdirs(folder)) != 0) {
		say_errno(err, errlen, "creating", folder, rc, 0);
		return rc;
	}
	struct statfs fs;
	int huge = statfs(folder, &fs) == 0 && fs.f_type == HUGETLBFS_MAGIC;
	rc = create(t, folder, path, huge, name, flags, ks, vs, cap, err, errlen);
	if (rc == -EEXIST) /* another instance created it meanwhile: use theirs */
		rc = open_existing(t, path, flags, ks, vs, cap, err, errlen);
	return rc;
}

void serpens_table_close(struct serpens_table *t)
{
	if (t->hdr)
		munmap(t->hdr, t->map_size);
	memset(t, 0, sizeof(*t));
}
