/*
 * budget -- a test NF for release-consistency tables: a shared budget of N tokens (config:
 * uint64 N) in table "tokens"; every packet spends one token from this instance's share; an
 * empty share calls trigger to rebalance, and a packet with no token left is dropped
 * ("exhausted"). However many instances run, at most N packets ever pass. An optional second
 * uint64 in the config is a rebalance period in ns (timer).
 */
#include <serpens/nf.h>

static int t_tokens, c_exhausted, c_triggers;
static const uint32_t key = 0x6b6f74;

static int init(struct serpens_ctx *ctx, const void *config, uint32_t len)
{
	uint64_t n, period = 0;
	if (len != 8 && len != 16)
		return SERPENS_EINVAL;
	memcpy(&n, config, 8);
	if (len == 16)
		memcpy(&period, (const uint8_t *)config + 8, 8);
	t_tokens = ctx->api->create_table(ctx, "tokens",
					  SERPENS_GLOBAL | SERPENS_WRITE | SERPENS_RELEASE, 4, 8, 4);
	if (t_tokens < 0)
		return t_tokens;
	if (period && ctx->api->timer(ctx, t_tokens, NULL, period))
		return SERPENS_EINVAL;
	c_exhausted = ctx->api->counter_register(ctx, "exhausted");
	c_triggers = ctx->api->counter_register(ctx, "triggers");
	return ctx->api->put_state(ctx, t_tokens, &key, &n, NULL); /* the pool, if new */
}

static void process(struct serpens_ctx *ctx, struct serpens_batch *b)
{
	const struct serpens_api *api = ctx->api;
	uint64_t *share = api->get_state(ctx, t_tokens, &key);

	for (uint32_t k = 0; k < b->count; k++) {
		if (share && *share == 0) {
			serpens_count(ctx, c_triggers, 1);
			api->trigger(ctx, t_tokens, &key);
			share = api->get_state(ctx, t_tokens, &key);
		}
		if (!share || *share == 0) {
			serpens_drop(b, b->idx[k]);
			serpens_count(ctx, c_exhausted, 1);
			continue;
		}
		(*share)--;
	}
}

SERPENS_NF(.name = "budget", .init = init, .process = process);
