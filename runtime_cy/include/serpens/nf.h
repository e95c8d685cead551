/*
 * serpens/nf.h -- the Serpens network-function ABI (paper §III-A, §III-C, §IV-A).
 *
 * An NF is one freestanding C file compiled by Serpens into a position-independent image:
 * no libc, no thread-local storage, no constructors, no undefined symbols. Its only export is
 * nf_entry(), declared with SERPENS_NF(); everything it may call comes through the versioned
 * context table `ctx->api`. memcpy/memset/memcmp are linked into every NF by Serpens.
 *
 * Life of an instance: the runtime maps the image (text shared, data copy-on-write), calls
 * init(ctx, config, len) once, then process(ctx, batch) for every batch that holds packets
 * labelled for this NF, and fini(ctx) before the image is unmapped. An NF's globals are private
 * to its instance and step (an SFC using one NF twice maps two images); state that must outlive
 * an instance lives in state tables (ABI minor 1).
 *
 * Labels (paper Fig. 6): every packet of a batch carries a label naming the next step of the
 * SFC. Before process() runs, the chainer has set the label of each packet given to the NF to
 * ctx->next[0] (its default output), so an NF that does nothing forwards. The NF may instead
 * send a packet to another output port (serpens_forward), out of the SFC (SERPENS_LABEL_OUT)
 * or drop it (serpens_drop). Any other label is treated as a drop and counted by the runtime.
 *
 * Cost: one indirect call per NF per batch; the table calls below are plain C calls.
 *
 * Example -- drop everything that is not IPv4, count what was dropped:
 *
 *     #include <serpens/nf.h>
 *     static int dropped;
 *     static int init(struct serpens_ctx *c, const void *cfg, uint32_t n)
 *     { dropped = c->api->counter_register(c, "non_ipv4"); return dropped < 0 ? dropped : 0; }
 *     static void process(struct serpens_ctx *c, struct serpens_batch *b)
 *     {
 *         for (uint32_t k = 0; k < b->count; k++) {
 *             uint32_t i = b->idx[k];
 *             const struct serpens_hdrs *h;
 *             if (serpens_hdrs(c, b, i, &h) != SERPENS_PARSE_OK || h->family != 4) {
 *                 serpens_drop(b, i);
 *                 serpens_count(c, dropped, 1);
 *             }
 *         }
 *     }
 *     SERPENS_NF(.name = "ipv4_only", .init = init, .process = process, .hdrs = SERPENS_HDRS_KEPT);
 */
#ifndef SERPENS_NF_H
#define SERPENS_NF_H

#include <stddef.h>
#include <stdint.h>

#define SERPENS_ABI_MAJOR 1
#define SERPENS_ABI_MINOR 3 /* 1: state tables; 2: get_state_multi; 3: parse once */

#define SERPENS_BURST 32          /* packets per batch, at most */
#define SERPENS_MAX_PORTS 8       /* output ports of one NF */
#define SERPENS_MAX_COUNTERS 32   /* named counters of one NF */
#define SERPENS_COUNTER_NAME 24   /* bytes, including the terminating NUL */

typedef uint16_t serpens_label_t;
#define SERPENS_LABEL_OUT 0xFFFEu  /* leave the SFC: the router transmits it */
#define SERPENS_LABEL_DROP 0xFFFFu /* the router frees it */

/* ---- parsed headers ---------------------------------------------------------------------- */

enum serpens_parse_result {
	SERPENS_PARSE_OK = 0,
	SERPENS_PARSE_NON_IP = 1,     /* not IPv4/IPv6 (ARP, LLDP, ...): only L2 fields are set */
	SERPENS_PARSE_TRUNCATED = 2,  /* a header runs past the end of the frame */
	SERPENS_PARSE_BAD_HEADER = 3, /* bad IP version, IHL < 5, total length < header, ... */
	SERPENS_PARSE_FRAGMENT = 4,   /* a non-first IP fragment: L3 fields set, no L4 */
};

#define SERPENS_HDR_FRAGMENT 0x01 /* first fragment (MF set): L4 header present */
#define SERPENS_HDR_VLAN 0x02     /* one or two 802.1Q/802.1ad tags were skipped */
#define SERPENS_HDR_IPOPTS 0x04   /* IPv4 options or IPv6 extension headers were skipped */

/* A flow's 5-tuple. IPv4 addresses sit in the first 4 bytes of src/dst, the rest is zero, so
 * a struct that was memset to 0 first can be hashed and compared as plain bytes. Ports are in
 * network byte order; for ICMP echo, sport holds the identifier and dport is 0. */
struct serpens_flow {
	uint8_t src[16];
	uint8_t dst[16];
	uint16_t sport;
	uint16_t dport;
	uint8_t proto;  /* IPPROTO_* */
	uint8_t family; /* 4 or 6 */
	uint8_t pad[2];
};
_Static_assert(sizeof(struct serpens_flow) == 40, "flow key is 40 bytes");

/* One lookup of get_state_multi: n (<= SERPENS_BURST) keys in one table, as get_state_bulk. */
struct serpens_lookup {
	int table;
	uint32_t n;
	const void *const *keys;
	void **values; /* out: the value for keys[i], or NULL */
};

struct serpens_hdrs {
	uint16_t ethertype;   /* after VLAN tags, host order */
	uint16_t l3_off;      /* offset of the IP header */
	uint16_t l4_off;      /* offset of the TCP/UDP/ICMP header (0 if none) */
	uint16_t payload_off; /* offset of the L4 payload (0 if none) */
	uint32_t payload_len; /* bytes of L4 payload, bounded by the IP length and the frame */
	uint32_t l3_len;      /* IP total length as the header states, checked against the frame */
	uint8_t family;       /* 4, 6, or 0 when not IP */
	uint8_t flags;        /* SERPENS_HDR_* */
	uint8_t pad[2];
	struct serpens_flow flow;
};

/* ---- batches ----------------------------------------------------------------------------- */

#define SERPENS_PARSE_STALE 0xFFu /* parse[i]: hdrs[i] not parsed yet, or out of date */

/*
 * One batch as an NF sees it. data[i]/len[i] describe packet i (Ethernet frame first); the
 * NF may rewrite bytes in place. Use api->pkt_prepend/pkt_adj/pkt_append/pkt_trim to change the
 * length: they keep data[i]/len[i] up to date. idx[0..count) lists the packets for this NF.
 *
 * Parsed once per packet for the whole SFC (ABI minor 3): hdrs[i] holds packet i's headers
 * as api->parse found them and parse[i] the parse result, or SERPENS_PARSE_STALE when nobody
 * has parsed the packet yet or its headers changed since. Read them with serpens_hdrs() (it
 * parses on first use, so the first NF that wants headers parses and the NFs after it read
 * the result); never write them. An NF that changes header bytes in place (addresses, ports,
 * a tunnel's header) calls serpens_hdrs_invalidate(b, i) before it returns, so the NFs after
 * it never read stale fields; pkt_prepend/pkt_adj/pkt_append/pkt_trim invalidate by
 * themselves. NFs that do not say they follow this rule (serpens_nf_ops.hdrs, below), among
 * them every NF built before minor 3, have all their packets invalidated after process().
 * State lookups keyed by a packet's parsed flow (&h->flow itself, not a copy, as the key of
 * get_state_bulk/get_state_multi) hash it once for the whole SFC too.
 */
struct serpens_batch {
	uint32_t n;                           /* packets in the whole batch */
	uint32_t count;                       /* packets labelled for the NF being called */
	uint64_t now_ns;                      /* monotonic time the batch was taken, ns */
	uint8_t idx[SERPENS_BURST];           /* positions of this NF's packets */
	serpens_label_t labels[SERPENS_BURST];
	uint32_t len[SERPENS_BURST];
	uint8_t *data[SERPENS_BURST];
	void *pkt[SERPENS_BURST];             /* runtime's handle; opaque to NFs */
	/* ---- ABI minor 3: parse once per packet (see above; use serpens_hdrs()) ---- */
	uint8_t parse[SERPENS_BURST];         /* serpens_parse_result of hdrs[i], or STALE */
	struct serpens_hdrs hdrs[SERPENS_BURST];
	/* the runtime's: bit i set = flow_hash[i] is the state-table hash of hdrs[i].flow, so a
	 * packet's flow is hashed once for all the NFs that look it up (get_state_bulk) */
	uint32_t flow_hashed;
	uint32_t flow_hash[SERPENS_BURST];
};

/* ---- the context table ------------------------------------------------------------------- */

enum serpens_log_level { SERPENS_LOG_ERR = 0, SERPENS_LOG_WARN, SERPENS_LOG_INFO, SERPENS_LOG_DEBUG };

struct serpens_ctx;

/*
 * Imports. Check api->abi_major == SERPENS_ABI_MAJOR (the runtime refuses a mismatch anyway);
 * members added by a later minor version sit at the end and are present when
 * api->size covers them.
 */
struct serpens_api {
	uint16_t abi_major;
	uint16_t abi_minor;
	uint32_t size; /* sizeof(struct serpens_api) as the runtime knows it */

	/* Packets. Each returns the new start (prepend/adj) or the appended bytes (append), or
	 * NULL without changing the packet when there is no head- or tailroom / not enough data. */
	uint8_t *(*pkt_prepend)(struct serpens_batch *b, uint32_t i, uint32_t n);
	uint8_t *(*pkt_adj)(struct serpens_batch *b, uint32_t i, uint32_t n);
	uint8_t *(*pkt_append)(struct serpens_batch *b, uint32_t i, uint32_t n);
	int (*pkt_trim)(struct serpens_batch *b, uint32_t i, uint32_t n); /* 0 or -1 */

	/* Headers: parse Ethernet [+ VLAN] + IPv4/IPv6 [+ options/extension headers] + TCP/UDP/
	 * ICMP/ICMPv6 of a frame into *h. Never reads beyond len. Returns serpens_parse_result. */
	int (*parse)(const uint8_t *frame, uint32_t len, struct serpens_hdrs *h);

	/* Checksums (RFC 1071 / RFC 1624). Checksum values are 16-bit fields exactly as stored in
	 * a header (network byte order). csum_partial adds the big-endian 16-bit words of data to
	 * an accumulator (start with 0); csum_fold turns an accumulator into a checksum field.
	 * csum_update applies RFC 1624 eqn. 3 for a field of even length changing from old to
	 * new bytes and returns the new checksum field. */
	uint32_t (*csum_partial)(const void *data, uint32_t len, uint32_t sum);
	uint16_t (*csum_fold)(uint32_t sum);
	uint16_t (*csum_update)(uint16_t csum, const void *old_bytes, const void *new_bytes, uint32_t len);
	/* Full L4 checksum (TCP/UDP/ICMPv6 with pseudo-header, ICMPv4 without) of a parsed frame,
	 * as the value to store in the header (the header's own checksum field is skipped). */
	uint16_t (*l4_csum)(const uint8_t *frame, const struct serpens_hdrs *h);

	/* Hash: 32-bit, fast (CRC32-C based), not cryptographic. Same input, same value in
	 * every process and on every server. */
	uint32_t (*hash)(const void *key, uint32_t len, uint32_t seed);

	/* Monotonic clock in nanoseconds (TSC based; b->now_ns is cheaper inside process()). */
	uint64_t (*now_ns)(void);

	/* printf-style log line tagged with the NF and instance; rate-limited per instance
	 * (burst 20, then 10 lines/s; suppressed lines are counted and reported). */
	void (*log)(struct serpens_ctx *ctx, int level, const char *fmt, ...)
		__attribute__((format(printf, 3, 4)));

	/* Named counters, readable outside the NF. Register in init(); returns an id for
	 * serpens_count(), the existing id for a name already registered, or -1 when the NF has
	 * SERPENS_MAX_COUNTERS already or the name is empty/too long. */
	int (*counter_register)(struct serpens_ctx *ctx, const char *name);

	/* ---- ABI minor 1: state tables (paper §III-B, §IV-A Fig. 8) -------------------------
	 * A table lives in shared memory owned by the node's state manager, not in the instance:
	 * it outlives every instance (scale to zero) and is shared by all instances of the NF on
	 * the node. Keys and values have fixed sizes; keys are compared as bytes (memset padding).
	 * Readers never lock. Per-flow entries must be written only by the instance that owns the
	 * flow (the router pins flows to instances). Values are returned as pointers into the
	 * table; a pointer stays valid until its entry is deleted. Errors are negative
	 * SERPENS_E* codes. */

	/* Create the table `name` of this NF, or open it when it exists (a restarted instance
	 * finds its state again): flags are SERPENS_PER_FLOW or SERPENS_GLOBAL, with
	 * SERPENS_READ and/or SERPENS_WRITE; SERPENS_GLOBAL|SERPENS_WRITE also takes exactly one
	 * of SERPENS_RELEASE / SERPENS_EVENTUAL. Call in init(). Returns a table id >= 0;
	 * SERPENS_EEXIST if a table of that name exists with other sizes or flags. */
	int (*create_table)(struct serpens_ctx *ctx, const char *name, uint32_t flags,
			    uint32_t key_size, uint32_t value_size, uint32_t capacity);
	/* The value stored for key, or NULL. */
	void *(*get_state)(struct serpens_ctx *ctx, int table, const void *key);
	/* n lookups hashed and prefetched together (n <= SERPENS_BURST): values[i] is the value
	 * for keys[i] or NULL. Returns how many were found. */
	uint32_t (*get_state_bulk)(struct serpens_ctx *ctx, int table, const void *const *keys,
				   uint32_t n, void **values);
	/* Insert or overwrite; *stored (if not NULL) gets the value's place in the table.
	 * SERPENS_ENOSPC when the table holds `capacity` entries: nothing is overwritten. */
	int (*put_state)(struct serpens_ctx *ctx, int table, const void *key, const void *value,
			 void **stored);
	/* Remove a per-flow entry: SERPENS_ENOENT if absent, SERPENS_EPERM on a global table. */
	int (*delete_state)(struct serpens_ctx *ctx, int table, const void *key);
	/* Atomically add delta to the first 8 bytes (uint64_t) of key's value in a
	 * SERPENS_GLOBAL|SERPENS_WRITE table, creating the entry as zeros first; returns the
	 * value before the addition in *before. A shared counter no two instances can race on
	 * (e.g. ESP sequence numbers: take a block of 32 per batch). */
	int (*state_fetch_add)(struct serpens_ctx *ctx, int table, const void *key, uint64_t delta,
			       uint64_t *before);
	/* SERPENS_GLOBAL|SERPENS_WRITE|SERPENS_EVENTUAL tables: get/put/get_bulk act on this
	 * instance's replica, which starts empty and holds the instance's contributions since
	 * the last merge; the runtime merges replicas into the shared table every period (default
	 * 100 ms, set by timer; key is reserved, pass NULL), before the instance sleeps, and when
	 * it stops. trigger merges now. The merge is ops->merge if the NF has one, else adding
	 * the value's uint64_t words. state_fetch_add always acts on the shared value. Readers
	 * outside (the state manager) see the shared table. */
	int (*timer)(struct serpens_ctx *ctx, int table, const void *key, uint64_t period_ns);
	/* Eventual tables: merge now. Release tables: see below. */
	int (*trigger)(struct serpens_ctx *ctx, int table, const void *key);
	/* SERPENS_GLOBAL|SERPENS_WRITE|SERPENS_RELEASE tables hold a divisible resource per key
	 * (a pool of ports, a budget), split among the instances (paper §III-D2, Fig. 9):
	 * - put_state in init() creates the shared pool for a key if it does not exist yet
	 *   (the first instance ever; later ones find it);
	 * - get_state/get_state_bulk return this instance's share of key, split off the pool
	 *   (ops->split, default: take half of each uint64_t word, rounded up) on first use;
	 *   NULL if the pool has no such key. The share is the instance's alone: no locks, no
	 *   atomics. put_state outside init() overwrites the share;
	 * - trigger(table, key) when the share runs out: the share goes back to the pool
	 *   (ops->merge, default: add the words), every other running instance is asked to give
	 *   its shares back at its next batch, and a new share is split off what the pool holds;
	 * - shares go back to the pool when an instance sleeps or stops, so idle instances hold
	 *   nothing;
	 * - timer(table, NULL, period) rebalances every period as trigger does: the update of
	 *   paper §III-D2 is this give-back-and-split, with the NF's merge and split. */

	/* ---- ABI minor 2 ------------------------------------------------------------------------
	 * Several get_state_bulk whose keys do not depend on each other's answers (a flow's and
	 * its host's entries), in one call: the same as calling get_state_bulk for each in turn,
	 * except that a state store across a socket (the benchmarks' Redis baselines) answers them
	 * in one round trip. At most 16 lookups. Returns how many keys were found in all. */
	uint32_t (*get_state_multi)(struct serpens_ctx *ctx, struct serpens_lookup *lookups,
				    uint32_t nlookups);
};

/* Table flags. */
#define SERPENS_PER_FLOW 0x01u
#define SERPENS_GLOBAL 0x02u
#define SERPENS_READ 0x04u
#define SERPENS_WRITE 0x08u
#define SERPENS_RELEASE 0x10u
#define SERPENS_EVENTUAL 0x20u
/* With SERPENS_PER_FLOW: the value begins with the struct serpens_flow the entry belongs to,
 * the key being something else (a reverse mapping: NAT's external (ip, port) -> flow). A move
 * of some of a server's flows (by the gateway's slots) takes such entries by that flow; a
 * per-flow table keyed neither by a flow nor so moves only with all of a server's flows.
 * An entry's flow must not change in place: delete the entry and put it again (a move that
 * read the table before sees a put, never an overwrite). */
#define SERPENS_FLOW_VALUE 0x40u

#define SERPENS_MAX_TABLES 8 /* per NF */

/* Error codes of the state API (negative errno values). */
#define SERPENS_EPERM (-1)
#define SERPENS_ENOENT (-2)
#define SERPENS_ENOMEM (-12)
#define SERPENS_EEXIST (-17)
#define SERPENS_EINVAL (-22)
#define SERPENS_ENOSPC (-28)

/* Per NF, per instance. Written by the runtime before init(); read-only for the NF except
 * `priv` and, through serpens_count(), `counters`. */
struct serpens_ctx {
	const struct serpens_api *api;
	uint64_t *counters;                        /* SERPENS_MAX_COUNTERS values */
	void *priv;                                /* the NF's own */
	uint32_t instance_id;                      /* unique among running instances of a node */
	uint16_t step;                             /* this NF's label in its SFC */
	uint16_t nports;                           /* output ports wired in the SFC (>= 1) */
	serpens_label_t next[SERPENS_MAX_PORTS];   /* label of each output port */
};

/* ---- the NF's exports -------------------------------------------------------------------- */

struct serpens_nf_ops {
	uint16_t abi_major; /* SERPENS_ABI_MAJOR when built (SERPENS_NF sets these) */
	uint16_t abi_minor;
	uint32_t size;      /* sizeof(struct serpens_nf_ops) when built */
	const char *name;
	/* 0 on success; a negative value refuses the start and is reported. */
	int (*init)(struct serpens_ctx *ctx, const void *config, uint32_t config_len);
	void (*process)(struct serpens_ctx *ctx, struct serpens_batch *b); /* required */
	void (*fini)(struct serpens_ctx *ctx);
	/* ABI minor 1, optional: fold one replica value into the shared value of an eventual
	 * table (see timer above; `into` is shared with other instances merging concurrently, so
	 * use atomics on it), or give a release share back to its pool (the pool is locked).
	 * NULL: add uint64_t words (atomically). */
	void (*merge)(struct serpens_ctx *ctx, int table, const void *key, void *into,
		      const void *from);
	/* ABI minor 1, optional: move part of a release table's pool into an (all-zero) share;
	 * the pool is locked. NULL: move half of each uint64_t word, rounded up. */
	void (*split)(struct serpens_ctx *ctx, int table, const void *key, void *pool, void *share);
	/* ABI minor 3: SERPENS_HDRS_KEPT promises that the NF calls serpens_hdrs_invalidate()
	 * for every packet whose header bytes it changes in place (or changes none): the parsed
	 * headers of its packets then stay valid for the NFs after it. 0 (and any NF built
	 * before minor 3): the chainer invalidates all of the NF's packets after process(). */
	uint32_t hdrs;
};

#define SERPENS_HDRS_KEPT 0x1u

#define SERPENS_NF(...)                                                                        \
	static const struct serpens_nf_ops serpens_nf_ops__ = {                                     \
		.abi_major = SERPENS_ABI_MAJOR, .abi_minor = SERPENS_ABI_MINOR,                          \
		.size = sizeof(struct serpens_nf_ops), __VA_ARGS__};                                     \
	__attribute__((visibility("default"))) const struct serpens_nf_ops *nf_entry(void)          \
	{                                                                                          \
		return &serpens_nf_ops__;                                                                \
	}

/* ---- inline helpers ---------------------------------------------------------------------- */

/* Send packet i to output port `port` (0 = default); an unwired port means drop. */
static inline void serpens_forward(const struct serpens_ctx *c, struct serpens_batch *b, uint32_t i,
				   uint32_t port)
{
	b->labels[i] = port < c->nports ? c->next[port] : SERPENS_LABEL_DROP;
}

static inline void serpens_drop(struct serpens_batch *b, uint32_t i)
{
	b->labels[i] = SERPENS_LABEL_DROP;
}

/* Packet i's parsed headers (*h) and parse result (serpens_parse_result), parsed at most once
 * per packet for the whole SFC: the first call for a packet parses it into b->hdrs[i], the
 * calls after it (this NF's or a later NF's) read what was parsed, until the packet's headers
 * are invalidated. *h is the runtime's: read it, never write it (copy the flow to change it). */
static inline int serpens_hdrs(const struct serpens_ctx *c, struct serpens_batch *b, uint32_t i,
			       const struct serpens_hdrs **h)
{
	uint32_t r = b->parse[i];
	if (r == SERPENS_PARSE_STALE) {
		r = (uint32_t)c->api->parse(b->data[i], b->len[i], &b->hdrs[i]);
		b->parse[i] = (uint8_t)r;
		b->flow_hashed &= ~(1u << i); /* a new flow: its hash is not known */
	}
	*h = &b->hdrs[i];
	return (int)r;
}

/* Packet i's header bytes changed in place (NAT's addresses and ports, a tunnel's outer
 * header): the next serpens_hdrs() for it parses again. Call after the last change. */
static inline void serpens_hdrs_invalidate(struct serpens_batch *b, uint32_t i)
{
	b->parse[i] = SERPENS_PARSE_STALE;
}

static inline void serpens_count(struct serpens_ctx *c, int id, uint64_t n)
{
	if ((unsigned)id < SERPENS_MAX_COUNTERS)
		c->counters[id] += n;
}

static inline uint16_t serpens_ntohs(uint16_t v) { return __builtin_bswap16(v); }
static inline uint16_t serpens_htons(uint16_t v) { return __builtin_bswap16(v); }
static inline uint32_t serpens_ntohl(uint32_t v) { return __builtin_bswap32(v); }
static inline uint32_t serpens_htonl(uint32_t v) { return __builtin_bswap32(v); }

/* Provided by Serpens in every NF image. -ffreestanding stops gcc from expanding these inline,
 * so route them through the builtins: fixed small sizes (keys, headers) become a few moves,
 * the rest still calls the linked functions. */
void *memcpy(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
#define memcpy(d, s, n) __builtin_memcpy((d), (s), (n))
#define memset(d, c, n) __builtin_memset((d), (c), (n))
#define memcmp(a, b, n) __builtin_memcmp((a), (b), (n))

#endif /* SERPENS_NF_H */
