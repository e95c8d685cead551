/*
 * The context table every NF imports (serpens/nf.h). Packet helpers act on the rte_mbuf behind
 * b->pkt[i] and keep b->data[i]/b->len[i] in step; the rest is plain C shared by all NFs, so a
 * fix here reaches every NF without a rebuild.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <nmmintrin.h>
#include <rte_cycles.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>

#include "nf_api.h"

/* ---- clock ------------------------------------------------------------------------------ */

static uint64_t clock_tsc0, clock_ns0, clock_mult; /* ns = ns0 + (tsc - tsc0) * mult >> 32 */

void serpens_clock_init(void)
{
	struct timespec a, b;
	uint64_t t0, t1;

	/* Two CLOCK_MONOTONIC reads 10 ms apart give the TSC rate without trusting the EAL. */
	clock_gettime(CLOCK_MONOTONIC, &a);
	t0 = rte_rdtsc();
	struct timespec nap = {0, 10 * 1000 * 1000};
	nanosleep(&nap, NULL);
	clock_gettime(CLOCK_MONOTONIC, &b);
	t1 = rte_rdtsc();
	uint64_t dns = (b.tv_sec - a.tv_sec) * 1000000000ull + b.tv_nsec - a.tv_nsec;
	clock_mult = (uint64_t)(((__uint128_t)dns << 32) / (t1 - t0));
	clock_tsc0 = t1;
	clock_ns0 = b.tv_sec * 1000000000ull + b.tv_nsec;
}

uint64_t serpens_cycles_to_ns(uint64_t cycles)
{
	return (uint64_t)(((__uint128_t)cycles * clock_mult) >> 32);
}

uint64_t serpens_now_ns(void)
{
	return clock_ns0 + serpens_cycles_to_ns(rte_rdtsc() - clock_tsc0);
}

/* ---- packets ---------------------------------------------------------------------------- */

static void pkt_sync(struct serpens_batch *b, uint32_t i, struct rte_mbuf *m)
{
	b->data[i] = rte_pktmbuf_mtod(m, uint8_t *);
	b->len[i] = m->data_len;
}

static uint8_t *pkt_prepend(struct serpens_batch *b, uint32_t i, uint32_t n)
{
	struct rte_mbuf *m = b->pkt[i];
	uint8_t *p = n <= UINT16_MAX ? (uint8_t *)rte_pktmbuf_prepend(m, n) : NULL;
	if (p)
		pkt_sync(b, i, m);
	return p;
}

static uint8_t *pkt_adj(struct serpens_batch *b, uint32_t i, uint32_t n)
{
	struct rte_mbuf *m = b->pkt[i];
	uint8_t *p = n <= m->data_len ? (uint8_t *)rte_pktmbuf_adj(m, n) : NULL;
	if (p)
		pkt_sync(b, i, m);
	return p;
}

static uint8_t *pkt_append(struct serpens_batch *b, uint32_t i, uint32_t n)
{
	struct rte_mbuf *m = b->pkt[i];
	uint8_t *p = n <= UINT16_MAX ? (uint8_t *)rte_pktmbuf_append(m, n) : NULL;
	if (p)
		pkt_sync(b, i, m);
	return p;
}

static int pkt_trim(struct serpens_batch *b, uint32_t i, uint32_t n)
{
	struct rte_mbuf *m = b->pkt[i];
	if (n > m->data_len || rte_pktmbuf_trim(m, n) != 0)
		return -1;
	pkt_sync(b, i, m);
	return 0;
}

/* ---- headers ---------------------------------------------------------------------------- */

#define ETH_P_IPV4 0x0800
#define ETH_P_IPV6 0x86DD
#define ETH_P_VLAN 0x8100
#define ETH_P_QINQ 0x88A8

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }

/* L4 header length needed to read ports/ids, or 0 for protocols we do not parse. */
static uint32_t l4_min_len(uint8_t proto)
{
	switch (proto) {
	case 6: return 20;  /* TCP: data offset checked below */
	case 17: return 8;  /* UDP */
	case 1: case 58: return 8; /* ICMP, ICMPv6 */
	default: return 0;
	}
}

static int parse_l4(const uint8_t *f, uint32_t end, uint32_t off, struct serpens_hdrs *h)
{
	uint8_t proto = h->flow.proto;
	uint32_t need = l4_min_len(proto);

	h->l4_off = off;
	if (need == 0) { /* other protocol: payload starts right after the IP headers */
		h->payload_off = off;
		h->payload_len = end - off;
		return SERPENS_PARSE_OK;
	}
	if (off + need > end)
		return SERPENS_PARSE_TRUNCATED;
	const uint8_t *l4 = f + off;
	uint32_t hl = need;
	if (proto == 6) {
		hl = (l4[12] >> 4) * 4u;
		if (hl < 20)
			return SERPENS_PARSE_BAD_HEADER;
		if (off + hl > end)
			return SERPENS_PARSE_TRUNCATED;
	}
	if (proto == 6 || proto == 17) {
		memcpy(&h->flow.sport, l4, 2);
		memcpy(&h->flow.dport, l4 + 2, 2);
	} else if ((proto == 1 && (l4[0] == 8 || l4[0] == 0)) ||
		   (proto == 58 && (l4[0] == 128 || l4[0] == 129))) {
		memcpy(&h->flow.sport, l4 + 4, 2); /* echo identifier */
	}
	h->payload_off = off + hl;
	h->payload_len = end - (off + hl);
	return SERPENS_PARSE_OK;
}

static int parse_ipv4(const uint8_t *f, uint32_t len, uint32_t off, struct serpens_hdrs *h)
{
	if (off + 20 > len)
		return SERPENS_PARSE_TRUNCATED;
	const uint8_t *ip = f + off;
	uint32_t ihl = (ip[0] & 0xF) * 4u, tot = rd16(ip + 2);
	if ((ip[0] >> 4) != 4 || ihl < 20 || tot < ihl)
		return SERPENS_PARSE_BAD_HEADER;
	if (off + ihl > len || off + tot > len)
		return SERPENS_PARSE_TRUNCATED;
	h->family = 4;
	h->l3_len = tot;
	h->flow.family = 4;
	h->flow.proto = ip[9];
	memcpy(h->flow.src, ip + 12, 4);
	memcpy(h->flow.dst, ip + 16, 4);
	if (ihl > 20)
		h->flags |= SERPENS_HDR_IPOPTS;
	uint16_t frag = rd16(ip + 6);
	if (frag & 0x1FFF)
		return SERPENS_PARSE_FRAGMENT;
	if (frag & 0x2000)
		h->flags |= SERPENS_HDR_FRAGMENT;
	return parse_l4(f, off + tot, off + ihl, h);
}

static int parse_ipv6(const uint8_t *f, uint32_t len, uint32_t off, struct serpens_hdrs *h)
{
	if (off + 40 > len)
		return SERPENS_PARSE_TRUNCATED;
	const uint8_t *ip = f + off;
	if ((ip[0] >> 4) != 6)
		return SERPENS_PARSE_BAD_HEADER;
	uint32_t end = off + 40 + rd16(ip + 4);
	if (end > len)
		return SERPENS_PARSE_TRUNCATED;
	h->family = 6;
	h->l3_len = end - off;
	h->flow.family = 6;
	memcpy(h->flow.src, ip + 8, 16);
	memcpy(h->flow.dst, ip + 24, 16);

	uint8_t nh = ip[6];
	uint32_t p = off + 40;
	for (int hops = 0; hops < 8; hops++) { /* RFC 8200 §4: skip extension headers */
		if (nh == 0 || nh == 43 || nh == 60) {
			if (p + 8 > end)
				return SERPENS_PARSE_TRUNCATED;
			h->flags |= SERPENS_HDR_IPOPTS;
			nh = f[p];
			p += (f[p + 1] + 1u) * 8u;
			continue;
		}
		if (nh == 44) { /* fragment header */
			if (p + 8 > end)
				return SERPENS_PARSE_TRUNCATED;
			uint16_t fo = rd16(f + p + 2);
			nh = f[p];
			p += 8;
			if (fo & 0xFFF8) {
				h->flow.proto = nh;
				return SERPENS_PARSE_FRAGMENT;
			}
			if (fo & 1)
				h->flags |= SERPENS_HDR_FRAGMENT;
			continue;
		}
		break;
	}
	if (p > end)
		return SERPENS_PARSE_TRUNCATED;
	h->flow.proto = nh;
	return parse_l4(f, end, p, h);
}

int serpens_parse(const uint8_t *f, uint32_t len, struct serpens_hdrs *h)
{
	memset(h, 0, sizeof(*h));
	if (len < 14)
		return SERPENS_PARSE_TRUNCATED;
	uint32_t off = 12;
	uint16_t et = rd16(f + off);
	for (int tags = 0; (et == ETH_P_VLAN || et == ETH_P_QINQ) && tags < 2; tags++) {
		if (off + 6 > len)
			return SERPENS_PARSE_TRUNCATED;
		h->flags |= SERPENS_HDR_VLAN;
		off += 4;
		et = rd16(f + off);
	}
	off += 2;
	h->ethertype = et;
	h->l3_off = off;
	if (et == ETH_P_IPV4)
		return parse_ipv4(f, len, off, h);
	if (et == ETH_P_IPV6)
		return parse_ipv6(f, len, off, h);
	return SERPENS_PARSE_NON_IP;
}

/* ---- checksums (RFC 1071, RFC 1624) ----------------------------------------------------- */

static uint32_t fold16(uint64_t acc)
{
	while (acc >> 16)
		acc = (acc & 0xFFFF) + (acc >> 16);
	return (uint32_t)acc;
}

/* Returns an accumulator (host-order value of the one's-complement sum of big-endian words). */
static uint32_t csum_partial(const void *data, uint32_t len, uint32_t sum)
{
	const uint8_t *p = data;
	uint64_t acc = 0;

	/* The one's-complement sum is byte-order independent (RFC 1071 §2B): add little-endian
	 * 32-bit halves, fold, and swap once at the end. */
	while (len >= 8) {
		uint64_t w;
		memcpy(&w, p, 8);
		acc += (w & 0xFFFFFFFFu) + (w >> 32);
		p += 8;
		len -= 8;
	}
	while (len >= 2) {
		uint16_t w;
		memcpy(&w, p, 2);
		acc += w;
		p += 2;
		len -= 2;
	}
	if (len)
		acc += *p; /* a trailing byte is the high byte of a big-endian word */
	return fold16((uint64_t)sum + __builtin_bswap16((uint16_t)fold16(acc)));
}

/* Fold and complement: the checksum as stored in a header (network order). */
static uint16_t csum_fold(uint32_t sum)
{
	return __builtin_bswap16((uint16_t)~fold16(sum));
}

static uint16_t csum_update(uint16_t csum, const void *old_bytes, const void *new_bytes, uint32_t len)
{
	/* RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m') */
	uint64_t sum = (uint16_t)~__builtin_bswap16(csum);
	const uint8_t *o = old_bytes, *n = new_bytes;
	for (uint32_t i = 0; i + 1 < len; i += 2)
		sum += (uint16_t)~rd16(o + i) + (uint32_t)rd16(n + i);
	return csum_fold(fold16(sum));
}

static uint16_t l4_csum(const uint8_t *f, const struct serpens_hdrs *h)
{
	uint8_t proto = h->flow.proto;
	if (!h->l4_off || (proto != 6 && proto != 17 && proto != 1 && proto != 58))
		return 0;
	uint32_t l4len = h->l3_off + h->l3_len - h->l4_off;
	uint32_t csum_at = proto == 6 ? 16 : proto == 17 ? 6 : 2;
	const uint8_t *ip = f + h->l3_off, *l4 = f + h->l4_off;
	uint32_t sum = 0;

	if (l4len < csum_at + 2)
		return 0;
	if (proto != 1) { /* pseudo-header: RFC 793 §3.1, RFC 768, RFC 8200 §8.1 */
		sum = h->family == 4 ? csum_partial(ip + 12, 8, 0) : csum_partial(ip + 8, 32, 0);
		sum = fold16((uint64_t)sum + proto + (l4len >> 16) + (l4len & 0xFFFF));
	}
	sum = csum_partial(l4, csum_at, sum);
	sum = csum_partial(l4 + csum_at + 2, l4len - csum_at - 2, sum);
	uint16_t c = csum_fold(sum);
	if (proto == 17 && c == 0)
		c = 0xFFFF; /* RFC 768: a computed zero is sent as all ones */
	return c;
}

/* ---- hash ------------------------------------------------------------------------------- */

uint32_t serpens_hash_crc(const void *key, uint32_t len, uint32_t seed)
{
	const uint8_t *p = key;
	uint64_t c = seed;
	while (len >= 8) {
		uint64_t w;
		memcpy(&w, p, 8);
		c = _mm_crc32_u64(c, w);
		p += 8;
		len -= 8;
	}
	uint32_t c32 = (uint32_t)c;
	while (len--)
		c32 = _mm_crc32_u8(c32, *p++);
	/* CRC32-C alone mixes low bits poorly for `% n`: finish with a multiply-xorshift. */
	c32 ^= c32 >> 16;
	c32 *= 0x45d9f3bu;
	c32 ^= c32 >> 16;
	return c32;
}

/* ---- log and counters ------------------------------------------------------------------- */

static struct serpens_nf_slot *slot_of(struct serpens_ctx *ctx)
{
	return (struct serpens_nf_slot *)((char *)ctx - offsetof(struct serpens_nf_slot, ctx));
}

static void nf_log(struct serpens_ctx *ctx, int level, const char *fmt, ...)
{
	static const char *const names[] = {"ERR", "WARN", "INFO", "DEBUG"};
	struct serpens_nf_slot *s = slot_of(ctx);
	uint64_t now = serpens_now_ns();
	uint64_t refill = (now - s->log_last_ns) / 100000000ull; /* one line per 100 ms */

	if (refill) {
		s->log_tokens = s->log_tokens + refill > 20 ? 20 : s->log_tokens + (uint32_t)refill;
		s->log_last_ns = now;
	}
	if (s->log_tokens == 0) {
		s->log_suppressed++;
		return;
	}
	s->log_tokens--;

	char line[512];
	int n = snprintf(line, sizeof(line), "serpens[instance %u %s] %s: ", ctx->instance_id,
			 s->name, names[level & 3]);
	if (s->log_suppressed && n < (int)sizeof(line))
		n += snprintf(line + n, sizeof(line) - n, "(%u lines suppressed) ", s->log_suppressed);
	s->log_suppressed = 0;
	if (n < (int)sizeof(line)) {
		va_list ap;
		va_start(ap, fmt);
		n += vsnprintf(line + n, sizeof(line) - n, fmt, ap);
		va_end(ap);
	}
	if (n >= (int)sizeof(line) - 1)
		n = sizeof(line) - 2;
	line[n++] = '\n';
	ssize_t r = write(STDERR_FILENO, line, n);
	(void)r;
}

static int counter_register(struct serpens_ctx *ctx, const char *name)
{
	struct serpens_nf_counters *c = slot_of(ctx)->counters;
	size_t len = name ? strnlen(name, SERPENS_COUNTER_NAME) : 0;

	if (len == 0 || len >= SERPENS_COUNTER_NAME)
		return -1;
	for (uint32_t i = 0; i < c->n; i++)
		if (strcmp(c->names[i], name) == 0)
			return (int)i;
	if (c->n >= SERPENS_MAX_COUNTERS)
		return -1;
	memcpy(c->names[c->n], name, len + 1);
	c->values[c->n] = 0;
	return (int)c->n++;
}

/* ---- state tables ----------------------------------------------------------------------- */

static char state_dir[256] = "/dev/shm/serpens/state";
static uint32_t state_backend = SERPENS_STATE_LOCAL;

void serpens_state_set_backend(uint32_t backend) { state_backend = backend; }

static int is_remote(const struct serpens_nf_slot *s, int table)
{
	return (s->remote_mask >> table) & 1;
}

void serpens_state_set_dir(const char *dir)
{
	snprintf(state_dir, sizeof(state_dir), "%s", dir);
}

void serpens_nf_slot_close_tables(struct serpens_nf_slot *s)
{
	serpens_nf_slot_merge(s, 0, 1); /* nothing an instance counted is lost at stop */
	serpens_nf_slot_release(s, 0);  /* and nothing it held stays out of the pools */
	for (uint32_t i = 0; i < s->ntables; i++) {
		serpens_table_close(&s->tables[i]);
		serpens_table_close(&s->replicas[i]);
	}
	if (s->remote_mask)
		serpens_remote_flush();
	s->remote_mask = 0;
	s->ntables = 0;
}

static int is_eventual(const struct serpens_nf_slot *s, int table)
{
	return s->replicas[table].hdr != NULL && (s->tables[table].flags & SERPENS_EVENTUAL);
}

static int is_release(const struct serpens_nf_slot *s, int table)
{
	return s->replicas[table].hdr != NULL && (s->tables[table].flags & SERPENS_RELEASE);
}

static int has_op(const struct serpens_nf_slot *s, size_t end)
{
	return s->ops && s->ops->size >= end;
}

/* ---- release tables: shares split off a pool (paper Fig. 9) ---- */

static void default_split(void *pool, void *share, uint32_t size)
{
	uint64_t *p = pool, *q = share;
	for (uint32_t w = 0; w < size / 8; w++) {
		uint64_t take = (p[w] + 1) / 2;
		p[w] -= take;
		q[w] += take;
	}
}

static void add_words(void *into, const void *from, uint32_t size)
{
	uint64_t *dst = into;
	const uint64_t *src = from;
	for (uint32_t w = 0; w < size / 8; w++)
		dst[w] += src[w];
}

/* This instance's share of key, split off the pool on first use; NULL if no pool. */
static void *release_share(struct serpens_nf_slot *s, int table, const void *key)
{
	struct serpens_table *pool = &s->tables[table], *shares = &s->replicas[table];
	uint32_t size = pool->hdr->value_size;
	void *share = serpens_table_get(shares, key), *p;

	if (share)
		return share;
	serpens_table_lock(pool);
	p = serpens_table_get(pool, key);
	if (p && serpens_table_get_or_zero(shares, key, &share) == 0) {
		if (has_op(s, offsetof(struct serpens_nf_ops, split) + sizeof(void *)) && s->ops->split)
			s->ops->split(&s->ctx, table, key, p, share);
		else
			default_split(p, share, size);
	} else {
		share = NULL;
	}
	serpens_table_unlock(pool);
	return share;
}

static void give_back(struct serpens_nf_slot *s, int table)
{
	struct serpens_table *pool = &s->tables[table], *shares = &s->replicas[table];
	uint32_t size = pool->hdr->value_size;
	int op = has_op(s, offsetof(struct serpens_nf_ops, merge) + sizeof(void *)) && s->ops->merge;
	const void *key, *value;
	uint64_t pos = 0;
	void *into;

	if (shares->hdr->count == 0)
		return;
	serpens_table_lock(pool);
	while (serpens_table_next(shares, &pos, &key, &value) >= 0) {
		if (serpens_table_get_or_zero_locked(pool, key, &into) != 0)
			continue; /* pool table full: keep the share */
		if (op)
			s->ops->merge(&s->ctx, table, key, into, value);
		else
			add_words(into, value, size);
		serpens_table_remove(shares, key);
	}
	serpens_table_unlock(pool);
}

/* update (paper §III-D2): give our shares back and ask every instance for theirs; each splits
 * a fresh share off the pool at its next use, so what is left is spread again. */
static void rebalance(struct serpens_nf_slot *s, int table)
{
	give_back(s, table);
	s->seen_epoch[table] = __atomic_add_fetch(&s->tables[table].hdr->epoch, 1, __ATOMIC_ACQ_REL);
}

void serpens_nf_slot_release(struct serpens_nf_slot *s, int answer_only)
{
	for (uint32_t i = 0; i < s->ntables; i++) {
		if (!is_release(s, (int)i))
			continue;
		uint64_t epoch = __atomic_load_n(&s->tables[i].hdr->epoch, __ATOMIC_ACQUIRE);
		if (answer_only && epoch == s->seen_epoch[i])
			continue;
		give_back(s, (int)i);
		s->seen_epoch[i] = epoch;
	}
}

/* The table an NF's get/put act on: its replica for eventual tables. */
static struct serpens_table *table_of(struct serpens_ctx *ctx, int table)
{
	struct serpens_nf_slot *s = slot_of(ctx);
	if ((unsigned)table >= s->ntables)
		return NULL;
	return is_eventual(s, table) ? &s->replicas[table] : &s->tables[table];
}

static struct serpens_table *shared_table_of(struct serpens_ctx *ctx, int table)
{
	struct serpens_nf_slot *s = slot_of(ctx);
	return (unsigned)table < s->ntables ? &s->tables[table] : NULL;
}

static void merge_words(void *into, const void *from, uint32_t size)
{
	uint64_t *dst = into;
	const uint64_t *src = from;
	for (uint32_t w = 0; w < size / 8; w++)
		if (src[w])
			__atomic_fetch_add(&dst[w], src[w], __ATOMIC_RELAXED);
}

static void merge_table(struct serpens_nf_slot *s, int table)
{
	struct serpens_table *shared = &s->tables[table], *rep = &s->replicas[table];
	uint32_t size = shared->hdr->value_size;
	int nf_merges = has_op(s, offsetof(struct serpens_nf_ops, merge) + sizeof(void *)) &&
			s->ops->merge;
	const void *key, *value;
	uint64_t pos = 0;
	void *into;

	while (serpens_table_next(rep, &pos, &key, &value) >= 0) {
		if (serpens_table_get_or_zero(shared, key, &into) != 0)
			continue; /* shared table full: keep the replica's counts for later */
		if (nf_merges)
			s->ops->merge(&s->ctx, table, key, into, value);
		else
			merge_words(into, value, size);
		memset((void *)value, 0, size); /* this thread is the replica's only writer */
	}
}

uint64_t serpens_nf_slot_merge(struct serpens_nf_slot *s, uint64_t now_ns, int force)
{
	uint64_t next = UINT64_MAX;
	if (!force && now_ns < s->next_merge_ns)
		return s->next_merge_ns;
	for (uint32_t i = 0; i < s->ntables; i++) {
		if (is_eventual(s, (int)i)) {
			merge_table(s, (int)i);
		} else if (is_release(s, (int)i) && s->merge_period_ns[i]) {
			if (!force) /* forced = going to sleep: shares go back anyway */
				rebalance(s, (int)i);
		} else {
			continue;
		}
		uint64_t due = now_ns + s->merge_period_ns[i];
		next = due < next ? due : next;
	}
	s->next_merge_ns = next;
	return next;
}

static int open_replica(struct serpens_nf_slot *s, uint32_t i, const char *name, uint32_t flags,
			uint32_t ks, uint32_t vs, uint32_t cap, char *err, size_t errlen)
{
	char rname[SERPENS_TABLE_NAME];
	/* One replica per runtime process (lcore ids are unique on a node): a replica a crashed
	 * process left unmerged is merged by the next instance on that lcore. */
	if (snprintf(rname, sizeof(rname), "%s@r%u", name, rte_lcore_id()) >= (int)sizeof(rname)) {
		snprintf(err, errlen, "table name %s too long for an eventual table", name);
		return SERPENS_EINVAL;
	}
	if (vs % 8 || vs > (1u << 20)) {
		snprintf(err, errlen, "table %s: eventual and release values are uint64_t words, "
			 "at most 1 MiB", name);
		return SERPENS_EINVAL;
	}
	if (flags & SERPENS_RELEASE) {
		s->nrelease++;
	} else {
		s->merge_period_ns[i] = SERPENS_MERGE_PERIOD_NS;
		if (s->next_merge_ns == 0 || s->next_merge_ns == UINT64_MAX)
			s->next_merge_ns = serpens_now_ns() + SERPENS_MERGE_PERIOD_NS;
	}
	return serpens_table_open(&s->replicas[i], state_dir, s->name, rname, flags, ks, vs, cap,
				  err, errlen);
}

static int create_table(struct serpens_ctx *ctx, const char *name, uint32_t flags,
			uint32_t key_size, uint32_t value_size, uint32_t capacity)
{
	struct serpens_nf_slot *s = slot_of(ctx);
	char err[200];

	for (uint32_t i = 0; i < s->ntables; i++)
		if (name && strcmp(s->table_names[i], name) == 0)
			return (int)i;
	if (!flags || !name) /* 0 means "any" to the state manager; an NF must say what it wants */
		return SERPENS_EINVAL;
	if (s->ntables >= SERPENS_MAX_TABLES) {
		nf_log(ctx, SERPENS_LOG_ERR, "create_table %s: at most %d tables", name,
		       SERPENS_MAX_TABLES);
		return SERPENS_ENOMEM;
	}
	uint32_t i = s->ntables;
	snprintf(s->table_names[i], sizeof(s->table_names[i]), "%s", name);
	if (state_backend == SERPENS_STATE_REDIS ||
	    (state_backend == SERPENS_STATE_REDIS_GLOBAL && (flags & SERPENS_GLOBAL))) {
		int rc = serpens_table_flags_valid(flags);
		if (rc == 0)
			rc = serpens_remote_table_init(&s->remote[i], s->name, name, flags, key_size,
						       value_size);
		if (rc)
			return rc;
		s->remote_mask |= 1u << i;
		return (int)s->ntables++;
	}
	/* The namespace is the NF's name in the SFC: every instance of it shares the tables. */
	int rc = serpens_table_open(&s->tables[i], state_dir, s->name, name, flags, key_size,
				    value_size, capacity, err, sizeof(err));
	if (rc == 0 && (flags & (SERPENS_EVENTUAL | SERPENS_RELEASE))) {
		rc = open_replica(s, i, name, flags, key_size, value_size, capacity, err, sizeof(err));
		if (rc)
			serpens_table_close(&s->tables[i]);
	}
	if (rc) {
		nf_log(ctx, SERPENS_LOG_ERR, "create_table: %s", err);
		s->table_rc = rc;
		snprintf(s->table_error, sizeof(s->table_error), "%s", err);
		return rc;
	}
	return (int)s->ntables++;
}

static void *get_state(struct serpens_ctx *ctx, int table, const void *key)
{
	if ((unsigned)table < SERPENS_MAX_TABLES && is_remote(slot_of(ctx), table))
		return serpens_remote_get(&slot_of(ctx)->remote[table], key);
	struct serpens_table *t = table_of(ctx, table);
	if (t && is_release(slot_of(ctx), table))
		return release_share(slot_of(ctx), table, key);
	return t ? serpens_table_get(t, key) : NULL;
}

static uint32_t get_state_bulk(struct serpens_ctx *ctx, int table, const void *const *keys,
			       uint32_t n, void **values)
{
	if ((unsigned)table < SERPENS_MAX_TABLES && is_remote(slot_of(ctx), table))
		return serpens_remote_get_bulk(&slot_of(ctx)->remote[table], keys, n, values);
	struct serpens_table *t = table_of(ctx, table);
	uint32_t found = 0;
	if (!t || is_release(slot_of(ctx), table)) {
		for (uint32_t i = 0; i < n && i < SERPENS_BURST; i++) {
			values[i] = t ? release_share(slot_of(ctx), table, keys[i]) : NULL;
			found += values[i] != NULL;
		}
		return found;
	}
	return serpens_table_get_bulk(t, keys, n, values);
}

/* In init(): create key's pool if it does not exist. Later: overwrite this instance's share. */
static int release_put(struct serpens_nf_slot *s, int table, const void *key, const void *value,
		       void **stored)
{
	struct serpens_table *pool = &s->tables[table];
	uint32_t size = pool->hdr->value_size;
	void *v;
	int rc = 0;

	if (!s->in_init) {
		v = release_share(s, table, key);
		if (!v)
			return SERPENS_ENOENT;
		memcpy(v, value, size);
	} else {
		serpens_table_lock(pool);
		v = serpens_table_get(pool, key);
		if (!v && (rc = serpens_table_get_or_zero_locked(pool, key, &v)) == 0)
			memcpy(v, value, size);
		serpens_table_unlock(pool);
	}
	if (stored && rc == 0)
		*stored = v;
	return rc;
}

static int put_state(struct serpens_ctx *ctx, int table, const void *key, const void *value,
		     void **stored)
{
	if ((unsigned)table < SERPENS_MAX_TABLES && is_remote(slot_of(ctx), table))
		return value ? serpens_remote_put(&slot_of(ctx)->remote[table], key, value, stored)
			     : SERPENS_EINVAL;
	struct serpens_table *t = table_of(ctx, table);
	if (!t || !value)
		return SERPENS_EINVAL;
	struct serpens_nf_slot *s = slot_of(ctx);
	if (!(t->flags & SERPENS_WRITE) && !s->in_init)
		return SERPENS_EPERM; /* read state is filled in init(), then only read */
	if (is_release(s, table))
		return release_put(s, table, key, value, stored);
	return serpens_table_put(t, key, value, stored);
}

static int delete_state(struct serpens_ctx *ctx, int table, const void *key)
{
	if ((unsigned)table < SERPENS_MAX_TABLES && is_remote(slot_of(ctx), table))
		return serpens_remote_delete(&slot_of(ctx)->remote[table], key);
	struct serpens_table *t = table_of(ctx, table);
	if (t && !(t->flags & SERPENS_WRITE) && !slot_of(ctx)->in_init)
		return SERPENS_EPERM;
	return t ? serpens_table_delete(t, key) : SERPENS_EINVAL;
}

static int state_fetch_add(struct serpens_ctx *ctx, int table, const void *key, uint64_t delta,
			   uint64_t *before)
{
	if ((unsigned)table < SERPENS_MAX_TABLES && is_remote(slot_of(ctx), table))
		return serpens_remote_fetch_add(&slot_of(ctx)->remote[table], key, delta, before);
	struct serpens_table *t = shared_table_of(ctx, table);
	return t ? serpens_table_fetch_add(t, key, delta, before) : SERPENS_EINVAL;
}

static int state_timer(struct serpens_ctx *ctx, int table, const void *key, uint64_t period_ns)
{
	struct serpens_nf_slot *s = slot_of(ctx);
	if ((unsigned)table < s->ntables && is_remote(s, table))
		return 0; /* Redis baselines keep no replicas: nothing to merge */
	if ((unsigned)table >= s->ntables || !(is_eventual(s, table) || is_release(s, table)) ||
	    key || period_ns < 1000000)
		return SERPENS_EINVAL; /* periods below 1 ms would merge more than they count */
	s->merge_period_ns[table] = period_ns;
	uint64_t due = serpens_now_ns() + period_ns;
	if (due < s->next_merge_ns)
		s->next_merge_ns = due;
	return 0;
}

static int state_trigger(struct serpens_ctx *ctx, int table, const void *key)
{
	struct serpens_nf_slot *s = slot_of(ctx);
	if ((unsigned)table >= s->ntables)
		return SERPENS_EINVAL;
	if (is_remote(s, table))
		return 0; /* no replicas or shares in the Redis baselines */
	if (is_release(s, table)) {
		rebalance(s, table);
		return 0;
	}
	if (!is_eventual(s, table) || key)
		return SERPENS_EINVAL;
	merge_table(s, table);
	return 0;
}

const struct serpens_api serpens_api_v1 = {
	.abi_major = SERPENS_ABI_MAJOR,
	.abi_minor = SERPENS_ABI_MINOR,
	.size = sizeof(struct serpens_api),
	.pkt_prepend = pkt_prepend,
	.pkt_adj = pkt_adj,
	.pkt_append = pkt_append,
	.pkt_trim = pkt_trim,
	.parse = serpens_parse,
	.csum_partial = csum_partial,
	.csum_fold = csum_fold,
	.csum_update = csum_update,
	.l4_csum = l4_csum,
	.hash = serpens_hash_crc,
	.now_ns = serpens_now_ns,
	.log = nf_log,
	.counter_register = counter_register,
	.create_table = create_table,
	.get_state = get_state,
	.get_state_bulk = get_state_bulk,
	.put_state = put_state,
	.delete_state = delete_state,
	.state_fetch_add = state_fetch_add,
	.timer = state_timer,
	.trigger = state_trigger,
};
