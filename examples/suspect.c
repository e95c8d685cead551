/*
 * suspect -- an NF written by a user: splits traffic into "clean" (port 0) and "suspicious"
 * (port 1), for the dynamic SFC of examples/dynamic-sfc.yaml (FW, then IDS for suspicious
 * packets and MON for the rest, then NAT).
 *
 * Suspicious: a TCP or UDP packet to a port other than 53, 80 and 443, one whose L4 payload
 * is longer than `max_payload` bytes (config: 2 bytes, little-endian; default 512: long DNS
 * messages hint at tunnelling), and any frame the parser cannot read. Non-IP frames and
 * other protocols are clean. Packets are never modified.
 * Counters: clean, suspicious.
 */
#include <serpens/nf.h>

static uint32_t max_payload = 512;
static int c_clean, c_suspicious;

static int init(struct serpens_ctx *ctx, const void *config, uint32_t len)
{
	const uint8_t *cfg = config;
	if (len >= 2)
		max_payload = (uint32_t)cfg[0] | (uint32_t)cfg[1] << 8;
	c_clean = ctx->api->counter_register(ctx, "clean");
	c_suspicious = ctx->api->counter_register(ctx, "suspicious");
	return c_clean < 0 || c_suspicious < 0 ? -22 : 0;
}

static int suspicious(const struct serpens_hdrs *h, int parsed)
{
	if (parsed == SERPENS_PARSE_NON_IP)
		return 0;
	if (parsed != SERPENS_PARSE_OK)
		return 1;
	if (h->flow.proto != 6 && h->flow.proto != 17)
		return 0;
	uint16_t port = (uint16_t)(h->flow.dport >> 8 | h->flow.dport << 8);
	if (port != 53 && port != 80 && port != 443)
		return 1;
	return h->payload_len > max_payload;
}

static void process(struct serpens_ctx *ctx, struct serpens_batch *b)
{
	uint32_t bad = 0;
	for (uint32_t k = 0; k < b->count; k++) {
		uint32_t i = b->idx[k];
		struct serpens_hdrs h;
		int parsed = ctx->api->parse(b->data[i], b->len[i], &h);
		if (suspicious(&h, parsed)) {
			serpens_forward(ctx, b, i, 1);
			bad++;
		}
	}
	serpens_count(ctx, c_suspicious, bad);
	serpens_count(ctx, c_clean, b->count - bad);
}

SERPENS_NF(.name = "suspect", .init = init, .process = process);
