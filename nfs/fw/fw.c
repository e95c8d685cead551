/*
 * fw -- 5-tuple firewall (ordered rules, first match wins; no connection tracking) with a
 * per-flow verdict cache.
 *
 * Ports: one input, one output (port 0). An allowed packet goes on to port 0 unchanged, a
 * denied or malformed one is dropped. Packets are never modified.
 *
 * Rules: an ordered list (at most 256); the first rule that matches a packet decides
 * (allow or deny); a packet no rule matches follows `default`. A rule matches when all of:
 *   - family: a rule whose src or dst is a CIDR has that CIDR's family (4 or 6) and matches
 *     only packets of the same family. An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is IPv6:
 *     IPv4 rules do not see it. A rule with src and dst "any" matches both families.
 *   - src / dst: the packet's address lies in the CIDR ("any" = anything).
 *   - proto: tcp (6), udp (17), icmp (ICMP 1 and ICMPv6 58) or any.
 *   - sport / dport: inclusive ranges lo-hi. A rule with a port range other than 0-65535
 *     (on either side) matches only TCP and UDP packets whose ports lie in the ranges: it never
 *     matches ICMP, other protocols, or non-first fragments.
 * Non-IP frames (ARP, LLDP, ...) match no rule: they follow `default`.
 * Non-first IP fragments (IPv4 offset != 0, IPv6 fragment header with offset != 0) carry no
 * L4 header: they are checked against the rules that have no port range (by family,
 * addresses and protocol) and skip rules with a port range; if none of those matches, the
 * default applies. (A first fragment carries the ports and is checked like any packet; a
 * flow's later fragments without ports cannot get past a port-based allow rule, so with
 * "allow tcp dport 80, default deny" fragmented port-80 traffic is denied: reassemble before
 * the firewall if you need it.) Fragment verdicts are not cached.
 * Malformed frames (the parser says TRUNCATED or BAD_HEADER: cut headers, bad IP version,
 * IHL < 5, IP length beyond the frame, ...) are dropped and counted as "malformed" whatever
 * the rules say.
 *
 * Verdict cache: the verdict of a flow (struct serpens_flow: addresses, ports / ICMP echo
 * id, protocol, family) is kept in the per-flow state table "verdicts" (value: the rules'
 * hash and the verdict), so the next packets of the flow skip rule evaluation -- also in a
 * later instance of the NF (state tables outlive instances). Tables belong to the NF's name
 * in the SFC: every instance of that name on the node shares one table. Lookups for a batch
 * are hashed and prefetched together (get_state_bulk); packets of a new flow within one
 * batch are all evaluated. A cached verdict is used only when it was made by the same rules
 * and default (a hash of them is stored with it), so a reconfigured firewall never applies
 * stale verdicts. The table holds `cache_capacity`
 * flows; when it is full new flows are evaluated every time (nothing fails). Nothing evicts
 * entries. If the table cannot be created (runtime without state tables, or a table
 * "verdicts" left by an instance with a different cache_capacity) the NF logs a warning and
 * runs without a cache. cache_capacity 0 disables the cache.
 *
 * Headers are read with serpens_hdrs(): parsed once per packet for the whole SFC.
 *
 * Counters: allowed, denied (packets, whether decided by a rule, the default or the cache),
 * malformed (dropped as malformed; not counted in denied), cache_hits (verdicts taken from
 * the cache).
 *
 * Configuration (a dict; nfs/fw/__init__.py encode_config() validates and packs it):
 *   rules:          list of {action: allow|deny, src, dst: "any" | CIDR (default any),
 *                   proto: tcp|udp|icmp|any (default any), sport, dport: "any" | port |
 *                   "lo-hi" | [lo, hi] (default any)}
 *   default:        allow | deny (default allow)
 *   cache_capacity: flows in the verdict cache (default 65536, 0 = no cache)
 * Rules cost 13 bytes plus the significant bytes of their prefixes in the packed config
 * (an SFC's configs share 8 KiB).
 *
 * Packed config (little-endian), checked again by init() (SERPENS_EINVAL on anything off):
 *   header, 12 bytes: u32 magic 0x31574653 ("SFW1"), u8 default (0 deny, 1 allow), u8 0,
 *                     u16 rule count (<= 256), u32 cache_capacity (<= 1<<24)
 *   each rule:        u8 action (0 deny, 1 allow), u8 family (0 any, 4, 6), u8 proto (0 any,
 *                     1 icmp, 6 tcp, 17 udp), u8 src prefix length, u8 dst prefix length,
 *                     u16 sport lo, u16 sport hi, u16 dport lo, u16 dport hi, then
 *                     ceil(len / 8) bytes of the src prefix and of the dst prefix (network
 *                     order, host bits zero). Family 0 needs both lengths 0.
 *
 * Example (Python, building the SFC):
 *     from serpens import nfs
 *     from serpens.nfs import fw
 *     image = build_nf(nfs.source("fw"), area, "fw")
 *     NF(image, name="fw", config=fw.encode_config({
 *         "default": "deny",
 *         "rules": [
 *             {"action": "deny",  "src": "10.0.66.0/24"},
 *             {"action": "allow", "dst": "10.0.0.0/8", "proto": "tcp", "dport": "80"},
 *             {"action": "allow", "dst": "2001:db8::/32", "proto": "udp", "dport": "1000-2000"},
 *             {"action": "allow", "proto": "icmp"},
 *         ]}))
 */
#include <serpens/nf.h>

#define FW_MAGIC 0x31574653u
#define FW_MAX_RULES 256
#define FW_MAX_CAPACITY (1u << 24)
#define FW_HDR_LEN 12
#define FW_RULE_LEN 13

enum { DENY = 0, ALLOW = 1 };

struct fw_rule {             /* 48 bytes */
	uint64_t src[2], dst[2]; /* prefix, network order as loaded from the address bytes */
	uint64_t src_mask[2], dst_mask[2];
	uint16_t sport_lo, sport_hi, dport_lo, dport_hi;
	uint8_t family, proto, action, has_ports;
};

struct fw_verdict { /* value of the "verdicts" table */
	uint32_t rules_id;
	uint8_t verdict;
	uint8_t pad[3];
};

static struct fw_rule rules[FW_MAX_RULES];
static uint32_t nrules;
static uint8_t default_action;
static uint32_t rules_id;
static int table = -1;
static int c_allowed, c_denied, c_malformed, c_cache_hits;

static uint16_t rd16le(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t rd32le(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Mask of the first `len` bits of a 16-byte address as two words in memory (network) order. */
static void prefix_mask(uint32_t len, uint64_t m[2])
{
	for (int w = 0; w < 2; w++) {
		uint32_t bits = len > 64u * w ? len - 64u * w : 0;
		if (bits > 64)
			bits = 64;
		m[w] = bits ? __builtin_bswap64(~0ull << (64 - bits)) : 0;
	}
}

/* Read one prefix of `len` bits (ceil(len/8) bytes at *p); 0, or -1 if host bits are set. */
static int read_prefix(const uint8_t *p, uint32_t len, uint64_t addr[2], uint64_t mask[2])
{
	uint8_t bytes[16];
	memset(bytes, 0, sizeof(bytes));
	memcpy(bytes, p, (len + 7) / 8);
	prefix_mask(len, mask);
	memcpy(addr, bytes, 16);
	if ((addr[0] & ~mask[0]) || (addr[1] & ~mask[1]))
		return -1;
	return 0;
}

static int parse_config(const uint8_t *cfg, uint32_t len)
{
	if (!cfg || len < FW_HDR_LEN || rd32le(cfg) != FW_MAGIC)
		return SERPENS_EINVAL;
	if (cfg[4] > ALLOW || cfg[5] != 0)
		return SERPENS_EINVAL;
	uint32_t n = rd16le(cfg + 6), cap = rd32le(cfg + 8);
	if (n > FW_MAX_RULES || cap > FW_MAX_CAPACITY)
		return SERPENS_EINVAL;
	uint32_t off = FW_HDR_LEN;
	for (uint32_t r = 0; r < n; r++) {
		if (len - off < FW_RULE_LEN)
			return SERPENS_EINVAL;
		const uint8_t *p = cfg + off;
		struct fw_rule *x = &rules[r];
		uint32_t sl = p[3], dl = p[4];
		x->action = p[0];
		x->family = p[1];
		x->proto = p[2];
		x->sport_lo = rd16le(p + 5);
		x->sport_hi = rd16le(p + 7);
		x->dport_lo = rd16le(p + 9);
		x->dport_hi = rd16le(p + 11);
		if (x->action > ALLOW)
			return SERPENS_EINVAL;
		if (x->proto != 0 && x->proto != 1 && x->proto != 6 && x->proto != 17)
			return SERPENS_EINVAL;
		uint32_t maxlen = x->family == 4 ? 32 : x->family == 6 ? 128 : x->family == 0 ? 0 : 999;
		if (maxlen == 999 || sl > maxlen || dl > maxlen)
			return SERPENS_EINVAL;
		if (x->sport_lo > x->sport_hi || x->dport_lo > x->dport_hi)
			return SERPENS_EINVAL;
		x->has_ports = !(x->sport_lo == 0 && x->sport_hi == 0xFFFF && x->dport_lo == 0 &&
				 x->dport_hi == 0xFFFF);
		if (x->has_ports && x->proto == 1)
			return SERPENS_EINVAL; /* ICMP has no ports: the rule could never match */
		off += FW_RULE_LEN;
		uint32_t sb = (sl + 7) / 8, db = (dl + 7) / 8;
		if (len - off < sb + db)
			return SERPENS_EINVAL;
		if (read_prefix(cfg + off, sl, x->src, x->src_mask) < 0 ||
		    read_prefix(cfg + off + sb, dl, x->dst, x->dst_mask) < 0)
			return SERPENS_EINVAL;
		off += sb + db;
	}
	if (off != len)
		return SERPENS_EINVAL;
	nrules = n;
	default_action = cfg[4];
	return (int)cap;
}

/* -ffreestanding implies -fno-builtin: plain memcpy would be a call per rule. */
static int addr_in(const uint8_t *a, const uint64_t net[2], const uint64_t mask[2])
{
	uint64_t w[2];
	__builtin_memcpy(w, a, 16);
	return ((w[0] & mask[0]) == net[0]) & ((w[1] & mask[1]) == net[1]);
}

/* First-match evaluation. `ports` is 0 for packets without ports (non-first fragments, ICMP,
 * other protocols): rules with a port range do not match them. */
static uint8_t evaluate(const struct serpens_flow *f, int fragment)
{
	uint8_t proto = f->proto;
	int ports = !fragment && (proto == 6 || proto == 17);
	uint16_t sp = serpens_ntohs(f->sport), dp = serpens_ntohs(f->dport);
	for (uint32_t r = 0; r < nrules; r++) {
		const struct fw_rule *x = &rules[r];
		if (x->family && x->family != f->family)
			continue;
		if (x->proto && x->proto != proto && !(x->proto == 1 && proto == 58))
			continue;
		if (x->has_ports && (!ports || sp < x->sport_lo || sp > x->sport_hi ||
				     dp < x->dport_lo || dp > x->dport_hi))
			continue;
		if (x->family && (!addr_in(f->src, x->src, x->src_mask) ||
				  !addr_in(f->dst, x->dst, x->dst_mask)))
			continue;
		return x->action;
	}
	return default_action;
}

static int state_api_present(const struct serpens_api *api)
{
	return api->abi_minor >= 1 &&
	       api->size >= offsetof(struct serpens_api, put_state) + sizeof(api->put_state) &&
	       api->create_table && api->get_state_bulk && api->put_state;
}

static int init(struct serpens_ctx *ctx, const void *config, uint32_t len)
{
	int cap = parse_config(config, len);
	if (cap < 0)
		return cap;
	/* The cache key must change with anything that changes verdicts: rules and default. */
	const uint8_t *c = config;
	rules_id = ctx->api->hash(c + 4, 4, 0x66770001u); /* default, rule count */
	if (len > FW_HDR_LEN)
		rules_id = ctx->api->hash(c + FW_HDR_LEN, len - FW_HDR_LEN, rules_id);
	c_allowed = ctx->api->counter_register(ctx, "allowed");
	c_denied = ctx->api->counter_register(ctx, "denied");
	c_malformed = ctx->api->counter_register(ctx, "malformed");
	c_cache_hits = ctx->api->counter_register(ctx, "cache_hits");
	table = -1;
	if (cap == 0)
		return 0;
	if (!state_api_present(ctx->api)) {
		ctx->api->log(ctx, SERPENS_LOG_WARN, "no state tables in this runtime: no verdict cache");
		return 0;
	}
	int t = ctx->api->create_table(ctx, "verdicts", SERPENS_PER_FLOW | SERPENS_READ | SERPENS_WRITE,
				       sizeof(struct serpens_flow), sizeof(struct fw_verdict),
				       (uint32_t)cap);
	if (t < 0)
		ctx->api->log(ctx, SERPENS_LOG_WARN,
			      "verdict cache: create_table(verdicts, capacity %d) failed (%d): no cache",
			      cap, t);
	else
		table = t;
	return 0;
}

static void process(struct serpens_ctx *ctx, struct serpens_batch *b)
{
	const void *keys[SERPENS_BURST];
	void *values[SERPENS_BURST];
	uint8_t pos[SERPENS_BURST]; /* key j belongs to packet idx[pos[j]] */
	uint32_t nkeys = 0;
	uint64_t allowed = 0, denied = 0, malformed = 0, hits = 0;

	for (uint32_t k = 0; k < b->count; k++) {
		uint32_t i = b->idx[k];
		const struct serpens_hdrs *h;
		uint8_t v;
		switch (serpens_hdrs(ctx, b, i, &h)) { /* parsed once for the SFC */
		case SERPENS_PARSE_OK:
			if (table >= 0) {
				keys[nkeys] = &h->flow;
				pos[nkeys++] = (uint8_t)k;
				continue; /* decided below */
			}
			v = evaluate(&h->flow, 0);
			break;
		case SERPENS_PARSE_FRAGMENT:
			v = evaluate(&h->flow, 1);
			break;
		case SERPENS_PARSE_NON_IP:
			v = default_action;
			break;
		default: /* TRUNCATED, BAD_HEADER, anything newer we do not know */
			serpens_drop(b, i);
			malformed++;
			continue;
		}
		if (v == ALLOW) {
			allowed++;
		} else {
			serpens_drop(b, i);
			denied++;
		}
	}

	if (nkeys) {
		ctx->api->get_state_bulk(ctx, table, keys, nkeys, values);
		for (uint32_t j = 0; j < nkeys; j++) {
			uint32_t i = b->idx[pos[j]];
			const struct fw_verdict *c = values[j];
			uint8_t v;
			if (c && c->rules_id == rules_id && c->verdict <= ALLOW) {
				v = c->verdict;
				hits++;
			} else {
				struct fw_verdict nv;
				v = evaluate(keys[j], 0);
				nv.rules_id = rules_id;
				nv.verdict = v;
				nv.pad[0] = nv.pad[1] = nv.pad[2] = 0;
				/* Full table (SERPENS_ENOSPC) or any other error: just do not cache. */
				(void)ctx->api->put_state(ctx, table, keys[j], &nv, (void **)0);
			}
			if (v == ALLOW) {
				allowed++;
			} else {
				serpens_drop(b, i);
				denied++;
			}
		}
	}
	serpens_count(ctx, c_allowed, allowed);
	serpens_count(ctx, c_denied, denied);
	serpens_count(ctx, c_malformed, malformed);
	serpens_count(ctx, c_cache_hits, hits);
}

static void fini(struct serpens_ctx *ctx)
{
	(void)ctx;
	table = -1;
}

SERPENS_NF(.name = "fw", .init = init, .process = process, .fini = fini,
	   .hdrs = SERPENS_HDRS_KEPT /* never writes a packet */);
