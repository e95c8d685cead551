/* Forwards every packet (the chainer already labelled it for our default port) and counts it. */
#include <serpens/nf.h>

static int seen = -1;

static int init(struct serpens_ctx *c, const void *config, uint32_t config_len)
{
	(void)config;
	(void)config_len;
	seen = c->api->counter_register(c, "seen");
	return seen < 0 ? seen : 0;
}

static void process(struct serpens_ctx *c, struct serpens_batch *b)
{
	serpens_count(c, seen, b->count);
}

SERPENS_NF(.name = "pass", .init = init, .process = process);
