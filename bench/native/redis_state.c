/* State in Redis for the baselines (see redis_state.h). */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "nf_api.h"
#include "pkt.h"
#include "redis_state.h"
#include "state_backend.h"

#define OUT_CAP (4u << 20)
#define IN_CAP (4u << 20)
#define ARENA_CAP (4u << 20)
#define KEPT_CAP (20u << 20) /* values read before the first batch end: the IDS automaton's
			      * 16 MiB at most */
#define MAX_ENTRIES 1024
#define HASH_SLOTS 4096 /* > 2 x MAX_ENTRIES: short probes */
#define MAX_KEY 512

/* One table kept in Redis: key i is "<nf>/<table>/" + its bytes. */
struct remote_table {
	uint32_t flags, key_size, value_size;
	uint32_t prefix_len;
	char prefix[96];
	char key_hdr[16]; /* "$<prefix + key bytes>\r\n" */
	char value_hdr[16]; /* "$<value bytes>\r\n" */
	uint8_t key_hdr_len, value_hdr_len;
};

/* An NF's tables (serpens_nf_env.backend_priv): which ids are in Redis. */
struct redis_nf {
	uint32_t remote_mask;
	struct remote_table t[SERPENS_MAX_TABLES];
};
static struct redis_nf nf_data[SERPENS_MAX_STEPS]; /* one instance per process at a time */
static uint32_t nf_used;

/* ---- the connection --------------------------------------------------------------------- */

static int fd = -1;
static char path[SERPENS_STATE_ARG];
static char *failed; /* the control block's state_error */
static size_t failed_len;
static char out[OUT_CAP];
static size_t out_len;
static uint32_t pending; /* replies owed for queued writes */
static char in[IN_CAP];
static size_t in_pos, in_len;

/* The connection is gone (or unusable): say why, once, and serve no more state. */
static void fail(const char *what, int err)
{
	if (fd >= 0)
		close(fd);
	fd = -1;
	out_len = in_pos = in_len = 0;
	pending = 0;
	if (failed && !failed[0])
		snprintf(failed, failed_len, "redis at %s: %s%s%s", path, what, err ? ": " : "",
			 err ? strerror(err) : "");
}

static int connect_unix(const char *p)
{
	struct sockaddr_un a = {.sun_family = AF_UNIX};
	struct timeval tv = {2, 0}; /* a dead Redis fails the baseline, never hangs it */
	int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (s < 0)
		return -errno;
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", p);
	setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (connect(s, (struct sockaddr *)&a, sizeof(a))) {
		int rc = -errno;
		close(s);
		return rc;
	}
	return s;
}

/* ---- RESP encoding: fixed headers per table, no formatting per key ---------------------- */

static size_t put_uint(char *p, uint64_t v)
{
	char tmp[20];
	size_t n = 0;
	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	for (size_t i = 0; i < n; i++)
		p[i] = tmp[n - 1 - i];
	return n;
}

static size_t make_hdr(char *p, char type, uint64_t v)
{
	size_t n = 0;
	p[n++] = type;
	n += put_uint(p + n, v);
	p[n++] = '\r';
	p[n++] = '\n';
	return n;
}

static void out_raw(const void *p, size_t n)
{
	memcpy(out + out_len, p, n);
	out_len += n;
}

#define OUT_LIT(s) out_raw(s, sizeof(s) - 1)

static void out_array(uint32_t n) { out_len += make_hdr(out + out_len, '*', n); }

static void out_key(const struct remote_table *t, const void *key)
{
	out_raw(t->key_hdr, t->key_hdr_len);
	out_raw(t->prefix, t->prefix_len);
	out_raw(key, t->key_size);
	OUT_LIT("\r\n");
}

static void out_value(const struct remote_table *t, const void *value)
{
	out_raw(t->value_hdr, t->value_hdr_len);
	out_raw(value, t->value_size);
	OUT_LIT("\r\n");
}

static int send_all(void)
{
	size_t done = 0;
	while (done < out_len) {
		ssize_t n = send(fd, out + done, out_len - done, MSG_NOSIGNAL);
		if (n <= 0) {
			fail("sending", n < 0 ? errno : EPIPE);
			return -1;
		}
		done += (size_t)n;
	}
	out_len = 0;
	return 0;
}

/* ---- RESP decoding ---------------------------------------------------------------------- */

static int fill(void)
{
	if (in_pos > 0) { /* keep what is unread at the front */
		memmove(in, in + in_pos, in_len - in_pos);
		in_len -= in_pos;
		in_pos = 0;
	}
	if (in_len == IN_CAP) {
		fail("a reply larger than the buffer", 0);
		return -1;
	}
	ssize_t n = recv(fd, in + in_len, IN_CAP - in_len, 0);
	if (n <= 0) {
		fail("receiving", n < 0 ? errno : ECONNRESET);
		return -1;
	}
	in_len += (size_t)n;
	return 0;
}

#define MAX_DIGITS 18  /* any count or value Redis sends this baseline; no overflow of v */
#define MAX_NESTING 4  /* the replies skipped are flat, or arrays of flat ones */

/* The number of a reply line between s and e (exclusive): digits only, at most MAX_DIGITS;
 * negative only where `neg_ok` (integers), else -1 only (nil). -1 on anything else, failed. */
static int parse_num(const char *s, const char *e, int neg_ok, long long *num)
{
	int neg = s < e && *s == '-';
	long long v = 0;
	s += neg;
	if (s == e || e - s > MAX_DIGITS) {
		fail("a reply with a malformed number", 0);
		return -1;
	}
	for (; s < e; s++) {
		if (*s < '0' || *s > '9') {
			fail("a reply with a malformed number", 0);
			return -1;
		}
		v = v * 10 + (*s - '0');
	}
	if (neg && !neg_ok && v != 1) {
		fail("a reply with a negative length", 0);
		return -1;
	}
	*num = neg ? -v : v;
	return 0;
}

/* One reply: its type byte; for bulk strings the data (num = length, -1 for nil); for
 * integers the value in *num; for arrays the count in *num (the elements follow); simple
 * strings are skipped (num = 0). */
static int read_reply(char *type, char **data, long long *num)
{
	char *s, *e;
	while (!(e = memchr(in + in_pos, '\n', in_len - in_pos)))
		if (fill())
			return -1;
	s = in + in_pos;
	if (e - s < 2 || e[-1] != '\r') {
		fail("an unreadable reply", 0);
		return -1;
	}
	*type = s[0];
	*data = NULL;
	*num = 0;
	in_pos = (size_t)(e + 1 - in);
	switch (*type) {
	case '+':
		return 0;
	case '-':
		fail("an error reply", 0);
		return -1;
	case '$':
	case '*':
	case ':':
		if (parse_num(s + 1, e - 1, *type == ':', num))
			return -1;
		break;
	default:
		fail("a reply of an unknown type", 0);
		return -1;
	}
	if (*type != '$' || *num < 0)
		return 0;
	if ((size_t)*num + 2 > IN_CAP) {
		fail("a value larger than the buffer", 0);
		return -1;
	}
	while (in_len - in_pos < (size_t)*num + 2)
		if (fill())
			return -1;
	*data = in + in_pos;
	in_pos += (size_t)*num + 2;
	return 0;
}

static int skip_nested(int depth)
{
	char type, *data;
	long long num;
	if (read_reply(&type, &data, &num))
		return -1;
	if (type == '*' && num > 0 && depth >= MAX_NESTING) {
		fail("a reply nested too deep", 0);
		return -1;
	}
	for (long long i = 0; type == '*' && i < num; i++)
		if (skip_nested(depth + 1))
			return -1;
	return 0;
}

static int skip_reply(void) { return skip_nested(0); }

/* Send everything queued and consume the replies owed to earlier writes; the replies of the
 * commands queued last are next in the input. */
static int round_trip(void)
{
	if (fd < 0 || send_all())
		return -1;
	for (; pending; pending--)
		if (skip_reply())
			return -1;
	return 0;
}

/* ---- the batch's values, found by hash ---------------------------------------------------- */

struct entry {
	const struct remote_table *t;
	uint8_t *key, *value, *pristine;
	uint32_t live;
};
static uint8_t arena[ARENA_CAP];
static size_t arena_used;
/* What an NF reads or writes in init() it may keep pointers to for good (nf.h: "a pointer
 * stays valid until its entry is deleted": the IDS keeps its automaton's chunks): values
 * remembered before the instance's first batch ended live here until the next attach. */
static uint8_t kept[KEPT_CAP];
static size_t kept_used;
static int first_batch;
static struct entry entries[MAX_ENTRIES];
static uint32_t nentries;
/* open addressing; a slot is in use when its stamp is this batch's (no clearing per batch) */
static struct {
	uint32_t stamp, entry;
} slots[HASH_SLOTS];
static uint32_t stamp = 1;

static uint32_t slot_hash(const struct remote_table *t, const void *key)
{
	return serpens_hash_crc(key, t->key_size, (uint32_t)(uintptr_t)t) & (HASH_SLOTS - 1);
}

static struct entry *lookup(const struct remote_table *t, const void *key)
{
	for (uint32_t h = slot_hash(t, key); slots[h].stamp == stamp; h = (h + 1) & (HASH_SLOTS - 1)) {
		struct entry *e = &entries[slots[h].entry];
		if (e->live && e->t == t && memcmp(e->key, key, t->key_size) == 0)
			return e;
	}
	return NULL;
}

static struct entry *remember(const struct remote_table *t, const void *key, const void *value)
{
	size_t need = t->key_size + 2ull * t->value_size;
	uint8_t *base = first_batch ? kept : arena;
	size_t *used = first_batch ? &kept_used : &arena_used;
	if (nentries == MAX_ENTRIES || *used + need > (first_batch ? KEPT_CAP : ARENA_CAP))
		return NULL;
	uint32_t h = slot_hash(t, key);
	while (slots[h].stamp == stamp)
		h = (h + 1) & (HASH_SLOTS - 1);
	slots[h].stamp = stamp;
	slots[h].entry = nentries;
	struct entry *e = &entries[nentries++];
	e->t = t;
	e->key = base + *used;
	e->value = e->key + t->key_size;
	e->pristine = e->value + t->value_size;
	*used += (need + 7) & ~(size_t)7;
	memcpy(e->key, key, t->key_size);
	memcpy(e->value, value, t->value_size);
	memcpy(e->pristine, value, t->value_size);
	e->live = 1;
	return e;
}

static void forget_batch(void)
{
	nentries = 0;
	arena_used = 0;
	if (++stamp == 0) { /* wrapped: clear once every 4 billion batches */
		memset(slots, 0, sizeof(slots));
		stamp = 1;
	}
}

/* Room for a command of `n` bytes; sends what is queued when there is none. */
static int room(size_t n)
{
	if (out_len + n + 64 <= OUT_CAP)
		return 0;
	return round_trip();
}

static void queue_set(const struct remote_table *t, const void *key, const void *value)
{
	if (fd < 0 || room(t->prefix_len + t->key_size + t->value_size + 64))
		return;
	OUT_LIT("*3\r\n$3\r\nSET\r\n");
	out_key(t, key);
	out_value(t, value);
	pending++;
}

/* ---- the state operations ----------------------------------------------------------------- */

/* The remote table behind an NF's table id, or NULL (a local table, or none). */
static struct remote_table *remote(struct serpens_ctx *ctx, int table)
{
	struct redis_nf *r = serpens_env_of(ctx)->backend_priv;
	return r && (unsigned)table < SERPENS_MAX_TABLES && (r->remote_mask >> table & 1)
		       ? &r->t[table] : NULL;
}

static int table_init(struct remote_table *t, const char *nf, const char *name, uint32_t flags,
		      uint32_t key_size, uint32_t value_size)
{
	int n = snprintf(t->prefix, sizeof(t->prefix), "%s/%s/", nf, name);
	if (n < 0 || n >= (int)sizeof(t->prefix) || key_size + (uint32_t)n > MAX_KEY ||
	    value_size > (1u << 20))
		return SERPENS_EINVAL;
	t->prefix_len = (uint32_t)n;
	t->flags = flags;
	t->key_size = key_size;
	t->value_size = value_size;
	t->key_hdr_len = (uint8_t)make_hdr(t->key_hdr, '$', t->prefix_len + key_size);
	t->value_hdr_len = (uint8_t)make_hdr(t->value_hdr, '$', value_size);
	return 0;
}

static int create_table_in_redis(struct serpens_ctx *ctx, const char *name, uint32_t flags,
				 uint32_t key_size, uint32_t value_size)
{
	struct serpens_nf_env *s = serpens_env_of(ctx);
	int rc = serpens_table_flags_valid(flags);
	if (rc)
		return rc;
	if (!s->backend_priv) {
		if (nf_used == SERPENS_MAX_STEPS)
			return SERPENS_ENOMEM;
		s->backend_priv = memset(&nf_data[nf_used++], 0, sizeof(nf_data[0]));
	}
	struct redis_nf *r = s->backend_priv;
	int id = serpens_nf_env_table_id(s, name);
	if (id < 0)
		return id;
	if ((rc = table_init(&r->t[id], s->name, name, flags, key_size, value_size)) != 0)
		return rc;
	r->remote_mask |= 1u << id;
	return id;
}

/* Fission-style: every table in Redis. */
static int create_table_all(struct serpens_ctx *ctx, const char *name, uint32_t flags,
			    uint32_t key_size, uint32_t value_size, uint32_t capacity)
{
	(void)capacity; /* Redis holds what it holds */
	if (!flags || !name)
		return SERPENS_EINVAL;
	return create_table_in_redis(ctx, name, flags, key_size, value_size);
}

/* SNF-style: global tables in Redis, per-flow tables in the state manager. */
static int create_table_global(struct serpens_ctx *ctx, const char *name, uint32_t flags,
			       uint32_t key_size, uint32_t value_size, uint32_t capacity)
{
	if (!flags || !name || !(flags & SERPENS_GLOBAL))
		return serpens_api_v1.create_table(ctx, name, flags, key_size, value_size, capacity);
	return create_table_in_redis(ctx, name, flags, key_size, value_size);
}

/* Look up several tables' keys (remote ones in one round trip: an MGET each, pipelined). */
static uint32_t get_multi(struct serpens_ctx *ctx, struct serpens_lookup *l, uint32_t nl)
{
	uint8_t missing[SERPENS_MAX_TABLES * 2][SERPENS_BURST];
	uint32_t nmiss[SERPENS_MAX_TABLES * 2] = {0}, found = 0, asked = 0;

	if (nl > SERPENS_MAX_TABLES * 2)
		return 0;
	for (uint32_t q = 0; q < nl; q++) {
		struct remote_table *t = remote(ctx, l[q].table);
		uint32_t n = l[q].n < SERPENS_BURST ? l[q].n : SERPENS_BURST;
		if (!t) {
			found += serpens_api_v1.get_state_bulk(ctx, l[q].table, l[q].keys, n,
							       l[q].values);
			continue;
		}
		for (uint32_t i = 0; i < n; i++) {
			struct entry *e = lookup(t, l[q].keys[i]);
			l[q].values[i] = e ? e->value : NULL;
			if (!e)
				missing[q][nmiss[q]++] = (uint8_t)i;
		}
		if (!nmiss[q] || fd < 0 || room(nmiss[q] * (t->prefix_len + t->key_size + 32)))
			continue;
		out_array(nmiss[q] + 1);
		OUT_LIT("$4\r\nMGET\r\n");
		for (uint32_t m = 0; m < nmiss[q]; m++)
			out_key(t, l[q].keys[missing[q][m]]);
		asked |= 1u << q;
	}
	if (asked && round_trip() == 0) {
		for (uint32_t q = 0; q < nl && fd >= 0; q++) {
			if (!(asked >> q & 1))
				continue;
			struct remote_table *t = remote(ctx, l[q].table);
			char type, *data;
			long long num;
			if (read_reply(&type, &data, &num))
				break;
			if (type != '*' || num != nmiss[q]) {
				fail("an MGET reply of the wrong length", 0);
				break;
			}
			for (uint32_t m = 0; m < nmiss[q]; m++) {
				if (read_reply(&type, &data, &num))
					break;
				if (type != '$') {
					fail("an MGET element not a bulk string", 0);
					break;
				}
				if (num < 0)
					continue; /* nil: no such key */
				if (num != t->value_size) {
					fail("a value of the wrong size", 0);
					break;
				}
				/* a key asked twice in one MGET gives one value, or updates are lost */
				const void *key = l[q].keys[missing[q][m]];
				struct entry *e = lookup(t, key);
				if (!e)
					e = remember(t, key, data);
				l[q].values[missing[q][m]] = e ? e->value : NULL;
			}
		}
	}
	for (uint32_t q = 0; q < nl; q++) {
		if (!remote(ctx, l[q].table))
			continue;
		for (uint32_t i = 0; i < l[q].n && i < SERPENS_BURST; i++)
			found += l[q].values[i] != NULL;
	}
	return found;
}

static uint32_t get_state_bulk(struct serpens_ctx *ctx, int table, const void *const *keys,
			       uint32_t n, void **values)
{
	struct serpens_lookup l = {.table = table, .n = n, .keys = keys, .values = values};
	return get_multi(ctx, &l, 1);
}

static void *get_state(struct serpens_ctx *ctx, int table, const void *key)
{
	void *v = NULL;
	if (!remote(ctx, table))
		return serpens_api_v1.get_state(ctx, table, key);
	get_state_bulk(ctx, table, &key, 1, &v);
	return v;
}

static int put_state(struct serpens_ctx *ctx, int table, const void *key, const void *value,
		     void **stored)
{
	struct remote_table *t = remote(ctx, table);
	if (!t)
		return serpens_api_v1.put_state(ctx, table, key, value, stored);
	if (!value || fd < 0)
		return SERPENS_EINVAL;
	struct entry *e = lookup(t, key);
	if (!e)
		e = remember(t, key, value);
	if (e) {
		memcpy(e->value, value, t->value_size);
		memcpy(e->pristine, value, t->value_size); /* written now, not again at batch end */
	}
	queue_set(t, key, value);
	if (stored)
		*stored = e ? e->value : NULL;
	return 0;
}

static int delete_state(struct serpens_ctx *ctx, int table, const void *key)
{
	struct remote_table *t = remote(ctx, table);
	if (!t)
		return serpens_api_v1.delete_state(ctx, table, key);
	if (!(t->flags & SERPENS_PER_FLOW))
		return SERPENS_EPERM;
	struct entry *e = lookup(t, key);
	if (e)
		e->live = 0;
	if (fd < 0 || room(t->prefix_len + t->key_size + 32))
		return SERPENS_EINVAL;
	OUT_LIT("*2\r\n$3\r\nDEL\r\n");
	out_key(t, key);
	pending++;
	return 0;
}

static int state_fetch_add(struct serpens_ctx *ctx, int table, const void *key, uint64_t delta,
			   uint64_t *before)
{
	struct remote_table *t = remote(ctx, table);
	char num[24], type, *data;
	long long result;

	if (!t)
		return serpens_api_v1.state_fetch_add(ctx, table, key, delta, before);
	if ((t->flags & (SERPENS_GLOBAL | SERPENS_WRITE)) != (SERPENS_GLOBAL | SERPENS_WRITE))
		return SERPENS_EPERM;
	if (fd < 0 || room(t->prefix_len + t->key_size + 64))
		return SERPENS_EINVAL;
	/* a counter is a Redis integer, apart from the binary values: key + '#' */
	OUT_LIT("*3\r\n$6\r\nINCRBY\r\n");
	out_len += make_hdr(out + out_len, '$', t->prefix_len + t->key_size + 1);
	out_raw(t->prefix, t->prefix_len);
	out_raw(key, t->key_size);
	OUT_LIT("#\r\n");
	size_t n = put_uint(num, delta);
	out_len += make_hdr(out + out_len, '$', n);
	out_raw(num, n);
	OUT_LIT("\r\n");
	if (round_trip() || read_reply(&type, &data, &result))
		return SERPENS_EINVAL;
	if (type != ':') {
		fail("an INCRBY reply that is no integer", 0);
		return SERPENS_EINVAL;
	}
	if (before)
		*before = (uint64_t)result - delta;
	return 0;
}

/* No replicas or shares in Redis: nothing to merge or rebalance. */
static int state_timer(struct serpens_ctx *ctx, int table, const void *key, uint64_t period_ns)
{
	return remote(ctx, table) ? 0 : serpens_api_v1.timer(ctx, table, key, period_ns);
}

static int state_trigger(struct serpens_ctx *ctx, int table, const void *key)
{
	return remote(ctx, table) ? 0 : serpens_api_v1.trigger(ctx, table, key);
}

/* ---- the backend's hooks ------------------------------------------------------------------ */

static int attach(const char *arg, char *fail_to, size_t fail_len, char *err, size_t errlen)
{
	failed = fail_to;
	failed_len = fail_len;
	nf_used = 0;
	forget_batch();
	kept_used = 0;
	first_batch = 1;
	if (fd >= 0 && strcmp(arg, path) == 0)
		return 0;
	if (fd >= 0)
		close(fd);
	fd = -1;
	out_len = in_pos = in_len = 0;
	pending = 0;
	snprintf(path, sizeof(path), "%s", arg);
	int s = connect_unix(arg);
	if (s < 0) {
		snprintf(err, errlen, "redis at '%s': %s", arg, strerror(-s));
		return s;
	}
	fd = s;
	return 0;
}

/* Queue the writes of values the NF changed in place; forget the batch's values. */
static void batch_end(void)
{
	for (uint32_t i = 0; i < nentries; i++) {
		struct entry *e = &entries[i];
		if (e->live && memcmp(e->value, e->pristine, e->t->value_size))
			queue_set(e->t, e->key, e->value);
	}
	forget_batch();
	first_batch = 0;
}

static void flush(void)
{
	if (fd >= 0)
		round_trip();
}

static struct serpens_api redis_api, snf_api;

static const struct serpens_state_backend redis_backend = {
	.name = "redis", .api = &redis_api, .attach = attach, .batch_end = batch_end, .flush = flush,
};
static const struct serpens_state_backend snf_backend = {
	.name = "redis-global", .api = &snf_api, .attach = attach, .batch_end = batch_end,
	.flush = flush,
};

/* Registered when the extension loads, as DPDK's drivers are. */
__attribute__((constructor)) static void register_redis_backends(void)
{
	redis_api = serpens_api_v1;
	redis_api.create_table = create_table_all;
	redis_api.get_state = get_state;
	redis_api.get_state_bulk = get_state_bulk;
	redis_api.get_state_multi = get_multi;
	redis_api.put_state = put_state;
	redis_api.delete_state = delete_state;
	redis_api.state_fetch_add = state_fetch_add;
	redis_api.timer = state_timer;
	redis_api.trigger = state_trigger;
	snf_api = redis_api;
	snf_api.create_table = create_table_global;
	serpens_state_backend_register(SERPENS_STATE_REDIS, &redis_backend);
	serpens_state_backend_register(SERPENS_STATE_REDIS_GLOBAL, &snf_backend);
}
