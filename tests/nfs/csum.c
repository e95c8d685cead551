/*
 * csum -- a test NF for the checksum helpers of the context table.
 *
 * Config byte 0: rewrite the IPv4 source address to 192.0.2.1 and the TCP/UDP source port to
 * 4242, updating the IP and L4 checksums incrementally (RFC 1624), as NAT does.
 * Config byte 1: recompute the IPv4 header checksum (csum_partial + csum_fold) and the L4
 * checksum (l4_csum) from scratch; works for IPv6 too.
 * Packets the parser refuses are dropped.
 */
#include <serpens/nf.h>

static uint8_t mode;

static int init(struct serpens_ctx *ctx, const void *config, uint32_t len)
{
	mode = len ? ((const uint8_t *)config)[0] : 0;
	return 0;
}

static uint16_t *l4_csum_field(uint8_t *f, const struct serpens_hdrs *h)
{
	uint32_t at = h->flow.proto == 6 ? 16 : h->flow.proto == 17 ? 6 : 2;
	return (uint16_t *)(f + h->l4_off + at);
}

static void rewrite(struct serpens_ctx *ctx, uint8_t *f, const struct serpens_hdrs *h)
{
	const struct serpens_api *api = ctx->api;
	uint8_t *ip = f + h->l3_off;
	uint8_t new_ip[4] = {192, 0, 2, 1};
	uint16_t new_port = serpens_htons(4242);
	uint16_t *ipc = (uint16_t *)(ip + 10);
	uint16_t *l4c = l4_csum_field(f, h);
	int has_l4sum = h->flow.proto == 6 || (h->flow.proto == 17 && *l4c != 0);

	*ipc = api->csum_update(*ipc, ip + 12, new_ip, 4);
	if (has_l4sum) {
		*l4c = api->csum_update(*l4c, ip + 12, new_ip, 4); /* pseudo-header */
		*l4c = api->csum_update(*l4c, f + h->l4_off, &new_port, 2);
	}
	memcpy(ip + 12, new_ip, 4);
	memcpy(f + h->l4_off, &new_port, 2);
}

static void recompute(struct serpens_ctx *ctx, uint8_t *f, const struct serpens_hdrs *h)
{
	const struct serpens_api *api = ctx->api;
	if (h->family == 4) {
		uint8_t *ip = f + h->l3_off;
		uint32_t ihl = (ip[0] & 15) * 4;
		ip[10] = ip[11] = 0;
		uint16_t c = api->csum_fold(api->csum_partial(ip, ihl, 0));
		memcpy(ip + 10, &c, 2);
	}
	uint16_t c = api->l4_csum(f, h);
	memcpy(l4_csum_field(f, h), &c, 2);
}

static void process(struct serpens_ctx *ctx, struct serpens_batch *b)
{
	for (uint32_t k = 0; k < b->count; k++) {
		uint32_t i = b->idx[k];
		struct serpens_hdrs h;
		if (ctx->api->parse(b->data[i], b->len[i], &h) != SERPENS_PARSE_OK || !h.l4_off) {
			serpens_drop(b, i);
			continue;
		}
		if (mode == 0 && h.family == 4 && (h.flow.proto == 6 || h.flow.proto == 17))
			rewrite(ctx, b->data[i], &h);
		else if (mode == 1)
			recompute(ctx, b->data[i], &h);
	}
}

SERPENS_NF(.name = "csum", .init = init, .process = process);
