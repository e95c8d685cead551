/*
 * Packet bytes: header parse, Internet checksums, flow hash (pkt.h). Plain C over a frame's
 * bytes; no mbuf, no DPDK.
 */
#include <stdint.h>
#include <string.h>

#include "pkt.h"

/* ---- headers ---------------------------------------------------------------------------- */

#define ETH_P_IPV4 0x0800
#define ETH_P_IPV6 0x86DD
#define ETH_P_VLAN 0x8100
#define ETH_P_QINQ 0x88A8

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }

/* L4 header length needed to read ports/ids, or 0 for protocols we do not parse. */
static uint32_t l4_min_len(uint8_t proto)
{
	switch (proto) {
	case 6: return 20;  /* TCP: data offset checked below */
	case 17: return 8;  /* UDP */
	case 1: case 58: return 8; /* ICMP, ICMPv6 */
	default: return 0;
	}
}

static int parse_l4(const uint8_t *f, uint32_t end, uint32_t off, struct serpens_hdrs *h)
{
	uint8_t proto = h->flow.proto;
	uint32_t need = l4_min_len(proto);

	h->l4_off = off;
	if (need == 0) { /* other protocol: payload starts right after the IP headers */
		h->payload_off = off;
		h->payload_len = end - off;
		return SERPENS_PARSE_OK;
	}
	if (off + need > end)
		return SERPENS_PARSE_TRUNCATED;
	const uint8_t *l4 = f + off;
	uint32_t hl = need;
	if (proto == 6) {
		hl = (l4[12] >> 4) * 4u;
		if (hl < 20)
			return SERPENS_PARSE_BAD_HEADER;
		if (off + hl > end)
			return SERPENS_PARSE_TRUNCATED;
	}
	if (proto == 6 || proto == 17) {
		memcpy(&h->flow.sport, l4, 2);
		memcpy(&h->flow.dport, l4 + 2, 2);
	} else if ((proto == 1 && (l4[0] == 8 || l4[0] == 0)) ||
		   (proto == 58 && (l4[0] == 128 || l4[0] == 129))) {
		memcpy(&h->flow.sport, l4 + 4, 2); /* echo identifier */
	}
	h->payload_off = off + hl;
	h->payload_len = end - (off + hl);
	return SERPENS_PARSE_OK;
}

static int parse_ipv4(const uint8_t *f, uint32_t len, uint32_t off, struct serpens_hdrs *h)
{
	if (off + 20 > len)
		return SERPENS_PARSE_TRUNCATED;
	const uint8_t *ip = f + off;
	uint32_t ihl = (ip[0] & 0xF) * 4u, tot = rd16(ip + 2);
	if ((ip[0] >> 4) != 4 || ihl < 20 || tot < ihl)
		return SERPENS_PARSE_BAD_HEADER;
	if (off + ihl > len || off + tot > len)
		return SERPENS_PARSE_TRUNCATED;
	h->family = 4;
	h->l3_len = tot;
	h->flow.family = 4;
	h->flow.proto = ip[9];
	memcpy(h->flow.src, ip + 12, 4);
	memcpy(h->flow.dst, ip + 16, 4);
	if (ihl > 20)
		h->flags |= SERPENS_HDR_IPOPTS;
	uint16_t frag = rd16(ip + 6);
	if (frag & 0x1FFF)
		return SERPENS_PARSE_FRAGMENT;
	if (frag & 0x2000)
		h->flags |= SERPENS_HDR_FRAGMENT;
	return parse_l4(f, off + tot, off + ihl, h);
}

static int parse_ipv6(const uint8_t *f, uint32_t len, uint32_t off, struct serpens_hdrs *h)
{
	if (off + 40 > len)
		return SERPENS_PARSE_TRUNCATED;
	const uint8_t *ip = f + off;
	if ((ip[0] >> 4) != 6)
		return SERPENS_PARSE_BAD_HEADER;
	uint32_t end = off + 40 + rd16(ip + 4);
	if (end > len)
		return SERPENS_PARSE_TRUNCATED;
	h->family = 6;
	h->l3_len = end - off;
	h->flow.family = 6;
	memcpy(h->flow.src, ip + 8, 16);
	memcpy(h->flow.dst, ip + 24, 16);

	uint8_t nh = ip[6];
	uint32_t p = off + 40;
	for (int hops = 0; hops < 8; hops++) { /* RFC 8200 §4: skip extension headers */
		if (nh == 0 || nh == 43 || nh == 60) {
			if (p + 8 > end)
				return SERPENS_PARSE_TRUNCATED;
			h->flags |= SERPENS_HDR_IPOPTS;
			nh = f[p];
			p += (f[p + 1] + 1u) * 8u;
			continue;
		}
		if (nh == 44) { /* fragment header */
			if (p + 8 > end)
				return SERPENS_PARSE_TRUNCATED;
			uint16_t fo = rd16(f + p + 2);
			nh = f[p];
			p += 8;
			if (fo & 0xFFF8) {
				h->flow.proto = nh;
				return SERPENS_PARSE_FRAGMENT;
			}
			if (fo & 1)
				h->flags |= SERPENS_HDR_FRAGMENT;
			continue;
		}
		break;
	}
	if (p > end)
		return SERPENS_PARSE_TRUNCATED;
	h->flow.proto = nh;
	return parse_l4(f, end, p, h);
}

/* A common frame (pkt.h serpens_common_frame) in one pass: exactly what
 * serpens_parse_general gives it (tests/test_nf_api.py compares the two on every kind of
 * frame and on mutated ones). 1 if it was one; 0, with nothing written, if not. */
static inline int parse_common(const uint8_t *f, uint32_t len, struct serpens_hdrs *h)
{
	uint32_t hl = serpens_common_frame(f, len);
	if (!hl)
		return 0;
	uint32_t tot = rd16(f + 14 + 2);
	memset(h, 0, sizeof(*h));
	h->ethertype = ETH_P_IPV4;
	h->l3_off = 14;
	h->l4_off = 14 + 20;
	h->payload_off = (uint16_t)(14 + 20 + hl);
	h->payload_len = tot - 20 - hl;
	h->l3_len = tot;
	serpens_common_flow(f, h);
	return 1;
}

int serpens_parse(const uint8_t *f, uint32_t len, struct serpens_hdrs *h)
{
	return parse_common(f, len, h) ? SERPENS_PARSE_OK : serpens_parse_general(f, len, h);
}

int serpens_parse_general(const uint8_t *f, uint32_t len, struct serpens_hdrs *h)
{
	memset(h, 0, sizeof(*h));
	if (len < 14)
		return SERPENS_PARSE_TRUNCATED;
	uint32_t off = 12;
	uint16_t et = rd16(f + off);
	for (int tags = 0; (et == ETH_P_VLAN || et == ETH_P_QINQ) && tags < 2; tags++) {
		if (off + 6 > len)
			return SERPENS_PARSE_TRUNCATED;
		h->flags |= SERPENS_HDR_VLAN;
		off += 4;
		et = rd16(f + off);
	}
	off += 2;
	h->ethertype = et;
	h->l3_off = off;
	if (et == ETH_P_IPV4)
		return parse_ipv4(f, len, off, h);
	if (et == ETH_P_IPV6)
		return parse_ipv6(f, len, off, h);
	return SERPENS_PARSE_NON_IP;
}

/* ---- checksums (RFC 1071, RFC 1624) ----------------------------------------------------- */

static uint32_t fold16(uint64_t acc)
{
	while (acc >> 16)
		acc = (acc & 0xFFFF) + (acc >> 16);
	return (uint32_t)acc;
}

/* Returns an accumulator (host-order value of the one's-complement sum of big-endian words). */
uint32_t serpens_csum_partial(const void *data, uint32_t len, uint32_t sum)
{
	const uint8_t *p = data;
	uint64_t acc = 0;

	/* The one's-complement sum is byte-order independent (RFC 1071 §2B): add little-endian
	 * 32-bit halves, fold, and swap once at the end. */
	while (len >= 8) {
		uint64_t w;
		memcpy(&w, p, 8);
		acc += (w & 0xFFFFFFFFu) + (w >> 32);
		p += 8;
		len -= 8;
	}
	while (len >= 2) {
		uint16_t w;
		memcpy(&w, p, 2);
		acc += w;
		p += 2;
		len -= 2;
	}
	if (len)
		acc += *p; /* a trailing byte is the high byte of a big-endian word */
	return fold16((uint64_t)sum + __builtin_bswap16((uint16_t)fold16(acc)));
}

/* Fold and complement: the checksum as stored in a header (network order). */
uint16_t serpens_csum_fold(uint32_t sum)
{
	return __builtin_bswap16((uint16_t)~fold16(sum));
}

uint16_t serpens_csum_update(uint16_t csum, const void *old_bytes, const void *new_bytes,
			     uint32_t len)
{
	/* RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m') */
	uint64_t sum = (uint16_t)~__builtin_bswap16(csum);
	const uint8_t *o = old_bytes, *n = new_bytes;
	for (uint32_t i = 0; i + 1 < len; i += 2)
		sum += (uint16_t)~rd16(o + i) + (uint32_t)rd16(n + i);
	return serpens_csum_fold(fold16(sum));
}

uint16_t serpens_l4_csum(const uint8_t *f, const struct serpens_hdrs *h)
{
	uint8_t proto = h->flow.proto;
	if (!h->l4_off || (proto != 6 && proto != 17 && proto != 1 && proto != 58))
		return 0;
	uint32_t l4len = h->l3_off + h->l3_len - h->l4_off;
	uint32_t csum_at = proto == 6 ? 16 : proto == 17 ? 6 : 2;
	const uint8_t *ip = f + h->l3_off, *l4 = f + h->l4_off;
	uint32_t sum = 0;

	if (l4len < csum_at + 2)
		return 0;
	if (proto != 1) { /* pseudo-header: RFC 793 §3.1, RFC 768, RFC 8200 §8.1 */
		sum = h->family == 4 ? serpens_csum_partial(ip + 12, 8, 0) : serpens_csum_partial(ip + 8, 32, 0);
		sum = fold16((uint64_t)sum + proto + (l4len >> 16) + (l4len & 0xFFFF));
	}
	sum = serpens_csum_partial(l4, csum_at, sum);
	sum = serpens_csum_partial(l4 + csum_at + 2, l4len - csum_at - 2, sum);
	uint16_t c = serpens_csum_fold(sum);
	if (proto == 17 && c == 0)
		c = 0xFFFF; /* RFC 768: a computed zero is sent as all ones */
	return c;
}

/* ---- hash ------------------------------------------------------------------------------- */

uint32_t serpens_hash_crc(const void *key, uint32_t len, uint32_t seed)
{
	return serpens_hash_crc_inline(key, len, seed);
}
