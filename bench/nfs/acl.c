/*
 * acl -- the benchmarks' firewall: first-match IPv4 5-tuple rules, default allow.
 *
 * Config: up to 64 rules of 16 bytes each: {src(4), src_mask(4), dst(4), proto(1), action(1),
 * dport(2, network order; 0 = any)}; proto 0 = any; action 0 = allow, 1 = deny. Non-IPv4 and
 * malformed frames are dropped and counted ("malformed"). The stock FW (nfs/fw) adds IPv6,
 * port ranges and a per-flow verdict cache; this one stays small so startup measures the
 * platform, not the NF.
 */
#include <serpens/nf.h>

struct rule {
	uint32_t src, src_mask, dst;
	uint8_t proto, action;
	uint16_t dport;
};
_Static_assert(sizeof(struct rule) == 16, "rule layout is the config format");

static struct rule rules[64];
static uint32_t nrules;
static int c_denied, c_malformed;

static int init(struct serpens_ctx *ctx, const void *config, uint32_t len)
{
	if (len % sizeof(struct rule) || len / sizeof(struct rule) > 64)
		return -22;
	nrules = len / sizeof(struct rule);
	memcpy(rules, config, len);
	c_denied = ctx->api->counter_register(ctx, "denied");
	c_malformed = ctx->api->counter_register(ctx, "malformed");
	return 0;
}

static int denied(const struct serpens_flow *f)
{
	uint32_t src, dst;
	memcpy(&src, f->src, 4);
	memcpy(&dst, f->dst, 4);
	for (uint32_t r = 0; r < nrules; r++) {
		const struct rule *x = &rules[r];
		if ((src & x->src_mask) == x->src && (!x->dst || dst == x->dst) &&
		    (!x->proto || x->proto == f->proto) && (!x->dport || x->dport == f->dport))
			return x->action;
	}
	return 0;
}

static void process(struct serpens_ctx *ctx, struct serpens_batch *b)
{
	for (uint32_t k = 0; k < b->count; k++) {
		uint32_t i = b->idx[k];
		struct serpens_hdrs h;
		if (ctx->api->parse(b->data[i], b->len[i], &h) != SERPENS_PARSE_OK || h.family != 4) {
			serpens_drop(b, i);
			serpens_count(ctx, c_malformed, 1);
		} else if (denied(&h.flow)) {
			serpens_drop(b, i);
			serpens_count(ctx, c_denied, 1);
		}
	}
}

SERPENS_NF(.name = "acl", .init = init, .process = process);
