/*
 * crash -- a test NF that misbehaves on request, to test that the pool survives it.
 *
 * The first byte of the UDP payload selects: 'K' dereferences NULL (the process dies with
 * SIGSEGV), 'S' spins for 2 ms per packet (so a test can catch the NF mid-batch), anything
 * else forwards.
 */
#include <serpens/nf.h>

static void process(struct serpens_ctx *ctx, struct serpens_batch *b)
{
	for (uint32_t k = 0; k < b->count; k++) {
		uint32_t i = b->idx[k];
		struct serpens_hdrs h;
		if (ctx->api->parse(b->data[i], b->len[i], &h) != SERPENS_PARSE_OK || h.payload_len < 1)
			continue;
		uint8_t cmd = b->data[i][h.payload_off];
		if (cmd == 'K')
			*(volatile int *)0 = 1;
		if (cmd == 'S') {
			uint64_t until = ctx->api->now_ns() + 2000000;
			while (ctx->api->now_ns() < until)
				;
		}
	}
}

SERPENS_NF(.name = "crash", .process = process);
