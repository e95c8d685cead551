/*
 * nat -- NAPT44 (RFC 3022 network address and port translation, IPv4 only).
 *
 * Ports: one input, one output (port 0). Translated and untouched packets go on to port 0;
 * dropped packets are counted (see Counters).
 *
 * Direction. Each IPv4 packet is classified by its addresses, in this order:
 *   - outbound: the source lies in `internal` (CIDR). TCP, UDP and ICMP echo requests get a
 *     mapping (below); their source address and port (ICMP: identifier) are rewritten to the
 *     mapping's external pair. Other outbound protocols and ICMP types (echo replies, ICMP
 *     errors, GRE, ...) are dropped and counted "unsupported": forwarding them would leak
 *     internal addresses. A packet from `internal` to an external address is outbound too
 *     (no hairpinning), and so is a packet from `internal` to `internal` (a NAT on the border
 *     does not see those).
 *   - inbound: the destination is one of `external_ips`. TCP/UDP packets to an allocated
 *     (external ip, port) and ICMP echo replies to an allocated (external ip, identifier) are
 *     translated back: destination address and port (identifier) become the internal ones.
 *     Every other inbound packet (no mapping, wrong protocol, wrong remote end, ICMP errors,
 *     echo requests to the NAT, ...) is dropped and counted "no_mapping".
 *   - otherwise (source outside `internal`, destination not external) the packet is
 *     forwarded untouched and counted "not_internal" and "passthrough". Non-IP frames (ARP,
 *     LLDP, ...) and IPv6 are forwarded untouched and counted "passthrough" only.
 * Malformed frames (the parser says TRUNCATED or BAD_HEADER) are dropped and counted
 * "malformed". Non-first IPv4 fragments carry no ports and cannot be translated: those that
 * classify as outbound or inbound are dropped and counted "malformed" (the others pass
 * through). First fragments are translated like any packet (the incremental L4 checksum
 * update is valid for the whole datagram), but their later fragments are dropped: reassemble
 * before the NAT.
 *
 * Headers are read with serpens_hdrs() (parsed once per packet for the whole SFC); a packet
 * NAT rewrites has its parsed headers invalidated, so NFs after NAT see the translated ones.
 *
 * Checksums: the IPv4 header checksum and the TCP/UDP checksum (pseudo-header address, and
 * the port) are updated incrementally (RFC 1624 eqn. 3, inline); a UDP checksum of
 * 0 (none) stays 0 and an updated UDP checksum that comes out 0 is sent as 0xFFFF (RFC 768);
 * the ICMP checksum has no pseudo-header: only the identifier change is folded in. A packet
 * whose checksums were valid leaves with valid checksums; invalid ones stay invalid (nothing
 * is verified or recomputed). An outbound packet's deltas are its flow's (the old words are
 * its parsed source address and port), worked out once and kept with the mapping: an NF
 * before NAT that rewrites those bytes without invalidating the parsed headers (nf.h)
 * breaks its packets' checksums.
 *
 * Mappings (per-flow state tables, written by the instance that owns the flow):
 *   - "out": key = the internal 5-tuple (struct serpens_flow as the parser fills it, padding
 *     zero: internal source address and port / ICMP identifier, remote address and port (0
 *     for ICMP), protocol, family 4) -> {external ip (4), external port (network order, 2),
 *     0 (2), owner instance id (u32), the outbound rewrite's checksum deltas (u32, 0: not
 *     known yet; out_deltas), last_seen_ns (u64)}: 24 bytes.
 *   - "in": key = {external ip (4), external port (network order, 2), 0 (2)} -> the internal
 *     5-tuple (the "out" key; SERPENS_FLOW_VALUE: a move of some flows takes the entry with
 *     its flow). The pair alone is a sufficient key because the port pool is
 *     one bitmap per external IP shared by TCP, UDP and ICMP: a pair is held by at most one
 *     live flow, whatever its protocol. Protocol and remote end are checked against the
 *     stored tuple: an inbound packet is translated only if it has the flow's protocol and
 *     comes from the flow's remote address (and, for TCP/UDP, remote port) -- address-and-
 *     port-dependent filtering (RFC 4787 REQ-8 permits it); anything else is "no_mapping".
 * Mapping is endpoint-dependent (one pair per internal 5-tuple). The external IP of a new
 * flow is chosen by a hash of its internal source address (paired pooling, RFC 4787 REQ-2)
 * unless that IP's share has no free port; then the next IPs in configuration order.
 * Both tables hold `max_flows` entries; a new flow that finds either full is dropped and
 * counted "table_full" (nothing is evicted; its port goes back to the share).
 *
 * Port pool (global/write state table "ports", RELEASE consistency, paper §III-D2 Fig. 9):
 * key = external IP (4 bytes), value = 8 KiB bitmap of free ports: bit p (bit p % 64 of the
 * little-endian uint64_t word p / 64) set = port p free. TCP/UDP ports and ICMP identifiers
 * come from the same space. init() puts the full bitmap of `port_range` for each external IP,
 * which creates the pool only when it does not exist yet (the first instance ever; later
 * instances and restarts keep the pool and with it every live mapping's port). The runtime
 * splits the pool into per-instance shares with this NF's ops->split (move half of the pool's
 * set bits, rounded up, into the share) and gives shares back with ops->merge (OR the share
 * into the pool). A new flow takes a bit from this instance's share (get_state: no locks),
 * round robin per external IP (the search starts after the port taken last, so a port that
 * just came back is reused as late as possible).
 * When no external IP's share has a free port the NF calls trigger() on each external IP (its
 * share goes back, the other instances are asked to give theirs back at their next batch, a
 * new share is split off) and tries once more; if that fails too the packet is dropped and
 * counted "pool_exhausted", and the batch's further new flows are dropped the same way
 * without another trigger (the next batch triggers again: the other instances give their
 * shares back after their next batch, or when they go to sleep). A bit is never handed out
 * while an "in" entry holds its pair (so a pool that was reset under live mappings cannot
 * give one pair to two flows); such a bit stays taken until that mapping expires and returns
 * it. Only ports inside the configured port_range are handed out.
 *
 * Idle timeout. A mapping not used by a packet (either direction) for `idle_timeout` is
 * expired: its "out" and "in" entries are deleted, its port bit goes back to the share of the
 * expiring instance, and "expired" is counted. Both mechanisms run:
 *   - lazily, when a packet of the flow finds its mapping idle (outbound: the flow gets a new
 *     pair at once; inbound: the packet is dropped as "no_mapping");
 *   - a sweep looks at the next 32 (external ip, port) pairs of the configured space (a
 *     cursor over external_ips x port_range: one bulk lookup in "in", one lookup in "out" per
 *     live pair), paced so that the whole space is visited every idle_timeout / 8 (at most
 *     once per batch), so an idle mapping's port comes back within 1.125 x idle_timeout while
 *     the instance gets traffic. A sleeping instance sweeps nothing.
 * Expiry claims a mapping by compare-and-swap of its owner field (instance id -> "dying"), so
 * exactly one instance deletes a mapping and returns its port. The sweep expires its own
 * instance's mappings after idle_timeout, and other instances' (typically those of stopped
 * instances whose flows never came back) only after 2 x idle_timeout. An outbound packet that
 * meets its mapping while another instance is expiring it is dropped (counted "no_mapping").
 * (An instance that dies between claiming and deleting a mapping -- a window of a few table
 * operations -- leaves it "dying" for good: that flow and its port stay blocked until the
 * tables are dropped.)
 *
 * Flow ownership. The NF assumes that one instance handles both directions of a flow: the
 * router pins flows by a symmetric key (for inbound packets, the internal 5-tuple they
 * translate back to). An instance that uses a mapping made by another (e.g. after a restart)
 * adopts it (owner := its instance id, by CAS). Mappings live in state tables: they survive
 * stop and restart of every instance (scale to zero), and a restarted NAT keeps translating
 * both directions of existing flows.
 *
 * Not done: TCP FIN/RST tracking (TCP mappings expire by the idle timeout like UDP ones), ALGs
 * (FTP, SIP, ...), translation of ICMP errors (RFC 5508 §4.2), hairpinning, IPv6.
 * Changing port_range for an NF name whose tables exist keeps the old pool: ports of the new
 * range it lacks are never added (drop the NF's tables with the state manager first).
 * Changing max_flows for an existing NF name fails init (the tables exist with another size).
 *
 * Counters: translated_out, translated_in (packets rewritten), no_mapping, pool_exhausted,
 * expired (mappings), malformed, not_internal, passthrough, unsupported, table_full.
 *
 * Configuration (a dict; nfs/nat/__init__.py encode_config() validates and packs it):
 *   internal:     IPv4 CIDR of the inside network, e.g. "10.0.0.0/8" (required)
 *   external_ips: list of 1..16 distinct IPv4 addresses outside `internal` (required)
 *   port_range:   "lo-hi" or [lo, hi], 1 <= lo <= hi <= 65535 (default "1024-65535")
 *   idle_timeout: seconds, int or float, 0.001 .. 604800 (default 300)
 *   max_flows:    entries of each mapping table, 1 .. 4194304 (default 65536)
 *
 * Packed config (little-endian unless noted), checked again by init() (SERPENS_EINVAL):
 *   u32 magic 0x31544E53 ("SNT1"), 4 bytes internal network (network order, host bits 0),
 *   u8 prefix length (0..32), u8 number of external IPs (1..16), u16 port lo, u16 port hi,
 *   u16 0, u32 idle_timeout in ms (1 .. 604800000), u32 max_flows (1 .. 1<<22), then 4 bytes
 *   per external IP (network order; distinct, not 0.0.0.0, not inside internal).
 *
 * Example:
 *     NF(build_stock("nat"), config=nat.encode_config({
 *         "internal": "10.0.0.0/8", "external_ips": ["192.0.2.1", "192.0.2.2"],
 *         "port_range": "1024-65535", "idle_timeout": 120}))
 */
#include <serpens/nf.h>

#define NAT_MAGIC 0x31544E53u
#define NAT_HDR_LEN 24
#define NAT_MAX_EXT 16
#define NAT_MAX_FLOWS (1u << 22)
#define NAT_MAX_TIMEOUT_MS 604800000u
#define NAT_BITMAP_BYTES 8192
#define NAT_BITMAP_WORDS (NAT_BITMAP_BYTES / 8)
#define NAT_POOL_KEYS 64          /* capacity of "ports": external IPs over all configs */
#define NAT_SWEEP 32              /* pairs looked at per batch */
#define OWNER_DYING 0xFFFFFFFFu

enum { P_ICMP = 1, P_TCP = 6, P_UDP = 17 };
enum { K_DONE = 0, K_OUT, K_IN };

struct pair_key {      /* key of "in" */
	uint8_t ip[4];
	uint16_t port;     /* network order */
	uint16_t zero;
};
_Static_assert(sizeof(struct pair_key) == 8, "pair key is 8 bytes");

struct out_val {       /* value of "out" */
	uint8_t ip[4];
	uint16_t port;     /* network order */
	uint16_t zero;
	uint32_t owner;    /* instance id; OWNER_DYING while being expired */
	uint32_t deltas;   /* the outbound rewrite's checksum deltas (out_deltas), 0: none yet */
	uint64_t last_seen_ns;
};
_Static_assert(sizeof(struct out_val) == 24, "out value is 24 bytes");

/* configuration */
static uint32_t int_net, int_mask; /* host order */
static uint32_t n_ext;
static uint8_t ext_ip[NAT_MAX_EXT][4];
static uint16_t port_lo, port_hi;
static uint64_t timeout_ns;
static uint32_t max_flows;

/* tables, counters, per-instance allocation state */
static int t_out = -1, t_in = -1, t_ports = -1;
static int c_tout, c_tin, c_nomap, c_exhausted, c_expired, c_malformed, c_notint, c_pass,
	c_unsup, c_full;
static uint32_t cursor[NAT_MAX_EXT];      /* per IP: the port after the one taken last */
static uint32_t sweep_ip, sweep_port;     /* next pair the sweep looks at */
static uint64_t sweep_every_ns, next_sweep_ns; /* pace: the whole space per idle_timeout / 8 */
static int exhausted_batch;               /* a trigger gave nothing in this batch */
static int dirty;                         /* an entry was deleted in this batch */
static uint64_t full_bitmap[NAT_BITMAP_WORDS]; /* .bss: too big for the stack */

static uint32_t rd32le(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint16_t rd16le(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static uint16_t ld16(const uint8_t *p)
{
	uint16_t v;
	memcpy(&v, p, 2);
	return v;
}
static void st16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }

static int in_internal(const uint8_t *a) { return (be32(a) & int_mask) == int_net; }

static int ext_index(const uint8_t *a)
{
	for (uint32_t i = 0; i < n_ext; i++)
		if (memcmp(a, ext_ip[i], 4) == 0)
			return (int)i;
	return -1;
}

/* ---- configuration ---------------------------------------------------------------------- */

static int parse_config(const uint8_t *c, uint32_t len)
{
	if (!c || len < NAT_HDR_LEN || rd32le(c) != NAT_MAGIC)
		return SERPENS_EINVAL;
	uint32_t plen = c[8], n = c[9];
	uint32_t lo = rd16le(c + 10), hi = rd16le(c + 12), tmo = rd32le(c + 16);
	uint32_t cap = rd32le(c + 20);
	if (plen > 32 || n < 1 || n > NAT_MAX_EXT || len != NAT_HDR_LEN + 4 * n)
		return SERPENS_EINVAL;
	if (lo < 1 || lo > hi || rd16le(c + 14) != 0)
		return SERPENS_EINVAL;
	if (tmo < 1 || tmo > NAT_MAX_TIMEOUT_MS || cap < 1 || cap > NAT_MAX_FLOWS)
		return SERPENS_EINVAL;
	int_mask = plen ? ~0u << (32 - plen) : 0;
	int_net = be32(c + 4);
	if (int_net & ~int_mask)
		return SERPENS_EINVAL; /* host bits set */
	n_ext = 0;
	for (uint32_t i = 0; i < n; i++) {
		const uint8_t *a = c + NAT_HDR_LEN + 4 * i;
		if (be32(a) == 0 || in_internal(a) || ext_index(a) >= 0)
			return SERPENS_EINVAL;
		memcpy(ext_ip[n_ext++], a, 4);
	}
	port_lo = (uint16_t)lo;
	port_hi = (uint16_t)hi;
	timeout_ns = (uint64_t)tmo * 1000000ull;
	/* Sweeping every batch would double the lookups per packet; a full cycle over the pair
	 * space in an eighth of the timeout is enough for expiry and costs almost nothing. */
	{
		uint64_t pairs = (uint64_t)n_ext * ((uint32_t)port_hi - port_lo + 1);
		uint64_t cycles = (pairs + NAT_SWEEP - 1) / NAT_SWEEP;
		sweep_every_ns = timeout_ns / 8 / (cycles ? cycles : 1);
		next_sweep_ns = 0;
	}
	max_flows = cap;
	return 0;
}

/* ---- the port pool: bitmaps, split and merge ---------------------------------------------- */

static uint64_t range_mask(uint32_t w)
{
	uint64_t m = ~0ull;
	if (w == (uint32_t)port_lo >> 6)
		m &= ~0ull << (port_lo & 63);
	if (w == (uint32_t)port_hi >> 6)
		m &= ~0ull >> (63 - (port_hi & 63));
	return m;
}

/* Take a free port of port_range out of a share; -1 if it has none. Round robin: the search
 * starts after the port taken last, so a port that just came back is reused last. */
static int take_bit(uint64_t *share, uint32_t idx)
{
	uint32_t wlo = (uint32_t)port_lo >> 6, whi = (uint32_t)port_hi >> 6, nw = whi - wlo + 1;
	uint32_t start = cursor[idx];
	if (start < port_lo || start > port_hi)
		start = port_lo;
	uint32_t sw = start >> 6;
	for (uint32_t n = 0; n <= nw; n++) {
		uint32_t w = wlo + (sw - wlo + n) % nw;
		uint64_t m = range_mask(w);
		if (n == 0)
			m &= ~0ull << (start & 63);    /* from the cursor on */
		else if (n == nw)
			m &= ~(~0ull << (start & 63)); /* wrapped around: below the cursor */
		uint64_t bits = share[w] & m;
		if (bits) {
			uint32_t b = (uint32_t)__builtin_ctzll(bits);
			uint32_t p = w * 64 + b;
			share[w] &= ~(1ull << b);
			cursor[idx] = p == port_hi ? port_lo : p + 1;
			return (int)p;
		}
	}
	return -1;
}

/* A port goes back to this instance's share of its external IP. */
static void give_back(struct serpens_ctx *ctx, const uint8_t *ip, uint16_t port_n)
{
	uint64_t *share = ctx->api->get_state(ctx, t_ports, ip);
	uint32_t p = serpens_ntohs(port_n);
	if (share)
		share[p >> 6] |= 1ull << (p & 63);
}

/* ops->split: move half of the pool's free ports (rounded up) into the all-zero share. */
static void pool_split(struct serpens_ctx *ctx, int table, const void *key, void *pool_v,
		       void *share_v)
{
	uint64_t *pool = pool_v, *share = share_v;
	uint32_t total = 0;
	(void)ctx;
	(void)table;
	(void)key;
	for (uint32_t w = 0; w < NAT_BITMAP_WORDS; w++)
		total += (uint32_t)__builtin_popcountll(pool[w]);
	uint32_t want = (total + 1) / 2;
	for (uint32_t w = 0; w < NAT_BITMAP_WORDS && want; w++) {
		uint64_t bits = pool[w];
		uint32_t pc = (uint32_t)__builtin_popcountll(bits);
		if (pc <= want) {
			share[w] |= bits;
			pool[w] = 0;
			want -= pc;
			continue;
		}
		while (want) {
			uint64_t low = bits & -bits;
			share[w] |= low;
			pool[w] &= ~low;
			bits &= ~low;
			want--;
		}
	}
}

/* ops->merge: a share goes back to its pool (OR). The NF has no eventual table; for any
 * other table do what the runtime's default would (add the words). */
static void pool_merge(struct serpens_ctx *ctx, int table, const void *key, void *into_v,
		       const void *from_v)
{
	uint64_t *into = into_v;
	const uint64_t *from = from_v;
	(void)ctx;
	(void)key;
	if (table == t_ports) {
		for (uint32_t w = 0; w < NAT_BITMAP_WORDS; w++)
			into[w] |= from[w];
		return;
	}
	for (uint32_t w = 0; w < NAT_BITMAP_WORDS; w++)
		if (from[w])
			__atomic_fetch_add(&into[w], from[w], __ATOMIC_RELAXED);
}

/* A free pair from this instance's share of external IP idx, never one an "in" entry holds. */
static int take_from(struct serpens_ctx *ctx, uint32_t idx, struct pair_key *pk)
{
	const struct serpens_api *api = ctx->api;
	uint64_t *share = api->get_state(ctx, t_ports, ext_ip[idx]);
	if (!share)
		return -1;
	for (;;) {
		int p = take_bit(share, idx);
		if (p < 0)
			return -1;
		memset(pk, 0, sizeof(*pk));
		memcpy(pk->ip, ext_ip[idx], 4);
		pk->port = serpens_htons((uint16_t)p);
		if (!api->get_state(ctx, t_in, pk))
			return 0;
		/* a live mapping holds it (the pool was reset under it): leave the bit taken */
	}
}

static int alloc_pair(struct serpens_ctx *ctx, const uint8_t *src, struct pair_key *pk)
{
	const struct serpens_api *api = ctx->api;
	uint32_t start = api->hash(src, 4, 0x6e6174u) % n_ext;

	for (int round = 0; round < 2; round++) {
		for (uint32_t j = 0; j < n_ext; j++)
			if (take_from(ctx, (start + j) % n_ext, pk) == 0)
				return 0;
		if (round || exhausted_batch)
			break;
		for (uint32_t j = 0; j < n_ext; j++) /* rebalance (paper Fig. 9) */
			api->trigger(ctx, t_ports, ext_ip[(start + j) % n_ext]);
	}
	exhausted_batch = 1;
	return -1;
}

/* ---- mappings ------------------------------------------------------------------------------ */

static int idle_for(const struct out_val *o, uint64_t now, uint64_t limit)
{
	uint64_t seen = __atomic_load_n(&o->last_seen_ns, __ATOMIC_RELAXED);
	return now > seen && now - seen > limit; /* two processes' clocks may differ a little */
}

/* Make this instance the owner of a mapping it uses; -1 if the mapping is being expired. */
static int adopt(struct serpens_ctx *ctx, struct out_val *o)
{
	uint32_t cur = __atomic_load_n(&o->owner, __ATOMIC_ACQUIRE);
	while (cur != ctx->instance_id) {
		if (cur == OWNER_DYING)
			return -1;
		if (__atomic_compare_exchange_n(&o->owner, &cur, ctx->instance_id, 0,
						__ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
			break;
	}
	return 0;
}

/* Expire the mapping of internal tuple f (value o) if its owner is still `owner`: 1 if this
 * call did, 0 if another got there first. */
static int expire(struct serpens_ctx *ctx, const struct serpens_flow *f, struct out_val *o,
		  uint32_t owner)
{
	const struct serpens_api *api = ctx->api;
	struct serpens_flow key = *f; /* f may point into an entry deleted below */
	struct pair_key pk;

	if (owner == OWNER_DYING ||
	    !__atomic_compare_exchange_n(&o->owner, &owner, OWNER_DYING, 0, __ATOMIC_ACQ_REL,
					 __ATOMIC_ACQUIRE))
		return 0;
	memset(&pk, 0, sizeof(pk));
	memcpy(pk.ip, o->ip, 4);
	pk.port = o->port;
	const struct serpens_flow *held = api->get_state(ctx, t_in, &pk);
	int mine = held && memcmp(held, &key, sizeof(key)) == 0;
	if (mine)
		api->delete_state(ctx, t_in, &pk);
	api->delete_state(ctx, t_out, &key);
	if (mine)
		give_back(ctx, pk.ip, pk.port);
	dirty = 1;
	serpens_count(ctx, c_expired, 1);
	return 1;
}

static void sweep(struct serpens_ctx *ctx, uint64_t now)
{
	const struct serpens_api *api = ctx->api;
	struct pair_key keys[NAT_SWEEP];
	const void *kp[NAT_SWEEP];
	void *vals[NAT_SWEEP];
	uint32_t span = (uint32_t)port_hi - port_lo + 1;
	uint32_t n = n_ext * span < NAT_SWEEP ? n_ext * span : NAT_SWEEP;

	if (n == 0)
		return; /* not reached: init() has one IP and one port at least */
	for (uint32_t k = 0; k < n; k++) {
		if (sweep_ip >= n_ext)
			sweep_ip = 0;
		if (sweep_port < port_lo || sweep_port > port_hi)
			sweep_port = port_lo;
		memset(&keys[k], 0, sizeof(keys[k]));
		memcpy(keys[k].ip, ext_ip[sweep_ip], 4);
		keys[k].port = serpens_htons((uint16_t)sweep_port);
		kp[k] = &keys[k];
		if (sweep_port++ == port_hi) {
			sweep_port = port_lo;
			sweep_ip++;
		}
	}
	if (!api->get_state_bulk(ctx, t_in, kp, n, vals))
		return;
	for (uint32_t k = 0; k < n; k++) {
		if (!vals[k])
			continue;
		struct serpens_flow f = *(const struct serpens_flow *)vals[k];
		struct out_val *o = api->get_state(ctx, t_out, &f);
		if (!o || memcmp(o->ip, keys[k].ip, 4) != 0 || o->port != keys[k].port)
			continue; /* being inserted or expired right now */
		uint32_t owner = __atomic_load_n(&o->owner, __ATOMIC_ACQUIRE);
		if (owner == OWNER_DYING)
			continue;
		if (idle_for(o, now, owner == ctx->instance_id ? timeout_ns : 2 * timeout_ns))
			expire(ctx, &f, o, owner);
	}
}

/* ---- rewriting ------------------------------------------------------------------------------ */

/* RFC 1624 eqn. 3, HC' = ~(~HC + ~m + m'), inline: `delta` is the sum of ~m + m' over the
 * changed 16-bit words. Words and checksum are loaded in host order: the one's complement sum
 * is byte-order independent (RFC 1071 2.B), so no swaps are needed (the same result as
 * api->csum_update, without its calls and loops). */
static uint32_t csum_delta(const uint8_t *old, const uint8_t *new, uint32_t len)
{
	uint32_t d = 0;
	for (uint32_t k = 0; k < len; k += 2)
		d += (uint16_t)~ld16(old + k) + (uint32_t)ld16(new + k);
	return d;
}

static uint16_t csum_apply(uint16_t c, uint32_t delta)
{
	uint32_t sum = (uint16_t)~c + delta;
	sum = (sum & 0xFFFF) + (sum >> 16);
	sum = (sum & 0xFFFF) + (sum >> 16);
	return (uint16_t)~sum;
}

static uint32_t fold16(uint32_t d)
{
	d = (d & 0xFFFF) + (d >> 16);
	return (d & 0xFFFF) + (d >> 16);
}

/* The outbound rewrite of flow f to (ip, port) changes the same words of every packet: its
 * checksum deltas, folded to 16 bits each (address low, port high), are the flow's. Folding
 * changes no result: a delta is never 0 (the new address is not 0.0.0.0, the new port not
 * 0), and a sum above 0 folds to one value whatever its grouping. Never 0 itself. */
static uint32_t out_deltas(const struct serpens_flow *f, const uint8_t *ip, uint16_t port)
{
	return fold16(csum_delta(f->src, ip, 4)) |
	       fold16(csum_delta((const uint8_t *)&f->sport, (const uint8_t *)&port, 2)) << 16;
}

/* Packet i's address at `addr` and port / ICMP identifier at `pp` become ip / port (network
 * order), its checksums updated by the deltas of those changes (RFC 1624: d_addr for the IPv4
 * header and the pseudo-header, d_port for the L4 header); its parsed headers are out of date
 * afterwards (the NFs after NAT parse the translated packet). */
static void rewrite(struct serpens_batch *b, uint32_t i, const struct serpens_hdrs *h,
		    uint8_t *addr, uint8_t *pp, const uint8_t *ip, uint16_t port, uint32_t d_addr,
		    uint32_t d_port)
{
	uint8_t *iph = b->data[i] + h->l3_off, *l4 = b->data[i] + h->l4_off;
	uint8_t proto = h->flow.proto;
	uint8_t *csum = l4 + (proto == P_TCP ? 16 : proto == P_UDP ? 6 : 2);
	uint16_t c;

	st16(iph + 10, csum_apply(ld16(iph + 10), d_addr));
	c = ld16(csum);
	if (proto == P_TCP || (proto == P_UDP && c != 0)) {
		c = csum_apply(c, d_addr + d_port); /* pseudo-header address, and the port */
		if (proto == P_UDP && c == 0)
			c = 0xFFFF;
		st16(csum, c);
	} else if (proto == P_ICMP) {
		st16(csum, csum_apply(c, d_port));
	}
	memcpy(addr, ip, 4);
	st16(pp, port);
	serpens_hdrs_invalidate(b, i);
}

/* An outbound packet's source address and port (ICMP: identifier) become its mapping's. */
static void rewrite_out(struct serpens_batch *b, uint32_t i, const struct serpens_hdrs *h,
			const struct out_val *o, uint32_t deltas)
{
	uint8_t *iph = b->data[i] + h->l3_off, *l4 = b->data[i] + h->l4_off;
	rewrite(b, i, h, iph + 12, h->flow.proto == P_ICMP ? l4 + 4 : l4, o->ip, o->port,
		deltas & 0xFFFF, deltas >> 16);
}

/* An inbound packet's destination address and port (ICMP: identifier) become ip / port. */
static void rewrite_in(struct serpens_batch *b, uint32_t i, const struct serpens_hdrs *h,
		       const uint8_t *ip, uint16_t port)
{
	uint8_t *iph = b->data[i] + h->l3_off, *l4 = b->data[i] + h->l4_off;
	uint8_t *addr = iph + 16, *pp = h->flow.proto == P_ICMP ? l4 + 4 : l4 + 2;
	rewrite(b, i, h, addr, pp, ip, port, csum_delta(addr, ip, 4),
		csum_delta(pp, (const uint8_t *)&port, 2));
}

/* ---- packets ------------------------------------------------------------------------------- */

static void outbound(struct serpens_ctx *ctx, struct serpens_batch *b, uint32_t i,
		     const struct serpens_hdrs *h, const struct serpens_flow *key, struct out_val *o)
{
	const struct serpens_api *api = ctx->api;
	uint64_t now = b->now_ns;

	if (dirty || !o)
		o = api->get_state(ctx, t_out, key);
	if (o) {
		uint32_t owner = __atomic_load_n(&o->owner, __ATOMIC_ACQUIRE);
		if (owner != OWNER_DYING && idle_for(o, now, timeout_ns)) {
			if (expire(ctx, key, o, owner))
				o = NULL; /* gone: the flow gets a new pair below */
			else
				owner = OWNER_DYING;
		}
		if (o && (owner == OWNER_DYING ||
			  (owner != ctx->instance_id && adopt(ctx, o) < 0))) {
			/* another instance expires it this very moment: an entry made now could be
			 * deleted by it; drop this one packet */
			serpens_drop(b, i);
			serpens_count(ctx, c_nomap, 1);
			return;
		}
		if (o) {
			__atomic_store_n(&o->last_seen_ns, now, __ATOMIC_RELAXED);
			if (!o->deltas) /* a mapping made before deltas were kept */
				o->deltas = out_deltas(key, o->ip, o->port);
			rewrite_out(b, i, h, o, o->deltas);
			serpens_count(ctx, c_tout, 1);
			return;
		}
	}
	/* a new flow */
	struct pair_key pk;
	struct out_val v;
	if (alloc_pair(ctx, key->src, &pk) < 0) {
		serpens_drop(b, i);
		serpens_count(ctx, c_exhausted, 1);
		return;
	}
	memset(&v, 0, sizeof(v));
	memcpy(v.ip, pk.ip, 4);
	v.port = pk.port;
	v.owner = ctx->instance_id;
	v.deltas = out_deltas(key, pk.ip, pk.port);
	v.last_seen_ns = now;
	if (api->put_state(ctx, t_out, key, &v, NULL) != 0) {
		give_back(ctx, pk.ip, pk.port);
		serpens_drop(b, i);
		serpens_count(ctx, c_full, 1);
		return;
	}
	if (api->put_state(ctx, t_in, &pk, key, NULL) != 0) {
		api->delete_state(ctx, t_out, key);
		dirty = 1;
		give_back(ctx, pk.ip, pk.port);
		serpens_drop(b, i);
		serpens_count(ctx, c_full, 1);
		return;
	}
	rewrite_out(b, i, h, &v, v.deltas);
	serpens_count(ctx, c_tout, 1);
}

static void inbound(struct serpens_ctx *ctx, struct serpens_batch *b, uint32_t i,
		    const struct serpens_hdrs *h, const struct pair_key *pk,
		    const struct serpens_flow *held)
{
	const struct serpens_api *api = ctx->api;
	const uint8_t *remote = b->data[i] + h->l3_off + 12;
	struct serpens_flow f;
	struct out_val *o;
	uint32_t owner;

	if (dirty || !held)
		held = api->get_state(ctx, t_in, pk);
	if (!held)
		goto nomap;
	f = *held;
	if (f.proto != h->flow.proto || memcmp(f.dst, remote, 4) != 0 ||
	    (f.proto != P_ICMP && f.dport != h->flow.sport))
		goto nomap; /* another protocol or another remote end */
	o = api->get_state(ctx, t_out, &f);
	if (!o || memcmp(o->ip, pk->ip, 4) != 0 || o->port != pk->port)
		goto nomap;
	owner = __atomic_load_n(&o->owner, __ATOMIC_ACQUIRE);
	if (owner == OWNER_DYING)
		goto nomap;
	if (idle_for(o, b->now_ns, timeout_ns)) {
		expire(ctx, &f, o, owner);
		goto nomap;
	}
	if (adopt(ctx, o) < 0)
		goto nomap;
	__atomic_store_n(&o->last_seen_ns, b->now_ns, __ATOMIC_RELAXED);
	rewrite_in(b, i, h, f.src, f.sport);
	serpens_count(ctx, c_tin, 1);
	return;
nomap:
	serpens_drop(b, i);
	serpens_count(ctx, c_nomap, 1);
}

/* Classify packet i: K_OUT (its key: the parsed flow, (*hp)->flow), K_IN with *pk filled in,
 * or K_DONE (label and counters already set). */
static int classify(struct serpens_ctx *ctx, struct serpens_batch *b, uint32_t i,
		    const struct serpens_hdrs **hp, struct pair_key *pk)
{
	const struct serpens_hdrs *h;
	int rc = serpens_hdrs(ctx, b, i, &h); /* parsed once for the SFC */

	*hp = h;
	if (rc == SERPENS_PARSE_TRUNCATED || rc == SERPENS_PARSE_BAD_HEADER) {
		serpens_drop(b, i);
		serpens_count(ctx, c_malformed, 1);
		return K_DONE;
	}
	if ((rc != SERPENS_PARSE_OK && rc != SERPENS_PARSE_FRAGMENT) || h->family != 4) {
		serpens_count(ctx, c_pass, 1); /* non-IP, IPv6 */
		return K_DONE;
	}
	int out = in_internal(h->flow.src);
	int idx = out ? -1 : ext_index(h->flow.dst);
	if (!out && idx < 0) {
		serpens_count(ctx, c_notint, 1);
		serpens_count(ctx, c_pass, 1);
		return K_DONE;
	}
	if (rc == SERPENS_PARSE_FRAGMENT) {
		serpens_drop(b, i);
		serpens_count(ctx, c_malformed, 1);
		return K_DONE;
	}
	uint8_t proto = h->flow.proto;
	const uint8_t *l4 = b->data[i] + h->l4_off;
	int has_l4 = h->l4_off != 0;
	if (out) {
		if (has_l4 && (proto == P_TCP || proto == P_UDP ||
			       (proto == P_ICMP && l4[0] == 8 && l4[1] == 0)))
			return K_OUT; /* keyed by h->flow (an echo's dport is 0, pads are 0) */
		serpens_drop(b, i);
		serpens_count(ctx, c_unsup, 1);
		return K_DONE;
	}
	memset(pk, 0, sizeof(*pk));
	memcpy(pk->ip, ext_ip[idx], 4);
	if (has_l4 && (proto == P_TCP || proto == P_UDP)) {
		pk->port = h->flow.dport;
		return K_IN;
	}
	if (has_l4 && proto == P_ICMP && l4[0] == 0 && l4[1] == 0) {
		pk->port = ld16(l4 + 4);
		return K_IN;
	}
	serpens_drop(b, i);
	serpens_count(ctx, c_nomap, 1);
	return K_DONE;
}

static void process(struct serpens_ctx *ctx, struct serpens_batch *b)
{
	const struct serpens_api *api = ctx->api;
	const struct serpens_hdrs *h[SERPENS_BURST];
	struct pair_key pk[SERPENS_BURST];
	const void *okeys[SERPENS_BURST], *ikeys[SERPENS_BURST];
	void *ovals[SERPENS_BURST], *ivals[SERPENS_BURST];
	uint8_t kind[SERPENS_BURST], slot[SERPENS_BURST];
	uint32_t nout = 0, nin = 0, count = b->count < SERPENS_BURST ? b->count : SERPENS_BURST;

	exhausted_batch = 0;
	if (b->now_ns >= next_sweep_ns) {
		sweep(ctx, b->now_ns);
		next_sweep_ns = b->now_ns + sweep_every_ns;
	}
	dirty = 0; /* the lookups below come after the sweep's deletes */

	for (uint32_t k = 0; k < count; k++) {
		uint32_t i = b->idx[k];
		kind[k] = (uint8_t)classify(ctx, b, i, &h[k], &pk[k]);
		if (kind[k] == K_OUT) {
			slot[k] = (uint8_t)nout;
			/* the parsed flow itself is the key: hashed once per SFC */
			okeys[nout++] = &h[k]->flow;
		} else if (kind[k] == K_IN) {
			slot[k] = (uint8_t)nin;
			ikeys[nin++] = &pk[k];
		}
	}
	if (nout && nin && api->size >= offsetof(struct serpens_api, get_state_multi) +
					     sizeof(void *) && api->get_state_multi) {
		/* both directions' lookups at once: their misses overlap */
		struct serpens_lookup l[2] = {{t_out, nout, okeys, ovals}, {t_in, nin, ikeys, ivals}};
		api->get_state_multi(ctx, l, 2);
	} else {
		if (nout)
			api->get_state_bulk(ctx, t_out, okeys, nout, ovals);
		if (nin)
			api->get_state_bulk(ctx, t_in, ikeys, nin, ivals);
	}
	uint64_t now = b->now_ns, translated = 0;
	for (uint32_t k = 0; k < count; k++) {
		uint32_t i = b->idx[k];
		if (kind[k] == K_OUT) {
			/* the common case inline: a live mapping of this instance's, deltas known */
			struct out_val *o = ovals[slot[k]];
			uint32_t deltas;
			if (o && !dirty &&
			    __atomic_load_n(&o->owner, __ATOMIC_ACQUIRE) == ctx->instance_id &&
			    !idle_for(o, now, timeout_ns) && (deltas = o->deltas) != 0) {
				__atomic_store_n(&o->last_seen_ns, now, __ATOMIC_RELAXED);
				rewrite_out(b, i, h[k], o, deltas);
				translated++;
			} else {
				outbound(ctx, b, i, h[k], &h[k]->flow, o);
			}
		} else if (kind[k] == K_IN) {
			inbound(ctx, b, i, h[k], &pk[k], ivals[slot[k]]);
		}
	}
	serpens_count(ctx, c_tout, translated);
}

static int init(struct serpens_ctx *ctx, const void *config, uint32_t len)
{
	const struct serpens_api *api = ctx->api;

	if (api->abi_major != SERPENS_ABI_MAJOR ||
	    api->size < offsetof(struct serpens_api, trigger) + sizeof(void *)) {
		api->log(ctx, SERPENS_LOG_ERR, "nat needs state tables (ABI 1.1)");
		return SERPENS_EINVAL;
	}
	if (parse_config(config, len) < 0) {
		api->log(ctx, SERPENS_LOG_ERR, "bad configuration (use nfs.nat.encode_config)");
		return SERPENS_EINVAL;
	}
	t_out = api->create_table(ctx, "out", SERPENS_PER_FLOW | SERPENS_READ | SERPENS_WRITE,
				  sizeof(struct serpens_flow), sizeof(struct out_val), max_flows);
	t_in = api->create_table(ctx, "in", SERPENS_PER_FLOW | SERPENS_FLOW_VALUE | SERPENS_READ |
				 SERPENS_WRITE,
				 sizeof(struct pair_key), sizeof(struct serpens_flow), max_flows);
	t_ports = api->create_table(ctx, "ports", SERPENS_GLOBAL | SERPENS_WRITE | SERPENS_RELEASE,
				    4, NAT_BITMAP_BYTES, NAT_POOL_KEYS);
	if (t_out < 0 || t_in < 0 || t_ports < 0) {
		api->log(ctx, SERPENS_LOG_ERR, "cannot create the state tables (out %d, in %d, "
			 "ports %d)", t_out, t_in, t_ports);
		return t_out < 0 ? t_out : t_in < 0 ? t_in : t_ports;
	}
	memset(full_bitmap, 0, sizeof(full_bitmap));
	for (uint32_t p = port_lo; p <= port_hi; p++)
		full_bitmap[p >> 6] |= 1ull << (p & 63);
	for (uint32_t k = 0; k < n_ext; k++) {
		int rc = api->put_state(ctx, t_ports, ext_ip[k], full_bitmap, NULL);
		if (rc < 0) {
			api->log(ctx, SERPENS_LOG_ERR, "cannot create the port pool of an external "
				 "IP: %d", rc);
			return rc;
		}
	}
	memset(cursor, 0, sizeof(cursor));
	sweep_ip = 0;
	sweep_port = port_lo;
	c_tout = api->counter_register(ctx, "translated_out");
	c_tin = api->counter_register(ctx, "translated_in");
	c_nomap = api->counter_register(ctx, "no_mapping");
	c_exhausted = api->counter_register(ctx, "pool_exhausted");
	c_expired = api->counter_register(ctx, "expired");
	c_malformed = api->counter_register(ctx, "malformed");
	c_notint = api->counter_register(ctx, "not_internal");
	c_pass = api->counter_register(ctx, "passthrough");
	c_unsup = api->counter_register(ctx, "unsupported");
	c_full = api->counter_register(ctx, "table_full");
	return 0;
}

SERPENS_NF(.name = "nat", .init = init, .process = process, .merge = pool_merge,
	   .split = pool_split, .hdrs = SERPENS_HDRS_KEPT /* rewrite() invalidates */);
