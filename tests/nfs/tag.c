/*
 * tag -- a test NF that writes the id of the instance that processed a packet into the first
 * 4 bytes of its UDP payload, so tests can see which instance handled each packet.
 */
#include <serpens/nf.h>

static void process(struct serpens_ctx *ctx, struct serpens_batch *b)
{
	for (uint32_t k = 0; k < b->count; k++) {
		uint32_t i = b->idx[k];
		struct serpens_hdrs h;
		if (ctx->api->parse(b->data[i], b->len[i], &h) == SERPENS_PARSE_OK && h.payload_len >= 4)
			memcpy(b->data[i] + h.payload_off, &ctx->instance_id, 4);
	}
}

SERPENS_NF(.name = "tag", .process = process);
