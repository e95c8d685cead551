/* Remote state in Redis for the baselines (see remote_state.h). */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "remote_state.h"
#include "serpens/nf.h"

#define OUT_CAP (4u << 20)
#define IN_CAP (4u << 20)
#define ARENA_CAP (4u << 20)
#define MAX_ENTRIES 1024
#define MAX_KEY 512

static int fd = -1;
static char out[OUT_CAP];
static size_t out_len;
static uint32_t pending; /* replies owed for queued writes */
static char in[IN_CAP];
static size_t in_pos, in_len;

/* Values fetched or written during the current batch. */
struct entry {
	struct serpens_remote_table *t;
	uint8_t *key, *value, *pristine;
	int live;
};
static uint8_t arena[ARENA_CAP];
static size_t arena_used;
static struct entry entries[MAX_ENTRIES];
static uint32_t nentries;

int serpens_remote_enabled(void) { return fd >= 0; }

int serpens_remote_connect(uint16_t port)
{
	if (fd >= 0)
		return 0;
	int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s < 0)
		return -errno;
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port),
				.sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	int one = 1;
	struct timeval tv = {2, 0}; /* a dead Redis fails the baseline, never hangs it */
	setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (connect(s, (struct sockaddr *)&a, sizeof(a))) {
		int rc = -errno;
		close(s);
		return rc;
	}
	fd = s;
	return 0;
}

static void disconnect(void)
{
	if (fd >= 0)
		close(fd);
	fd = -1;
	out_len = in_pos = in_len = 0;
	pending = 0;
}

/* ---- RESP encoding ---------------------------------------------------------------------- */

static int out_room(size_t n) { return out_len + n + 64 <= OUT_CAP; }

static void out_raw(const void *p, size_t n)
{
	memcpy(out + out_len, p, n);
	out_len += n;
}

static void out_bulk(const void *p, size_t n)
{
	out_len += (size_t)snprintf(out + out_len, 32, "$%zu\r\n", n);
	out_raw(p, n);
	out_raw("\r\n", 2);
}

static void out_array(uint32_t n) { out_len += (size_t)snprintf(out + out_len, 32, "*%u\r\n", n); }

static size_t make_key(const struct serpens_remote_table *t, const void *key, char *buf)
{
	memcpy(buf, t->prefix, t->prefix_len);
	memcpy(buf + t->prefix_len, key, t->key_size);
	return t->prefix_len + t->key_size;
}

static int send_all(void)
{
	size_t done = 0;
	while (done < out_len) {
		ssize_t n = send(fd, out + done, out_len - done, MSG_NOSIGNAL);
		if (n <= 0)
			return -1;
		done += (size_t)n;
	}
	out_len = 0;
	return 0;
}

/* ---- RESP decoding ---------------------------------------------------------------------- */

static int fill(void)
{
	if (in_pos == in_len)
		in_pos = in_len = 0;
	if (in_len == IN_CAP) {
		memmove(in, in + in_pos, in_len - in_pos);
		in_len -= in_pos;
		in_pos = 0;
	}
	ssize_t n = recv(fd, in + in_len, IN_CAP - in_len, 0);
	if (n <= 0)
		return -1;
	in_len += (size_t)n;
	return 0;
}

/* One "\r\n"-terminated line; *line points into the buffer. */
static int read_line(char **line, size_t *len)
{
	for (;;) {
		char *s = in + in_pos, *e = memchr(s, '\n', in_len - in_pos);
		if (e && e > s && e[-1] == '\r') {
			*line = s;
			*len = (size_t)(e - 1 - s);
			in_pos = (size_t)(e + 1 - in);
			return 0;
		}
		if (in_pos > 0 && in_len == IN_CAP) {
			memmove(in, in + in_pos, in_len - in_pos);
			in_len -= in_pos;
			in_pos = 0;
		}
		if (fill())
			return -1;
	}
}

static int read_bytes(size_t n, char **p)
{
	if (n + 2 > IN_CAP)
		return -1;
	while (in_len - in_pos < n + 2) {
		if (in_pos > 0) {
			memmove(in, in + in_pos, in_len - in_pos);
			in_len -= in_pos;
			in_pos = 0;
		}
		if (fill())
			return -1;
	}
	*p = in + in_pos;
	in_pos += n + 2;
	return 0;
}

/* Read one reply: its type byte, and for bulk strings the data (len -1 for nil), for integers
 * the value in *num, for arrays the count in *num (elements follow). */
static int read_reply(char *type, char **data, long long *num)
{
	char *line;
	size_t len;
	if (read_line(&line, &len) || len == 0)
		return -1;
	*type = line[0];
	*num = 0;
	*data = NULL;
	if (*type == ':' || *type == '*' || *type == '$')
		*num = strtoll(line + 1, NULL, 10);
	if (*type == '$' && *num >= 0)
		return read_bytes((size_t)*num, data);
	return 0;
}

static int skip_reply(void)
{
	char type, *data;
	long long num;
	if (read_reply(&type, &data, &num))
		return -1;
	for (long long i = 0; type == '*' && i < num; i++)
		if (skip_reply())
			return -1;
	return 0;
}

/* Send everything queued and consume the replies owed to earlier writes. */
static int round_trip_begin(void)
{
	if (fd < 0 || send_all())
		goto fail;
	for (; pending; pending--)
		if (skip_reply())
			goto fail;
	return 0;
fail:
	disconnect();
	return -1;
}

/* ---- the batch's values ----------------------------------------------------------------- */

static struct entry *lookup(struct serpens_remote_table *t, const void *key)
{
	for (uint32_t i = 0; i < nentries; i++)
		if (entries[i].live && entries[i].t == t && memcmp(entries[i].key, key, t->key_size) == 0)
			return &entries[i];
	return NULL;
}

static struct entry *remember(struct serpens_remote_table *t, const void *key, const void *value)
{
	size_t need = t->key_size + 2ull * t->value_size;
	if (nentries == MAX_ENTRIES || arena_used + need > ARENA_CAP)
		return NULL;
	struct entry *e = &entries[nentries++];
	e->t = t;
	e->key = arena + arena_used;
	e->value = e->key + t->key_size;
	e->pristine = e->value + t->value_size;
	arena_used += (need + 7) & ~(size_t)7;
	memcpy(e->key, key, t->key_size);
	memcpy(e->value, value, t->value_size);
	memcpy(e->pristine, value, t->value_size);
	e->live = 1;
	return e;
}

static void queue_set(struct serpens_remote_table *t, const void *key, const void *value)
{
	char k[MAX_KEY];
	if (fd < 0)
		return;
	if (!out_room(t->prefix_len + t->key_size + t->value_size + 64))
		serpens_remote_flush();
	out_array(3);
	out_bulk("SET", 3);
	out_bulk(k, make_key(t, key, k));
	out_bulk(value, t->value_size);
	pending++;
}

void serpens_remote_batch_end(void)
{
	for (uint32_t i = 0; i < nentries; i++) {
		struct entry *e = &entries[i];
		if (e->live && memcmp(e->value, e->pristine, e->t->value_size))
			queue_set(e->t, e->key, e->value);
	}
	nentries = 0;
	arena_used = 0;
}

int serpens_remote_flush(void)
{
	if (fd < 0)
		return -1;
	return round_trip_begin();
}

/* ---- the state API ---------------------------------------------------------------------- */

int serpens_remote_table_init(struct serpens_remote_table *t, const char *nf, const char *name,
			      uint32_t flags, uint32_t key_size, uint32_t value_size)
{
	int n = snprintf(t->prefix, sizeof(t->prefix), "%s/%s/", nf, name);
	if (n < 0 || n >= (int)sizeof(t->prefix) || key_size + (uint32_t)n > MAX_KEY)
		return SERPENS_EINVAL;
	t->prefix_len = (uint32_t)n;
	t->flags = flags;
	t->key_size = key_size;
	t->value_size = value_size;
	return 0;
}

uint32_t serpens_remote_get_bulk(struct serpens_remote_table *t, const void *const *keys,
				 uint32_t n, void **values)
{
	uint32_t missing[SERPENS_BURST], nmiss = 0, found = 0;
	char k[MAX_KEY];

	for (uint32_t i = 0; i < n && i < SERPENS_BURST; i++) {
		struct entry *e = lookup(t, keys[i]);
		values[i] = e ? e->value : NULL;
		if (!e)
			missing[nmiss++] = i;
	}
	if (nmiss == 0 || fd < 0)
		goto count;
	out_array(nmiss + 1);
	out_bulk("MGET", 4);
	for (uint32_t m = 0; m < nmiss; m++)
		out_bulk(k, make_key(t, keys[missing[m]], k));
	if (round_trip_begin())
		goto count;
	char type, *data;
	long long num;
	if (read_reply(&type, &data, &num) || type != '*' || num != nmiss) {
		disconnect();
		goto count;
	}
	for (uint32_t m = 0; m < nmiss; m++) {
		if (read_reply(&type, &data, &num)) {
			disconnect();
			break;
		}
		if (type == '$' && num == t->value_size) {
			/* A key asked twice in one MGET must give one value, or updates are lost. */
			struct entry *e = lookup(t, keys[missing[m]]);
			if (!e)
				e = remember(t, keys[missing[m]], data);
			values[missing[m]] = e ? e->value : NULL;
		}
	}
count:
	for (uint32_t i = 0; i < n && i < SERPENS_BURST; i++)
		found += values[i] != NULL;
	return found;
}

void *serpens_remote_get(struct serpens_remote_table *t, const void *key)
{
	void *v = NULL;
	serpens_remote_get_bulk(t, &key, 1, &v);
	return v;
}

int serpens_remote_put(struct serpens_remote_table *t, const void *key, const void *value,
		       void **stored)
{
	struct entry *e = lookup(t, key);
	if (fd < 0)
		return SERPENS_EINVAL;
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

int serpens_remote_delete(struct serpens_remote_table *t, const void *key)
{
	char k[MAX_KEY];
	struct entry *e = lookup(t, key);
	if (!(t->flags & SERPENS_PER_FLOW))
		return SERPENS_EPERM;
	if (e)
		e->live = 0;
	if (fd < 0)
		return SERPENS_EINVAL;
	out_array(2);
	out_bulk("DEL", 3);
	out_bulk(k, make_key(t, key, k));
	pending++;
	return 0;
}

int serpens_remote_fetch_add(struct serpens_remote_table *t, const void *key, uint64_t delta,
			     uint64_t *before)
{
	char k[MAX_KEY], num[24], type, *data;
	long long result;
	size_t klen = make_key(t, key, k);

	if ((t->flags & (SERPENS_GLOBAL | SERPENS_WRITE)) != (SERPENS_GLOBAL | SERPENS_WRITE))
		return SERPENS_EPERM;
	if (fd < 0)
		return SERPENS_EINVAL;
	k[klen++] = '#'; /* a counter is a Redis integer, apart from the binary values */
	out_array(3);
	out_bulk("INCRBY", 6);
	out_bulk(k, klen);
	out_bulk(num, (size_t)snprintf(num, sizeof(num), "%llu", (unsigned long long)delta));
	if (round_trip_begin() || read_reply(&type, &data, &result) || type != ':') {
		disconnect();
		return SERPENS_EINVAL;
	}
	if (before)
		*before = (uint64_t)result - delta;
	return 0;
}
