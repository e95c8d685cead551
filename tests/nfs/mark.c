/*
 * mark -- a test NF that records its passage in the packet, so tests can check packet by
 * packet which NFs a packet went through.
 *
 * Config: 2 bytes {id, decide}. The UDP payload is a trace: payload[0] = entries so far,
 * payload[1 + k] = id of the k-th NF passed. With decide = 1 the NF also chooses the output
 * port from payload[31]: 0xFF drops the packet, anything else selects port payload[31] % 8
 * (ports the SFC did not wire mean drop, as nf.h says). With decide = 2 it writes the label
 * payload[29..30] (little-endian) into the batch as it is, right or wrong: the chainer must
 * refuse labels that do not lead forward. With decide = 3 it scribbles over the batch's
 * bookkeeping when done (count, n, idx: what the runtime and the observer must not trust
 * after the call). Frames without a 32-byte UDP payload are dropped and counted as "short".
 */
#include <serpens/nf.h>

static uint8_t my_id, decide;
static int c_marked, c_short;

static int init(struct serpens_ctx *ctx, const void *config, uint32_t len)
{
	const uint8_t *cfg = config;
	if (len < 2)
		return -22;
	my_id = cfg[0];
	decide = cfg[1];
	c_marked = ctx->api->counter_register(ctx, "marked");
	c_short = ctx->api->counter_register(ctx, "short");
	return 0;
}

static void process(struct serpens_ctx *ctx, struct serpens_batch *b)
{
	for (uint32_t k = 0; k < b->count; k++) {
		uint32_t i = b->idx[k];
		struct serpens_hdrs h;
		if (ctx->api->parse(b->data[i], b->len[i], &h) != SERPENS_PARSE_OK ||
		    h.flow.proto != 17 || h.payload_len < 32) {
			serpens_drop(b, i);
			serpens_count(ctx, c_short, 1);
			continue;
		}
		uint8_t *trace = b->data[i] + h.payload_off;
		if (trace[0] < 30)
			trace[1 + trace[0]++] = my_id;
		serpens_count(ctx, c_marked, 1);
		if (decide == 2) {
			b->labels[i] = (serpens_label_t)(trace[29] | trace[30] << 8);
		} else if (decide) {
			if (trace[31] == 0xFF)
				serpens_drop(b, i);
			else
				serpens_forward(ctx, b, i, trace[31] % 8);
		}
	}
	if (decide == 3) {
		for (uint32_t k = 0; k < SERPENS_BURST; k++)
			b->idx[k] = (uint8_t)(200 + k);
		b->count = 255;
		b->n = 255;
	}
}

SERPENS_NF(.name = "mark", .init = init, .process = process);
