/*
 * stateful -- a test NF for the state API: counts packets per flow (per-flow/write table
 * "flows"), all packets in a shared counter (global/write/eventual table "total", via
 * state_fetch_add), and checks that a global/read table ("ro", filled in init) refuses writes
 * after init, and counts packets per source address in an eventual table ("hosts", merged
 * every 5 ms). Counters: new_flows, ro_refused, full (per-flow table full: not counted).
 */
#include <serpens/nf.h>

static int t_flows, t_total, t_ro, t_hosts;
static int c_new, c_refused, c_full;

static int init(struct serpens_ctx *ctx, const void *config, uint32_t len)
{
	const struct serpens_api *api = ctx->api;
	uint32_t cap = len >= 4 ? *(const uint32_t *)config : 1024;
	uint64_t answer = 42;
	uint32_t zero = 0;

	t_flows = api->create_table(ctx, "flows", SERPENS_PER_FLOW | SERPENS_READ | SERPENS_WRITE,
				    sizeof(struct serpens_flow), sizeof(uint64_t), cap);
	t_total = api->create_table(ctx, "total", SERPENS_GLOBAL | SERPENS_WRITE | SERPENS_EVENTUAL,
				    4, sizeof(uint64_t), 16);
	t_ro = api->create_table(ctx, "ro", SERPENS_GLOBAL | SERPENS_READ, 4, 8, 4);
	/* eventual: per-source packet counts, merged every 5 ms */
	t_hosts = api->create_table(ctx, "hosts", SERPENS_GLOBAL | SERPENS_WRITE | SERPENS_EVENTUAL,
				    4, sizeof(uint64_t), 64);
	if (t_hosts < 0 || api->timer(ctx, t_hosts, NULL, 5000000))
		return -22;
	if (t_flows < 0 || t_total < 0 || t_ro < 0)
		return t_flows < 0 ? t_flows : t_total < 0 ? t_total : t_ro;
	if (api->put_state(ctx, t_ro, &zero, &answer, NULL))
		return -5;
	c_new = api->counter_register(ctx, "new_flows");
	c_refused = api->counter_register(ctx, "ro_refused");
	c_full = api->counter_register(ctx, "full");
	return 0;
}

static void process(struct serpens_ctx *ctx, struct serpens_batch *b)
{
	const struct serpens_api *api = ctx->api;
	struct serpens_flow keys[SERPENS_BURST];
	const void *kp[SERPENS_BURST];
	void *vals[SERPENS_BURST];
	uint32_t all = 0x616c6c;
	uint64_t one = 1, zero = 0, before;

	for (uint32_t k = 0; k < b->count; k++) {
		struct serpens_hdrs h;
		uint32_t i = b->idx[k];
		if (api->parse(b->data[i], b->len[i], &h) != SERPENS_PARSE_OK)
			memset(&h.flow, 0, sizeof(h.flow));
		keys[k] = h.flow;
		kp[k] = &keys[k];
		uint64_t *n = api->get_state(ctx, t_hosts, h.flow.src);
		if (!n && api->put_state(ctx, t_hosts, h.flow.src, &zero, (void **)&n) != 0)
			n = NULL;
		if (n)
			(*n)++;
	}
	api->get_state_bulk(ctx, t_flows, kp, b->count, vals);
	for (uint32_t k = 0; k < b->count; k++) {
		/* A flow seen twice in one batch was inserted by its first packet. */
		void *v = vals[k] ? vals[k] : api->get_state(ctx, t_flows, &keys[k]);
		if (v) {
			(*(uint64_t *)v)++;
		} else if (api->put_state(ctx, t_flows, &keys[k], &one, NULL) == SERPENS_ENOSPC) {
			serpens_count(ctx, c_full, 1);
		} else {
			serpens_count(ctx, c_new, 1);
		}
	}
	api->state_fetch_add(ctx, t_total, &all, b->count, &before);
	if (api->put_state(ctx, t_ro, &all, &zero, NULL) == SERPENS_EPERM)
		serpens_count(ctx, c_refused, 1);
}

SERPENS_NF(.name = "stateful", .init = init, .process = process);
