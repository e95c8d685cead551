/*
 * The context table every NF imports (serpens/nf.h). Packet helpers act on the rte_mbuf behind
 * b->pkt[i] and keep b->data[i]/b->len[i] in step; parse, checksums and hash are pkt.c's; the
 * rest is plain C shared by all NFs, so a fix here reaches every NF without a rebuild.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* renameat2 */
#endif
#include <fcntl.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <rte_cycles.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>

#include "nf_api.h"
#include "pkt.h"

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

/* The packet's start or length changed: its parsed headers (offsets, lengths) are stale. */
static void pkt_sync(struct serpens_batch *b, uint32_t i, struct rte_mbuf *m)
{
	b->data[i] = rte_pktmbuf_mtod(m, uint8_t *);
	b->len[i] = m->data_len;
	b->parse[i] = SERPENS_PARSE_STALE;
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

/* ---- log and counters ------------------------------------------------------------------- */

static void nf_log(struct serpens_ctx *ctx, int level, const char *fmt, ...)
{
	static const char *const names[] = {"ERR", "WARN", "INFO", "DEBUG"};
	struct serpens_nf_env *s = serpens_env_of(ctx);
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
	struct serpens_nf_counters *c = serpens_env_of(ctx)->counters;
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

void serpens_state_set_dir(const char *dir)
{
	snprintf(state_dir, sizeof(state_dir), "%s", dir);
}

void serpens_nf_env_close_tables(struct serpens_nf_env *s)
{
	serpens_nf_env_merge(s, 0, 1); /* nothing an instance counted is lost at stop */
	serpens_nf_env_release(s, 0);  /* and nothing it held stays out of the pools */
	for (uint32_t i = 0; i < s->ntables; i++) {
		serpens_table_close(&s->tables[i]);
		serpens_table_close(&s->replicas[i]);
	}
	s->ntables = 0;
	s->backend_priv = NULL;
}

static int is_eventual(const struct serpens_nf_env *s, int table)
{
	return s->replicas[table].hdr != NULL && (s->tables[table].flags & SERPENS_EVENTUAL);
}

static int is_release(const struct serpens_nf_env *s, int table)
{
	return s->replicas[table].hdr != NULL && (s->tables[table].flags & SERPENS_RELEASE);
}

static int has_op(const struct serpens_nf_env *s, size_t end)
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

static int all_zero(const void *value, uint32_t size)
{
	const uint64_t *w = value;
	for (uint32_t i = 0; i < size / 8; i++)
		if (w[i])
			return 0;
	return 1;
}

/* This instance's share of key, split off the pool on first use; NULL if no pool. */
static void *release_share(struct serpens_nf_env *s, int table, const void *key)
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
		if (all_zero(share, size)) /* the pool had nothing to give: the agent asks peers */
			__atomic_fetch_add(&pool->hdr->dry, 1, __ATOMIC_RELAXED);
	} else {
		share = NULL;
	}
	serpens_table_unlock(pool);
	return share;
}

static void give_back(struct serpens_nf_env *s, int table)
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
static void rebalance(struct serpens_nf_env *s, int table)
{
	give_back(s, table);
	s->seen_epoch[table] = __atomic_add_fetch(&s->tables[table].hdr->epoch, 1, __ATOMIC_ACQ_REL);
}

void serpens_nf_env_release(struct serpens_nf_env *s, int answer_only)
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

/* ---- release pools between servers (docs/state.md "Between servers") ----
 * Another server's agent gives a pool's shares back by writing them as `<table>@in<k>`
 * (k < SERPENS_RETURN_SLOTS) beside the pool; the NF's merge op folds them in here, in a pool
 * process (never NF code in the agent): at a merge request, a split request, and when an
 * instance opens the table. A split request moves a share of every key's pool, split off by
 * the NF's split op, into `<table>@out`, which the agent ships to the new server and deletes.
 * A `@out` still there at the next split was never shipped (the agent reads and deletes it
 * before it answers): its shares go back into the pool first. */

static int side_table(struct serpens_nf_env *s, int table, const char *suffix,
		      struct serpens_table *t, int create)
{
	char name[SERPENS_TABLE_NAME], err[200];
	const struct serpens_table_hdr *h = s->tables[table].hdr;
	if (snprintf(name, sizeof(name), "%s@%s", s->table_names[table], suffix) >=
	    (int)sizeof(name))
		return SERPENS_EINVAL;
	int rc = serpens_table_open(t, state_dir, s->name, name, create ? h->flags : 0,
				    h->key_size, h->value_size, h->capacity, err, sizeof(err));
	if (rc == 0 && (t->hdr->key_size != h->key_size || t->hdr->value_size != h->value_size)) {
		serpens_table_close(t);
		return SERPENS_EEXIST;
	}
	return rc;
}

/* Every entry of `from` into the pool of `table` (the NF's merge, or add), then out of `from`.
 * Called with the pool locked. Returns the entries left (the pool table was full). */
static uint64_t fold_into_pool(struct serpens_nf_env *s, int table, struct serpens_table *from)
{
	struct serpens_table *pool = &s->tables[table];
	int op = has_op(s, offsetof(struct serpens_nf_ops, merge) + sizeof(void *)) && s->ops->merge;
	const void *key, *value;
	uint64_t pos = 0;
	void *into;

	while (serpens_table_next(from, &pos, &key, &value) >= 0) {
		if (serpens_table_get_or_zero_locked(pool, key, &into) != 0)
			continue;
		if (op)
			s->ops->merge(&s->ctx, table, key, into, value);
		else
			add_words(into, value, pool->hdr->value_size);
		serpens_table_remove(from, key);
	}
	return from->hdr->count;
}

static int side_path(const struct serpens_nf_env *s, int table, const char *suffix, char *path,
		     size_t len)
{
	return snprintf(path, len, "%s/%s/%s@%s.tbl", state_dir, s->name, s->table_names[table],
			suffix) < (int)len ? 0 : -1;
}

/* Fold the shares other servers returned (`<table>@in<k>`) into the pool. Each is claimed
 * first, by renaming it to `<table>@in<k>c<instance>`: the agent links a new share into a
 * free slot at any time, so an instance must never unlink a slot by its name after another
 * instance folded and unlinked it (it would remove the share linked there since: lost).
 * A claimed share left by a process that died before folding it goes back with the pool at
 * StopSFC return_to (agent/peer_state.py pools_to_return takes every `@i...` side table). */
static void fold_returned(struct serpens_nf_env *s, int table)
{
	for (int k = 0; k < SERPENS_RETURN_SLOTS; k++) {
		struct serpens_table in;
		char slot[8], mine[32], from[512], to[512];
		snprintf(slot, sizeof(slot), "in%d", k);
		snprintf(mine, sizeof(mine), "in%dc%u", k, s->ctx.instance_id);
		if (side_path(s, table, slot, from, sizeof(from)) ||
		    side_path(s, table, mine, to, sizeof(to)) ||
		    renameat2(AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE) != 0)
			continue; /* no share there, or another instance claimed it */
		uint64_t left = 1;
		if (side_table(s, table, mine, &in, 0) == 0) {
			serpens_table_lock(&s->tables[table]);
			left = fold_into_pool(s, table, &in);
			serpens_table_unlock(&s->tables[table]);
			serpens_table_close(&in);
		}
		if (left == 0)
			unlink(to);
		else /* the pool is full (or the share unreadable): back in its slot for later */
			renameat2(AT_FDCWD, to, AT_FDCWD, from, RENAME_NOREPLACE);
	}
}

/* A share of every key of the pool of `table`, split off with the NF's split op, into
 * `<table>@out`. This instance's own shares go back first, so the split sees the whole
 * pool as the node holds it (other instances' shares stay theirs). */
static int split_out(struct serpens_nf_env *s, int table, char *err, size_t errlen)
{
	struct serpens_table *pool = &s->tables[table], out;
	int op = has_op(s, offsetof(struct serpens_nf_ops, split) + sizeof(void *)) && s->ops->split;
	const void *key, *value;
	uint64_t pos = 0;
	void *share;
	int rc;

	give_back(s, table);
	if ((rc = side_table(s, table, "out", &out, 1)) != 0) {
		snprintf(err, errlen, "%s: cannot make %s@out (%d)", s->name,
			 s->table_names[table], rc);
		return rc;
	}
	serpens_table_lock(pool);
	if (fold_into_pool(s, table, &out) == 0) { /* an unshipped @out goes back first */
		while (serpens_table_next(pool, &pos, &key, &value) >= 0) {
			if ((rc = serpens_table_get_or_zero(&out, key, &share)) != 0) {
				snprintf(err, errlen, "%s: %s@out full", s->name, s->table_names[table]);
				break;
			}
			if (op)
				s->ops->split(&s->ctx, table, key, (void *)value, share);
			else
				default_split((void *)value, share, pool->hdr->value_size);
		}
	} else {
		rc = SERPENS_ENOSPC;
		snprintf(err, errlen, "%s: %s pool full", s->name, s->table_names[table]);
	}
	serpens_table_unlock(pool);
	serpens_table_close(&out);
	return rc;
}

/* `only` ("<namespace>/<table>", or empty for every pool) limits the split to one pool (a
 * share asked for by a peer whose pool ran dry). */
static int split_this(const struct serpens_nf_env *s, int table, const char *only)
{
	size_t n = strlen(s->name);
	return !only || !*only ||
	       (strncmp(only, s->name, n) == 0 && only[n] == '/' &&
		strcmp(only + n + 1, s->table_names[table]) == 0);
}

int serpens_nf_env_exchange(struct serpens_nf_env *s, int split, const char *only, char *err,
			    size_t errlen)
{
	int rc = 0;
	for (uint32_t i = 0; i < s->ntables && rc == 0; i++) {
		if (!is_release(s, (int)i))
			continue;
		fold_returned(s, (int)i);
		if (split && split_this(s, (int)i, only))
			rc = split_out(s, (int)i, err, errlen);
	}
	return rc;
}

/* The table an NF's get/put act on: its replica for eventual tables. */
static struct serpens_table *table_of(struct serpens_ctx *ctx, int table)
{
	struct serpens_nf_env *s = serpens_env_of(ctx);
	if ((unsigned)table >= s->ntables)
		return NULL;
	return is_eventual(s, table) ? &s->replicas[table] : &s->tables[table];
}

static struct serpens_table *shared_table_of(struct serpens_ctx *ctx, int table)
{
	struct serpens_nf_env *s = serpens_env_of(ctx);
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

static void merge_table(struct serpens_nf_env *s, int table)
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

uint64_t serpens_nf_env_merge(struct serpens_nf_env *s, uint64_t now_ns, int force)
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

static int open_replica(struct serpens_nf_env *s, uint32_t i, const char *name, uint32_t flags,
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

int serpens_nf_env_table_id(struct serpens_nf_env *s, const char *name)
{
	for (uint32_t i = 0; i < s->ntables; i++)
		if (strcmp(s->table_names[i], name) == 0)
			return (int)i;
	if (s->ntables >= SERPENS_MAX_TABLES)
		return SERPENS_ENOMEM;
	snprintf(s->table_names[s->ntables], sizeof(s->table_names[0]), "%s", name);
	return (int)s->ntables++;
}

static int create_table(struct serpens_ctx *ctx, const char *name, uint32_t flags,
			uint32_t key_size, uint32_t value_size, uint32_t capacity)
{
	struct serpens_nf_env *s = serpens_env_of(ctx);
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
	/* The namespace is the NF's name in the SFC: every instance of it shares the tables. */
	int rc = serpens_table_open(&s->tables[i], state_dir, s->name, name, flags, key_size,
				    value_size, capacity, err, sizeof(err));
	if (rc == 0 && (flags & (SERPENS_EVENTUAL | SERPENS_RELEASE))) {
		rc = open_replica(s, i, name, flags, key_size, value_size, capacity, err, sizeof(err));
		if (rc)
			serpens_table_close(&s->tables[i]);
	}
	if (rc == 0 && (flags & SERPENS_RELEASE)) /* shares returned while no instance ran */
		fold_returned(s, (int)i);
	if (rc) {
		nf_log(ctx, SERPENS_LOG_ERR, "create_table: %s", err);
		s->table_rc = rc;
		snprintf(s->table_error, sizeof(s->table_error), "%.*s",
			 (int)sizeof(s->table_error) - 1, err); /* (cut to fit) */
		return rc;
	}
	return (int)s->ntables++;
}

static void *get_state(struct serpens_ctx *ctx, int table, const void *key)
{
	struct serpens_table *t = table_of(ctx, table);
	if (t && is_release(serpens_env_of(ctx), table))
		return release_share(serpens_env_of(ctx), table, key);
	return t ? serpens_table_get(t, key) : NULL;
}

struct serpens_batch *serpens_nf_batch;

/* The last lookup's keys when every one was a packet's parsed flow: the NFs of an SFC look up
 * the same packets' flows in turn (FW's, then MON's, then NAT's tables), in one array each
 * but the same pointers in the same order, so a key found at its place there takes its hash
 * without working out its packet. Valid while none of its packets was parsed again. */
static struct {
	uint32_t n, mask; /* mask: bit i for packet i among the keys */
	const void *keys[SERPENS_BURST];
	uint32_t hash[SERPENS_BURST];
	uint8_t pkt[SERPENS_BURST];
} flow_memo;

void serpens_nf_batch_begin(struct serpens_batch *b)
{
	serpens_nf_batch = b;
	flow_memo.n = 0;
}

/* Each key's table hash; a key that is a packet's parsed flow in the running batch (an NF
 * passed &h->flow from serpens_hdrs) is hashed once per packet, whichever NF asks first. The
 * keys still to hash are hashed together (serpens_table_hash_bulk). */
static void hash_keys(const struct serpens_table *t, const void *const *keys, uint32_t n,
		      uint32_t *hashes)
{
	struct serpens_batch *b = serpens_nf_batch;
	const void *fresh[SERPENS_BURST];
	uint32_t fresh_hash[SERPENS_BURST];
	uint8_t at[SERPENS_BURST], pkt[SERPENS_BURST]; /* fresh key j: keys[at[j]], packet pkt[j] */
	uint32_t nfresh = 0;

	if (!b || t->key_size != sizeof(struct serpens_flow)) {
		serpens_table_hash_bulk(t, keys, n, hashes);
		return;
	}
	/* the batch's fields in locals: the stores to hashes[] could alias them, as far as the
	 * compiler knows, and would reload them for every key */
	uintptr_t base = (uintptr_t)&b->hdrs[0].flow;
	const uint32_t hashed = b->flow_hashed, *known = b->flow_hash;
	uint32_t memo_n = (hashed & flow_memo.mask) == flow_memo.mask ? flow_memo.n : 0;
	uint8_t of[SERPENS_BURST]; /* key k's packet, or SERPENS_BURST: not a parsed flow */
	uint32_t mask = 0, others = 0, looked = 0; /* keys not in the memo */
	for (uint32_t k = 0; k < n; k++) {
		if (k < memo_n && keys[k] == flow_memo.keys[k]) {
			hashes[k] = flow_memo.hash[k];
			of[k] = flow_memo.pkt[k];
			mask |= 1u << of[k];
			continue;
		}
		looked++;
		uintptr_t off = (uintptr_t)keys[k] - base;
		uint32_t i = (uint32_t)(off / sizeof(struct serpens_hdrs));
		int of_batch = i < SERPENS_BURST && i * sizeof(struct serpens_hdrs) == off;
		of[k] = of_batch ? (uint8_t)i : SERPENS_BURST;
		mask |= of_batch ? 1u << i : 0;
		others += !of_batch;
		if (of_batch && (hashed >> i & 1)) {
			hashes[k] = known[i];
		} else {
			fresh[nfresh] = keys[k];
			at[nfresh] = (uint8_t)k;
			pkt[nfresh++] = (uint8_t)of[k];
		}
	}
	uint32_t now_hashed = hashed;
	if (nfresh) {
		serpens_table_hash_bulk(t, fresh, nfresh, fresh_hash);
		for (uint32_t j = 0; j < nfresh; j++) {
			hashes[at[j]] = fresh_hash[j];
			if (pkt[j] < SERPENS_BURST) {
				b->flow_hash[pkt[j]] = fresh_hash[j];
				now_hashed |= 1u << pkt[j];
			}
		}
		b->flow_hashed = now_hashed;
	}
	if (others) { /* not a memo; and a flow hashed anew may be one the memo holds */
		if (now_hashed != hashed)
			flow_memo.n = flow_memo.mask = 0;
	} else if (looked) { /* a new memo */
		flow_memo.n = n;
		flow_memo.mask = mask;
		memcpy(flow_memo.keys, keys, n * sizeof(keys[0]));
		memcpy(flow_memo.hash, hashes, n * sizeof(hashes[0]));
		memcpy(flow_memo.pkt, of, n);
	}
}

static uint32_t get_state_bulk(struct serpens_ctx *ctx, int table, const void *const *keys,
			       uint32_t n, void **values)
{
	struct serpens_table *t = table_of(ctx, table);
	uint32_t found = 0;
	if (!t || is_release(serpens_env_of(ctx), table)) {
		for (uint32_t i = 0; i < n && i < SERPENS_BURST; i++) {
			values[i] = t ? release_share(serpens_env_of(ctx), table, keys[i]) : NULL;
			found += values[i] != NULL;
		}
		return found;
	}
	uint32_t hashes[SERPENS_BURST];
	n = n < SERPENS_BURST ? n : SERPENS_BURST;
	hash_keys(t, keys, n, hashes);
	serpens_table_prefetch_bulk(t, hashes, n);
	return serpens_table_probe_bulk(t, keys, n, hashes, values);
}

/* Every lookup's keys hashed and their slots prefetched before any is probed: a flow's and
 * its host's misses overlap too. (Release tables split shares under a lock: one at a time.) */
static uint32_t get_state_multi(struct serpens_ctx *ctx, struct serpens_lookup *l, uint32_t nl)
{
	struct serpens_nf_env *s = serpens_env_of(ctx);
	uint32_t hashes[16][SERPENS_BURST], n[16], found = 0;
	struct serpens_table *t[16];

	nl = nl < 16 ? nl : 16;
	for (uint32_t q = 0; q < nl; q++) {
		t[q] = table_of(ctx, l[q].table);
		n[q] = l[q].n < SERPENS_BURST ? l[q].n : SERPENS_BURST;
		if (t[q] && !is_release(s, l[q].table)) {
			hash_keys(t[q], l[q].keys, n[q], hashes[q]);
			serpens_table_prefetch_bulk(t[q], hashes[q], n[q]);
		} else {
			t[q] = NULL;
		}
	}
	for (uint32_t q = 0; q < nl; q++)
		found += t[q] ? serpens_table_probe_bulk(t[q], l[q].keys, n[q], hashes[q], l[q].values)
			      : get_state_bulk(ctx, l[q].table, l[q].keys, n[q], l[q].values);
	return found;
}

/* In init(): create key's pool if it does not exist. Later: overwrite this instance's share. */
static int release_put(struct serpens_nf_env *s, int table, const void *key, const void *value,
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
	struct serpens_table *t = table_of(ctx, table);
	if (!t || !value)
		return SERPENS_EINVAL;
	struct serpens_nf_env *s = serpens_env_of(ctx);
	if (!(t->flags & SERPENS_WRITE) && !s->in_init)
		return SERPENS_EPERM; /* read state is filled in init(), then only read */
	if (is_release(s, table))
		return release_put(s, table, key, value, stored);
	return serpens_table_put(t, key, value, stored);
}

static int delete_state(struct serpens_ctx *ctx, int table, const void *key)
{
	struct serpens_table *t = table_of(ctx, table);
	if (t && !(t->flags & SERPENS_WRITE) && !serpens_env_of(ctx)->in_init)
		return SERPENS_EPERM;
	return t ? serpens_table_delete(t, key) : SERPENS_EINVAL;
}

static int state_fetch_add(struct serpens_ctx *ctx, int table, const void *key, uint64_t delta,
			   uint64_t *before)
{
	struct serpens_table *t = shared_table_of(ctx, table);
	return t ? serpens_table_fetch_add(t, key, delta, before) : SERPENS_EINVAL;
}

static int state_timer(struct serpens_ctx *ctx, int table, const void *key, uint64_t period_ns)
{
	struct serpens_nf_env *s = serpens_env_of(ctx);
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
	struct serpens_nf_env *s = serpens_env_of(ctx);
	if ((unsigned)table >= s->ntables)
		return SERPENS_EINVAL;
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
	.csum_partial = serpens_csum_partial,
	.csum_fold = serpens_csum_fold,
	.csum_update = serpens_csum_update,
	.l4_csum = serpens_l4_csum,
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
	.get_state_multi = get_state_multi,
};
