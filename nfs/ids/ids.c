/*
 * ids -- signature IDS: Aho-Corasick over each packet's L4 payload (paper §V, "IDS").
 *
 * Ports: one input, two outputs. Port 0 carries clean traffic on; port 1 is the SFC's
 * `suspicious` branch. A packet is suspicious when at least one pattern occurs in its L4
 * payload (matching is exact, case-sensitive bytes; patterns may overlap, be prefixes or
 * suffixes of one another). What happens to it depends on `action`:
 *   - alert: it leaves via port 1 (build the SFC as chain(ids(ports=2), distribute(clean,
 *     suspicious))). If the SFC wires only port 0, suspicious packets stay on port 0 and are
 *     only counted (init logs a warning), so an alert-only IDS never drops traffic.
 *   - drop:  it is dropped.
 * Packets are never modified.
 *
 * What is scanned: the L4 payload as serpens_parse() finds it (after the TCP/UDP/ICMP header;
 * right after the IP headers for other protocols), bounded by the IP length. Non-first IP
 * fragments have no L4 header: the bytes after the fixed IP header (IPv4: IHL; IPv6: the 40-
 * byte header, extension headers included) are scanned. IP fragments are not reassembled.
 *
 * TCP streams (`stream: tcp`, the default): a pattern split across the segments of a TCP
 * flow is found, as a streaming matcher (Hyperscan's stream mode) finds it: the per-flow
 * table "streams" (SERPENS_PER_FLOW|READ|WRITE, key struct serpens_flow, IDS_STREAM_FLOWS
 * entries) keeps, for each flow, the automaton state its last segment's scan ended in and the
 * sequence number the next in-order segment carries. A segment that carries it is scanned
 * from that state (the packet that completes the pattern is the suspicious one); any other
 * (a gap, a retransmission, reordering) is scanned from the start and the flow's stream
 * starts over at it (counted: stream_gaps). Segments of one flow within a batch are scanned
 * in order. After a match the stream starts over. FIN or RST ends the flow's entry. When the
 * table is full a new flow is scanned packet by packet (counted: stream_full). The entry
 * names its automaton (set id): after a pattern change a stream starts over. UDP and
 * other protocols are scanned packet by packet (`stream: off`: TCP too). Non-IP frames (ARP, LLDP, ...) carry no
 * payload to inspect: they go on via port 0, counted as "uninspected". Malformed frames (the
 * parser says TRUNCATED or BAD_HEADER) cannot be cleared: they are counted as "malformed" and
 * treated as suspicious (port 1 with alert, dropped with drop); they do not count as matches.
 *
 * Counters: scanned (packets whose payload was searched, empty payloads included), bytes
 * (payload bytes of those packets), matches (packets holding a pattern), alerts (matching
 * packets sent to port 1 -- or counted on port 0 when port 1 is not wired), dropped
 * (matching packets dropped), malformed, uninspected, automaton_built (1 when this instance
 * compiled the automaton, 0 when it found it ready in the state table), stream_gaps,
 * stream_full (above).
 *
 * Configuration (a dict; nfs/ids/__init__.py encode_config() validates and packs it):
 *   patterns: list of str (UTF-8) or bytes, 1..10000 patterns of 1..255 bytes each
 *   action:   alert | drop (default alert)
 *   stream:   tcp | off (default tcp): TCP flows scanned as streams (above)
 * The packed form costs 1 + length bytes per pattern; an SFC's configurations share
 * 1 MiB (pool_ctl.h SERPENS_CONFIG_MAX), enough for 10000 patterns of up to ~100 bytes.
 *
 * Packed config (little-endian), checked again by init() (SERPENS_EINVAL on anything off):
 *   header, 8 bytes: u32 magic 0x31444953 ("SID1"), u8 action (0 alert, 1 drop), u8 stream
 *                    (0 off, 1 tcp), u16 pattern count (1..10000)
 *   each pattern:    u8 length (1..255), the bytes. Patterns are sorted in strictly
 *                    ascending byte order (a prefix before its extensions), so no duplicates.
 *
 * The automaton (theory of operation). A full DFA over byte classes: every byte occurring in
 * a pattern is a class of its own, all other bytes share class 0. A state's row holds one
 * u32 per class, the transition for that class with Aho-Corasick's failure links already
 * followed, so scanning costs one row lookup per byte and no failure-chasing. A transition's
 * bit 31 says "the state reached ends a pattern" (itself or through its failure chain); the
 * scan of a packet stops at the first such transition. A state is named by its address in
 * the automaton: chunk << 14 | byte offset of its row in the chunk.
 *
 * Where it lives. NF globals are per instance and an image must fit a 16 MiB area, so the
 * automaton lives in the global/read state table "automaton" (key 8 bytes, value one 16 KiB
 * chunk, capacity IDS_TABLE_CAPACITY chunks), shared by every instance of the NF on the node
 * and kept when they stop. Entries are keyed {set id, chunk}: the set id is a hash of the
 * packed patterns, so NFs with different pattern sets share the table without clashing.
 * Chunk 0 holds a header (magic, a 64-bit fingerprint of the patterns, the sizes, the byte
 * class map); chunks 1.. hold rows, never a row across two chunks. init() looks the header
 * up first: when it is there and its fingerprint matches, the automaton is reused as is
 * (automaton_built stays 0). Otherwise init() compiles it: states are numbered in BFS order,
 * and since the patterns arrive sorted, the states of depth d are the distinct d-byte
 * prefixes in pattern order, so one pass over the patterns per depth enumerates them with
 * their parents and children and no trie in memory. A row starts as a copy of its failure
 * state's row (shallower, so already built) and gets its children written over it. Rows
 * are filled in a 16 KiB static buffer that put_state() copies into the table chunk by chunk;
 * the pointers put_state() returns are kept in a static array (they stay valid: global
 * entries are never deleted), and scanning indexes that array, never the hash table. The
 * header is written last, so an automaton whose build was cut short is never used. Two
 * instances compiling the same set at once write identical bytes. Entries are never deleted,
 * so the table fills up as pattern sets change: init() then fails with SERPENS_ENOSPC (drop
 * the table with the state manager to start afresh). Bound: IDS_MAX_CHUNKS chunks, 16 MiB:
 * about 15 K states with all 256 byte values in use, 149 K over 26 letters; a larger set is
 * refused (SERPENS_ENOMEM), never truncated.
 *
 * Cost: one dependent chain of two loads per byte (chunk pointer, row entry); packets are
 * scanned four at a time, interleaved, so the chains overlap. Measured in-process with
 * 1000 patterns (tests/test_nf_ids.py test_scan_cost_per_byte, 2-vCPU VM): 1.2 ns/byte,
 * against 4 ns/byte scanning one packet at a time.
 *
 * Example:
 *     NF(build_stock("ids"), ports=2, config=ids.encode_config({
 *         "patterns": ["/etc/passwd", b"\x90\x90\x90\x90", "cmd.exe"], "action": "alert"}))
 */
#include <serpens/nf.h>

#define IDS_MAGIC 0x31444953u
#define IDS_HDR_LEN 8
#define IDS_MAX_PATTERNS 10000
#define IDS_MAX_LEN 255

#define IDS_CHUNK_SHIFT 14
#define IDS_CHUNK (1u << IDS_CHUNK_SHIFT)
#define IDS_CHUNK_MASK (IDS_CHUNK - 1)
#define IDS_TABLE_CAPACITY 1024u              /* chunks of all pattern sets, headers included */
#define IDS_MAX_CHUNKS (IDS_TABLE_CAPACITY - 1) /* of one automaton, its header excluded */
#define IDS_MATCH 0x80000000u
#define IDS_AUTOMATON_MAGIC 0x314f544144495253ull /* "SRPIDAT1": layout version 1 */

#define IDS_ENOSYS (-38)
#define IDS_STREAM_FLOWS 65536u               /* TCP flows scanned as streams at once */

enum { ACTION_ALERT = 0, ACTION_DROP = 1 };
enum { STREAM_OFF = 0, STREAM_TCP = 1 };

#define TCP_FIN 0x01u
#define TCP_SYN 0x02u
#define TCP_RST 0x04u

/* A TCP flow's scan between its segments (table "streams"). */
struct ids_stream {
	uint32_t state;    /* where the scan of its last segment ended (0: the start) */
	uint32_t next_seq; /* the sequence number its next in-order segment carries */
	uint32_t set;      /* the automaton `state` is of (its set id) */
	uint32_t pad;
};

/* Chunk 0 of an automaton. */
struct ids_automaton_hdr {
	uint64_t magic;
	uint32_t fp[2];        /* fingerprint of the packed patterns */
	uint32_t npatterns;
	uint32_t nstates;
	uint32_t nclasses;
	uint32_t row_bytes;
	uint32_t rows_per_chunk;
	uint32_t nchunks;      /* row chunks, keyed 1..nchunks */
	uint8_t cls[256];      /* byte -> class */
};
_Static_assert(sizeof(struct ids_automaton_hdr) <= IDS_CHUNK, "header fits a chunk");

struct ids_key {
	uint32_t set;
	uint32_t chunk;
};
_Static_assert(sizeof(struct ids_key) == 8, "table key is 8 bytes");

/* Configuration and counters of this instance. */
static uint8_t action, stream_mode;
static int c_scanned, c_bytes, c_matches, c_alerts, c_dropped, c_malformed, c_uninspected,
	c_built, c_gaps, c_stream_full;
static int t_streams = -1;
static uint32_t suspicious_port; /* 1, or 0 when port 1 is not wired */

/* The automaton: row chunks (pointers into the state table) and the byte class map. */
static const uint8_t *chunk_ptr[IDS_MAX_CHUNKS];
static const uint8_t *cls_map;
static uint32_t auto_set, auto_chunks, auto_row_bytes, auto_rows; /* its id and shape */

/* Build-time only (touched once per node and pattern set, not per instance). */
static uint8_t lcp[IDS_MAX_PATTERNS]; /* common prefix with the previous pattern */
static uint32_t level_start[IDS_MAX_LEN + 2]; /* first state of each depth */
static uint8_t build_buf[IDS_CHUNK] __attribute__((aligned(64)));
static uint32_t build_chunk;

/* ---- configuration ----------------------------------------------------------------------- */

struct ids_patterns {
	const uint8_t *first; /* first pattern's length byte */
	uint32_t bytes;       /* of the pattern section */
	uint32_t n;
	uint32_t maxlen;
	uint32_t nstates;     /* distinct prefixes, the empty one included */
	uint32_t nclasses;
	uint8_t cls[256];
};

/* Check the packed config and derive what the build needs; 0 or SERPENS_EINVAL. Fills lcp[]. */
static int parse_config(struct serpens_ctx *ctx, const uint8_t *cfg, uint32_t len,
			struct ids_patterns *ps)
{
	const struct serpens_api *api = ctx->api;
	uint32_t magic, n;

	if (!cfg || len < IDS_HDR_LEN) {
		api->log(ctx, SERPENS_LOG_ERR, "config: %u bytes, at least %u", len, IDS_HDR_LEN);
		return SERPENS_EINVAL;
	}
	memcpy(&magic, cfg, 4);
	n = cfg[6] | (uint32_t)cfg[7] << 8;
	if (magic != IDS_MAGIC || cfg[4] > ACTION_DROP || cfg[5] > STREAM_TCP) {
		api->log(ctx, SERPENS_LOG_ERR, "config: bad header (not packed by nfs/ids encode_config?)");
		return SERPENS_EINVAL;
	}
	if (n < 1 || n > IDS_MAX_PATTERNS) {
		api->log(ctx, SERPENS_LOG_ERR, "config: %u patterns, 1..%u", n, IDS_MAX_PATTERNS);
		return SERPENS_EINVAL;
	}
	uint8_t seen[256];
	memset(seen, 0, sizeof(seen));
	const uint8_t *p = cfg + IDS_HDR_LEN, *end = cfg + len, *prev = NULL;
	uint32_t maxlen = 0, nstates = 1;
	for (uint32_t i = 0; i < n; i++) {
		uint32_t l = end > p ? p[0] : 0;
		if (l == 0 || (uint32_t)(end - p) < 1 + l) {
			api->log(ctx, SERPENS_LOG_ERR, "config: pattern %u is empty or runs past the end", i);
			return SERPENS_EINVAL;
		}
		uint32_t k = 0;
		if (prev) { /* strictly ascending: shorter first when one is a prefix of the other */
			uint32_t lp = prev[0], m = lp < l ? lp : l;
			while (k < m && prev[1 + k] == p[1 + k])
				k++;
			if (k == m ? lp >= l : prev[1 + k] > p[1 + k]) {
				api->log(ctx, SERPENS_LOG_ERR, "config: pattern %u is not above pattern %u "
					 "(unsorted or duplicate)", i, i - 1);
				return SERPENS_EINVAL;
			}
		}
		lcp[i] = (uint8_t)k;
		nstates += l - k;
		maxlen = l > maxlen ? l : maxlen;
		for (uint32_t j = 1; j <= l; j++)
			seen[p[j]] = 1;
		prev = p;
		p += 1 + l;
	}
	if (p != end) {
		api->log(ctx, SERPENS_LOG_ERR, "config: %u bytes after the last pattern", (uint32_t)(end - p));
		return SERPENS_EINVAL;
	}
	ps->first = cfg + IDS_HDR_LEN;
	ps->bytes = len - IDS_HDR_LEN;
	ps->n = n;
	ps->maxlen = maxlen;
	ps->nstates = nstates;
	/* Class 0 is every byte no pattern uses; when all 256 are used it is not needed. */
	uint32_t used = 0;
	for (uint32_t b = 0; b < 256; b++)
		used += seen[b];
	ps->nclasses = used == 256 ? 0 : 1;
	for (uint32_t b = 0; b < 256; b++)
		ps->cls[b] = seen[b] ? (uint8_t)ps->nclasses++ : 0;
	return 0;
}

/* ---- automaton build ---------------------------------------------------------------------- */

struct ids_build {
	struct serpens_ctx *ctx;
	int table;
	uint32_t set;
	uint32_t nclasses, row_bytes, rpc;
	const uint8_t *cls;
};

static uint32_t state_addr(const struct ids_build *B, uint32_t s)
{
	return (s / B->rpc) << IDS_CHUNK_SHIFT | (s % B->rpc) * B->row_bytes;
}

static uint32_t *row_at(uint32_t addr)
{
	uint32_t c = addr >> IDS_CHUNK_SHIFT;
	const uint8_t *base = c == build_chunk ? build_buf : chunk_ptr[c];
	return (uint32_t *)(base + (addr & IDS_CHUNK_MASK));
}

static int put_chunk(struct ids_build *B, uint32_t chunk, const void **stored)
{
	struct ids_key key = {.set = B->set, .chunk = chunk};
	void *where = NULL;
	int rc = B->ctx->api->put_state(B->ctx, B->table, &key, build_buf, &where);
	if (rc < 0)
		return rc;
	if (!where)
		where = B->ctx->api->get_state(B->ctx, B->table, &key);
	*stored = where;
	return where ? 0 : SERPENS_ENOENT;
}

/* Store the filled chunk and start the next one. */
static int flush_chunk(struct ids_build *B)
{
	int rc = put_chunk(B, 1 + build_chunk, (const void **)&chunk_ptr[build_chunk]);
	memset(build_buf, 0, sizeof(build_buf));
	build_chunk++;
	return rc;
}

/* The row of state s, which starts now (states come in increasing order). */
static int start_row(struct ids_build *B, uint32_t s, uint32_t **row)
{
	if (s / B->rpc != build_chunk) {
		int rc = flush_chunk(B);
		if (rc < 0)
			return rc;
	}
	*row = (uint32_t *)(build_buf + (s % B->rpc) * B->row_bytes);
	return 0;
}

/* Rows of all states of depth d >= 1; the rows of shallower states are complete. */
static int build_level(struct ids_build *B, const struct ids_patterns *ps, uint32_t d)
{
	const uint32_t nc = B->nclasses;
	int32_t parent = -1, rank = -1;
	uint32_t next_child = level_start[d + 1];
	uint32_t *row = NULL;
	const uint8_t *p = ps->first;

	for (uint32_t i = 0; i < ps->n; p += 1 + p[0], i++) {
		uint32_t l = p[0];
		const uint8_t *s = p + 1;
		if (l + 1 < d)
			continue;
		if (lcp[i] + 1u < d) /* a new (d-1)-byte prefix: the next state of depth d-1 */
			parent++;
		if (l < d)
			continue;
		if (lcp[i] < d) { /* a new d-byte prefix: the next state of depth d */
			uint32_t t = level_start[d] + (uint32_t)++rank, fail = 0;
			if (d > 1) { /* fail(t) = delta(fail(parent), last byte) */
				uint32_t pa = state_addr(B, level_start[d - 1] + (uint32_t)parent);
				uint32_t pfail = row_at(pa)[nc];
				fail = row_at(pfail)[B->cls[s[d - 1]]] & ~IDS_MATCH;
			}
			int rc = start_row(B, t, &row);
			if (rc < 0)
				return rc;
			memcpy(row, row_at(fail), nc * 4);
			row[nc] = fail;
		}
		if (l > d && lcp[i] < d + 1) { /* a new child of the current state */
			uint32_t k = B->cls[s[d]];
			uint32_t match = (l == d + 1 || (row[k] & IDS_MATCH)) ? IDS_MATCH : 0;
			row[k] = state_addr(B, next_child++) | match;
		}
	}
	return 0;
}

/* The root's row: its children, everything else back to the root. */
static int build_root(struct ids_build *B, const struct ids_patterns *ps)
{
	uint32_t *row, next_child = level_start[1];
	int rc = start_row(B, 0, &row);
	if (rc < 0)
		return rc;
	const uint8_t *p = ps->first;
	for (uint32_t i = 0; i < ps->n; p += 1 + p[0], i++)
		if (lcp[i] == 0)
			row[B->cls[p[1]]] = state_addr(B, next_child++) | (p[0] == 1 ? IDS_MATCH : 0);
	return 0;
}

static int build_automaton(struct ids_build *B, const struct ids_patterns *ps,
			   struct ids_automaton_hdr *h)
{
	int rc;

	/* States per depth: pattern i adds the prefixes of lengths lcp[i]+1 .. len. */
	memset(level_start, 0, sizeof(level_start));
	const uint8_t *p = ps->first;
	for (uint32_t i = 0; i < ps->n; p += 1 + p[0], i++)
		for (uint32_t d = lcp[i] + 1u; d <= p[0]; d++)
			level_start[d + 1]++;
	level_start[1] = 1; /* the root */
	for (uint32_t d = 1; d <= IDS_MAX_LEN + 1; d++)
		level_start[d] += level_start[d - 1];

	build_chunk = 0;
	memset(build_buf, 0, sizeof(build_buf));
	if ((rc = build_root(B, ps)) < 0)
		return rc;
	for (uint32_t d = 1; d <= ps->maxlen; d++)
		if ((rc = build_level(B, ps, d)) < 0)
			return rc;
	if ((rc = flush_chunk(B)) < 0)
		return rc;
	if (build_chunk != h->nchunks)
		return SERPENS_EINVAL; /* cannot happen: the counts above disagree with the build */
	build_chunk = UINT32_MAX;

	/* The header last: until it is there, no instance uses these chunks. */
	memset(build_buf, 0, sizeof(build_buf));
	memcpy(build_buf, h, sizeof(*h));
	const void *stored;
	return put_chunk(B, 0, &stored);
}

static void remember_shape(const struct ids_automaton_hdr *h)
{
	auto_set = h->fp[0];
	auto_chunks = h->nchunks;
	auto_row_bytes = h->row_bytes;
	auto_rows = h->nstates;
}

/* Is s a state of this automaton (a stream entry's, from shared memory)? */
static int valid_state(uint32_t s)
{
	uint32_t chunk = s >> IDS_CHUNK_SHIFT, off = s & IDS_CHUNK_MASK;
	if (chunk >= auto_chunks || off % auto_row_bytes)
		return 0;
	uint32_t row = chunk * (IDS_CHUNK / auto_row_bytes) + off / auto_row_bytes;
	return off / auto_row_bytes < IDS_CHUNK / auto_row_bytes && row < auto_rows;
}

/* Find the automaton of these patterns in the table, or build it. 1 built, 0 reused, <0. */
static int load_automaton(struct serpens_ctx *ctx, const struct ids_patterns *ps)
{
	const struct serpens_api *api = ctx->api;
	struct ids_automaton_hdr h;
	struct ids_build B = {.ctx = ctx};

	memset(&h, 0, sizeof(h));
	h.magic = IDS_AUTOMATON_MAGIC;
	/* Seeded with the layout version: a new layout gets new set ids, never a clash. */
	h.fp[0] = api->hash(ps->first, ps->bytes, (uint32_t)IDS_AUTOMATON_MAGIC);
	h.fp[1] = api->hash(ps->first, ps->bytes, (uint32_t)(IDS_AUTOMATON_MAGIC >> 32) ^ 0x5bd1e995u);
	h.npatterns = ps->n;
	h.nstates = ps->nstates;
	h.nclasses = ps->nclasses;
	h.row_bytes = (ps->nclasses + 1) * 4; /* transitions, then the failure state */
	h.rows_per_chunk = IDS_CHUNK / h.row_bytes;
	h.nchunks = (ps->nstates + h.rows_per_chunk - 1) / h.rows_per_chunk;
	memcpy(h.cls, ps->cls, 256);
	if (h.nchunks > IDS_MAX_CHUNKS) {
		api->log(ctx, SERPENS_LOG_ERR, "patterns: the automaton needs %u states x %u byte "
			 "classes = %u chunks of 16 KiB, at most %u", h.nstates, h.nclasses, h.nchunks,
			 IDS_MAX_CHUNKS);
		return SERPENS_ENOMEM;
	}

	int table = api->create_table(ctx, "automaton", SERPENS_GLOBAL | SERPENS_READ,
				      sizeof(struct ids_key), IDS_CHUNK, IDS_TABLE_CAPACITY);
	if (table < 0) {
		api->log(ctx, SERPENS_LOG_ERR, "state table \"automaton\": error %d", table);
		return table;
	}
	struct ids_key key = {.set = h.fp[0], .chunk = 0};
	const struct ids_automaton_hdr *old = api->get_state(ctx, table, &key);
	if (old && memcmp(old, &h, sizeof(h)) == 0) {
		uint32_t c = 0;
		for (; c < h.nchunks; c++) {
			key.chunk = 1 + c;
			if (!(chunk_ptr[c] = api->get_state(ctx, table, &key)))
				break;
		}
		if (c == h.nchunks) {
			cls_map = old->cls;
			remember_shape(&h);
			return 0;
		}
		api->log(ctx, SERPENS_LOG_WARN, "automaton: chunk %u missing, rebuilding", c + 1);
	} else if (old && (old->magic != h.magic || old->fp[1] != h.fp[1])) {
		/* Another pattern set (or layout) hashed to the same id: its chunks are in use. */
		api->log(ctx, SERPENS_LOG_ERR, "automaton: set id %08x is taken by another pattern set",
			 h.fp[0]);
		return SERPENS_EEXIST;
	}

	B.table = table;
	B.set = h.fp[0];
	B.nclasses = h.nclasses;
	B.row_bytes = h.row_bytes;
	B.rpc = h.rows_per_chunk;
	B.cls = ps->cls;
	int rc = build_automaton(&B, ps, &h);
	if (rc < 0) {
		build_chunk = UINT32_MAX;
		api->log(ctx, SERPENS_LOG_ERR, "automaton: storing %u chunks failed: error %d%s",
			 h.nchunks + 1, rc, rc == SERPENS_ENOSPC ? " (table full: drop it to start "
			 "afresh)" : "");
		return rc;
	}
	key.chunk = 0;
	old = api->get_state(ctx, table, &key);
	if (!old)
		return SERPENS_ENOENT;
	cls_map = old->cls;
	remember_shape(&h);
	return 1;
}

/* ---- init ---------------------------------------------------------------------------------- */

static int has_state_api(const struct serpens_api *api)
{
	return api->size >= offsetof(struct serpens_api, put_state) + sizeof(api->put_state) &&
	       api->create_table && api->get_state && api->put_state;
}

static int init(struct serpens_ctx *ctx, const void *config, uint32_t len)
{
	const struct serpens_api *api = ctx->api;
	struct ids_patterns ps;
	int rc;

	if ((rc = parse_config(ctx, config, len, &ps)) < 0)
		return rc;
	if (!has_state_api(api)) {
		api->log(ctx, SERPENS_LOG_ERR, "the runtime has no state tables (ABI minor 1)");
		return IDS_ENOSYS;
	}
	action = ((const uint8_t *)config)[4];
	c_scanned = api->counter_register(ctx, "scanned");
	c_bytes = api->counter_register(ctx, "bytes");
	c_matches = api->counter_register(ctx, "matches");
	c_alerts = api->counter_register(ctx, "alerts");
	c_dropped = api->counter_register(ctx, "dropped");
	c_malformed = api->counter_register(ctx, "malformed");
	c_uninspected = api->counter_register(ctx, "uninspected");
	c_built = api->counter_register(ctx, "automaton_built");
	c_gaps = api->counter_register(ctx, "stream_gaps");
	c_stream_full = api->counter_register(ctx, "stream_full");
	if (c_stream_full < 0)
		return SERPENS_ENOSPC;
	stream_mode = ((const uint8_t *)config)[5];
	if (stream_mode == STREAM_TCP && (!api->get_state_bulk || !api->delete_state)) {
		api->log(ctx, SERPENS_LOG_ERR, "stream: tcp needs get_state_bulk and delete_state "
			 "(ABI minor 1)");
		return IDS_ENOSYS;
	}
	if (stream_mode == STREAM_TCP) {
		t_streams = api->create_table(ctx, "streams", SERPENS_PER_FLOW | SERPENS_READ |
					      SERPENS_WRITE, sizeof(struct serpens_flow),
					      sizeof(struct ids_stream), IDS_STREAM_FLOWS);
		if (t_streams < 0) {
			api->log(ctx, SERPENS_LOG_ERR, "state table \"streams\": error %d", t_streams);
			return t_streams;
		}
	}
	suspicious_port = ctx->nports >= 2 ? 1 : 0;
	if (action == ACTION_ALERT && !suspicious_port)
		api->log(ctx, SERPENS_LOG_WARN, "action alert with port 1 not wired: suspicious packets "
			 "are only counted");

	if ((rc = load_automaton(ctx, &ps)) < 0)
		return rc;
	serpens_count(ctx, c_built, (uint64_t)rc);
	return 0;
}

/* ---- scanning ------------------------------------------------------------------------------ */

/* One byte: the transition of state s (an address) on byte c. */
#define STEP(chunks, cls, s, c)                                                                \
	(*(const uint32_t *)((chunks)[(s) >> IDS_CHUNK_SHIFT] + ((s) & IDS_CHUNK_MASK) +         \
			     ((uint32_t)(cls)[c] << 2)))

/* Continue in state *s over n bytes: 1 if a pattern ends in them (*s: where it stopped). */
static int scan_from(uint32_t *s, const uint8_t *p, uint32_t n)
{
	const uint8_t *const *chunks = chunk_ptr;
	const uint8_t *cls = cls_map;
	uint32_t st = *s;
	for (uint32_t k = 0; k < n; k++) {
		st = STEP(chunks, cls, st, p[k]);
		if (st & IDS_MATCH) {
			*s = st;
			return 1;
		}
	}
	*s = st;
	return 0;
}

struct ids_job {
	const uint8_t *p;
	uint32_t n;
	uint32_t s;     /* automaton state where the scan stands */
	uint8_t i;      /* packet */
	uint8_t match;
	/* TCP streams */
	uint8_t stream;  /* a segment of a tracked flow */
	uint8_t round;   /* its place among the batch's segments of its flow (0: first) */
	int8_t prev;     /* the job of its flow's segment before it in the batch (-1: none) */
	uint8_t last;    /* no later segment of its flow in the batch */
	uint32_t seq;    /* its sequence number */
	uint32_t next;   /* the sequence number after it */
	const struct serpens_flow *flow;
};

/* Scan jobs four at a time: four independent chains of loads keep the core busy. */
static void scan_jobs(struct ids_job *jobs, uint32_t nj)
{
	const uint8_t *const *chunks = chunk_ptr;
	const uint8_t *cls = cls_map;
	struct ids_job *lane[4] = {NULL, NULL, NULL, NULL};
	uint32_t next = 0;

	for (;;) {
		uint32_t active = 0;
		for (int l = 0; l < 4; l++) {
			if (!lane[l] && next < nj)
				lane[l] = &jobs[next++];
			active += lane[l] != NULL;
		}
		if (active < 4) { /* the tail: one at a time */
			for (int l = 0; l < 4; l++)
				if (lane[l])
					lane[l]->match = (uint8_t)scan_from(&lane[l]->s, lane[l]->p,
									    lane[l]->n);
			return;
		}
		uint32_t m = lane[0]->n;
		for (int l = 1; l < 4; l++)
			m = lane[l]->n < m ? lane[l]->n : m;
		const uint8_t *p0 = lane[0]->p, *p1 = lane[1]->p, *p2 = lane[2]->p, *p3 = lane[3]->p;
		uint32_t s0 = lane[0]->s, s1 = lane[1]->s, s2 = lane[2]->s, s3 = lane[3]->s, k = 0;
		while (k < m) {
			s0 = STEP(chunks, cls, s0, p0[k]);
			s1 = STEP(chunks, cls, s1, p1[k]);
			s2 = STEP(chunks, cls, s2, p2[k]);
			s3 = STEP(chunks, cls, s3, p3[k]);
			k++;
			if ((s0 | s1 | s2 | s3) & IDS_MATCH)
				break;
		}
		uint32_t st[4] = {s0, s1, s2, s3};
		for (int l = 0; l < 4; l++) {
			struct ids_job *j = lane[l];
			j->p += k;
			j->n -= k;
			j->s = st[l];
			if (st[l] & IDS_MATCH)
				j->match = 1;
			if (j->match || j->n == 0)
				lane[l] = NULL;
		}
	}
}

static void suspicious(struct serpens_ctx *ctx, struct serpens_batch *b, uint32_t i)
{
	if (action == ACTION_DROP)
		serpens_drop(b, i);
	else
		serpens_forward(ctx, b, i, suspicious_port);
}

/* ---- TCP streams ----------------------------------------------------------------------- */

/* Packet f's TCP sequence number and flags (0: not TCP). */
static int tcp_segment(const uint8_t *f, const struct serpens_hdrs *h, uint32_t *seq,
		       uint8_t *flags)
{
	if (h->flow.proto != 6 || !h->l4_off) /* IPPROTO_TCP, its header checked by the parser */
		return 0;
	const uint8_t *t = f + h->l4_off;
	*seq = (uint32_t)t[4] << 24 | (uint32_t)t[5] << 16 | (uint32_t)t[6] << 8 | t[7];
	*flags = t[13];
	return 1;
}

static int same_flow(const struct serpens_flow *a, const struct serpens_flow *b)
{
	return a->sport == b->sport && a->dport == b->dport && memcmp(a, b, sizeof(*a)) == 0;
}

/* Where each tracked segment's scan starts. The first of its flow in the batch: its flow's
 * entry (looked up for all of them at once, entry[] by job) when the segment carries the
 * sequence number the entry expects; a later one: after its flow's previous segment, scanned
 * in an earlier round (scan_rounds()). Returns the rounds the batch needs. */
static uint32_t stream_starts(struct serpens_ctx *ctx, struct ids_job *jobs, uint32_t nj,
			      struct ids_stream **entry)
{
	const void *keys[SERPENS_BURST];
	void *found[SERPENS_BURST];
	uint8_t firsts[SERPENS_BURST];
	uint32_t nf = 0, rounds = 1, gaps = 0;

	for (uint32_t j = 0; j < nj; j++) {
		entry[j] = NULL;
		if (!jobs[j].stream)
			continue;
		for (int k = (int)j - 1; k >= 0; k--) {
			if (jobs[k].stream && same_flow(jobs[k].flow, jobs[j].flow)) {
				jobs[j].prev = (int8_t)k;
				jobs[j].round = (uint8_t)(jobs[k].round + 1);
				jobs[k].last = 0;
				rounds = jobs[j].round + 1u > rounds ? jobs[j].round + 1u : rounds;
				break;
			}
		}
		if (jobs[j].prev < 0) {
			keys[nf] = jobs[j].flow;
			firsts[nf++] = (uint8_t)j;
		}
	}
	if (nf)
		ctx->api->get_state_bulk(ctx, t_streams, keys, nf, found);
	for (uint32_t k = 0; k < nf; k++) {
		struct ids_job *j = &jobs[firsts[k]];
		struct ids_stream *st = found[k];
		entry[firsts[k]] = st;
		if (!st)
			continue; /* a flow not seen yet: from the start */
		if (st->set == auto_set && st->next_seq == j->seq && valid_state(st->state))
			j->s = st->state;
		else
			gaps++;
	}
	for (uint32_t j = 0; j < nj; j++) /* a later segment's entry is its first one's */
		if (jobs[j].prev >= 0)
			entry[j] = entry[jobs[j].prev];
	serpens_count(ctx, c_gaps, gaps);
	return rounds;
}

/* Scan the batch, round by round when one flow has several segments in it: each round holds
 * at most one segment of a flow and starts it where the one before ended. */
static void scan_rounds(struct serpens_ctx *ctx, struct ids_job *jobs, uint32_t nj,
			uint32_t rounds)
{
	struct ids_job part[SERPENS_BURST];
	uint8_t where[SERPENS_BURST];
	uint32_t gaps = 0;

	if (rounds == 1) {
		scan_jobs(jobs, nj);
		return;
	}
	for (uint32_t r = 0; r < rounds; r++) {
		uint32_t np = 0;
		for (uint32_t j = 0; j < nj; j++) {
			if (jobs[j].round != r)
				continue;
			if (r) {
				const struct ids_job *before = &jobs[jobs[j].prev];
				if (!before->match && before->next == jobs[j].seq)
					jobs[j].s = before->s;
				else if (!before->match)
					gaps++;
			}
			where[np] = (uint8_t)j;
			part[np++] = jobs[j];
		}
		scan_jobs(part, np);
		for (uint32_t k = 0; k < np; k++)
			jobs[where[k]] = part[k];
	}
	serpens_count(ctx, c_gaps, gaps);
}

/* Keep where each tracked flow's last segment of the batch left its scan. */
static void stream_save(struct serpens_ctx *ctx, const struct ids_job *jobs, uint32_t nj,
			struct ids_stream **entry)
{
	uint32_t full = 0;
	for (uint32_t j = 0; j < nj; j++) {
		if (!jobs[j].stream || !jobs[j].last)
			continue;
		struct ids_stream v = {.state = jobs[j].match ? 0 : jobs[j].s, .next_seq = jobs[j].next,
				       .set = auto_set};
		if (entry[j])
			*entry[j] = v;
		else if (ctx->api->put_state(ctx, t_streams, jobs[j].flow, &v, NULL) == SERPENS_ENOSPC)
			full++;
	}
	serpens_count(ctx, c_stream_full, full);
}

/* ---- processing --------------------------------------------------------------------------- */

static void process(struct serpens_ctx *ctx, struct serpens_batch *b)
{
	struct ids_job jobs[SERPENS_BURST];
	struct ids_stream *entry[SERPENS_BURST];
	const struct serpens_flow *ends[SERPENS_BURST];
	uint32_t nj = 0, nends = 0, scanned = 0, bytes = 0;

	for (uint32_t k = 0; k < b->count; k++) {
		uint32_t i = b->idx[k];
		const uint8_t *f = b->data[i];
		const struct serpens_hdrs *h;
		uint32_t off, n, seq = 0;
		uint8_t flags = 0, tcp = 0;
		switch (serpens_hdrs(ctx, b, i, &h)) { /* parsed once for the SFC */
		case SERPENS_PARSE_OK:
			off = h->payload_off;
			n = h->payload_len;
			if (t_streams >= 0 && tcp_segment(f, h, &seq, &flags)) {
				tcp = 1;
				if (flags & (TCP_FIN | TCP_RST))
					ends[nends++] = &h->flow;
			}
			break;
		case SERPENS_PARSE_FRAGMENT: /* no L4 header: the bytes after the fixed IP header */
			off = h->l3_off + (h->family == 4 ? (f[h->l3_off] & 0xFu) * 4u : 40u);
			n = off < h->l3_off + h->l3_len ? h->l3_off + h->l3_len - off : 0;
			break;
		case SERPENS_PARSE_NON_IP:
			serpens_count(ctx, c_uninspected, 1);
			continue;
		default:
			serpens_count(ctx, c_malformed, 1);
			suspicious(ctx, b, i);
			continue;
		}
		scanned++;
		bytes += n;
		if (!n)
			continue;
		jobs[nj] = (struct ids_job){.p = f + off, .n = n, .i = (uint8_t)i, .prev = -1,
					    .last = 1};
		if (tcp) {
			jobs[nj].stream = 1;
			jobs[nj].seq = seq;
			jobs[nj].next = seq + n + !!(flags & TCP_SYN) + !!(flags & TCP_FIN);
			jobs[nj].flow = &h->flow;
		}
		nj++;
	}
	serpens_count(ctx, c_scanned, scanned);
	serpens_count(ctx, c_bytes, bytes);

	if (nj) {
		uint32_t rounds = t_streams >= 0 ? stream_starts(ctx, jobs, nj, entry) : 1;
		scan_rounds(ctx, jobs, nj, rounds);
		uint32_t matches = 0;
		for (uint32_t j = 0; j < nj; j++) {
			if (!jobs[j].match)
				continue;
			matches++;
			suspicious(ctx, b, jobs[j].i);
		}
		serpens_count(ctx, c_matches, matches);
		serpens_count(ctx, action == ACTION_DROP ? c_dropped : c_alerts, matches);
		if (t_streams >= 0)
			stream_save(ctx, jobs, nj, entry);
	}
	for (uint32_t k = 0; k < nends; k++) /* the flow ended: its entry goes (absent: fine) */
		ctx->api->delete_state(ctx, t_streams, ends[k]);
}

SERPENS_NF(.name = "ids", .init = init, .process = process,
	   .hdrs = SERPENS_HDRS_KEPT /* never writes a packet */);
