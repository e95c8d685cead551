/*
 * Packet bytes: header parse, Internet checksums (RFC 1071, RFC 1624), flow hash. Plain C over
 * a frame's bytes (no mbuf, no DPDK), shared by the NF API (serpens/nf.h hands these to NFs),
 * the chainer's hash step, the router's flow table and the state tables' key hash.
 */
#ifndef SERPENS_PKT_H
#define SERPENS_PKT_H

#include <nmmintrin.h>
#include <stdint.h>
#include <string.h>

#include "serpens/nf.h"

/* serpens_api.parse: fills h, returns a serpens_parse_result. Common frames (untagged IPv4
 * UDP/TCP without options or fragmentation) take a straight path; the rest, and the tests
 * that compare the two, serpens_parse_general. */
int serpens_parse(const uint8_t *frame, uint32_t len, struct serpens_hdrs *h);
int serpens_parse_general(const uint8_t *frame, uint32_t len, struct serpens_hdrs *h);

/* A common frame: untagged IPv4 without options, not a fragment (neither MF nor an offset),
 * UDP or TCP, its lengths consistent (the L4 header inside the IP length, that inside the
 * frame). Its L4 header's length (UDP 8, TCP 20-60), or 0 if it is not one. Reads nothing
 * past `len`. The runtime's parse (pkt.c) and the router's classification (classify.h)
 * read such frames straight, the rest with the general parser. */
static inline uint32_t serpens_common_frame(const uint8_t *f, uint32_t len)
{
	if (len < 14 + 20 || f[12] != 0x08 || f[13] != 0x00 || f[14] != 0x45)
		return 0;
	const uint8_t *ip = f + 14;
	uint32_t tot = (uint32_t)ip[2] << 8 | ip[3];
	if ((ip[6] & 0x3F) || ip[7] || 14 + tot > len)
		return 0;
	if (ip[9] == 17)
		return tot >= 20 + 8 ? 8 : 0;
	if (ip[9] != 6 || tot < 20 + 20)
		return 0;
	uint32_t hl = (ip[20 + 12] >> 4) * 4u;
	return hl >= 20 && 20 + hl <= tot ? hl : 0;
}

/* A common frame's family and flow (protocol, addresses, ports) into h, as the general
 * parser writes them; nothing else. */
static inline void serpens_common_flow(const uint8_t *f, struct serpens_hdrs *h)
{
	const uint8_t *ip = f + 14;
	h->family = 4;
	h->flow.family = 4;
	h->flow.proto = ip[9];
	memcpy(h->flow.src, ip + 12, 4);
	memcpy(h->flow.dst, ip + 16, 4);
	memcpy(&h->flow.sport, ip + 20, 2);
	memcpy(&h->flow.dport, ip + 22, 2);
}

/* serpens_api.csum_*: see serpens/nf.h. */
uint32_t serpens_csum_partial(const void *data, uint32_t len, uint32_t sum);
uint16_t serpens_csum_fold(uint32_t sum);
uint16_t serpens_csum_update(uint16_t csum, const void *old_bytes, const void *new_bytes,
			     uint32_t len);
uint16_t serpens_l4_csum(const uint8_t *frame, const struct serpens_hdrs *h);

/* serpens_api.hash: CRC32-C finished with a multiply-xorshift (well mixed for `% n`). */
uint32_t serpens_hash_crc(const void *key, uint32_t len, uint32_t seed);

/* Its body, for callers that hash many keys of one constant size (the state tables' bulk
 * lookups): inlined with a constant `len`, the loop unrolls to straight CRC steps and the keys'
 * hashes overlap instead of waiting on one call after another. */
static inline __attribute__((always_inline)) uint32_t
serpens_hash_crc_inline(const void *key, uint32_t len, uint32_t seed)
{
	const uint8_t *p = key;
	uint64_t c = seed;
	while (len >= 8) {
		uint64_t w;
		memcpy(&w, p, 8);
		c = _mm_crc32_u64(c, w);
		p += 8;
		len -= 8;
	}
	uint32_t c32 = (uint32_t)c;
	/* The tail in 4- and 2-byte steps: crc32 of a little-endian word is crc32 of its bytes in
	 * memory order, so the value is the byte loop's (a 20-byte key: one step, not four). */
	if (len >= 4) {
		uint32_t w;
		memcpy(&w, p, 4);
		c32 = _mm_crc32_u32(c32, w);
		p += 4;
		len -= 4;
	}
	if (len >= 2) {
		uint16_t w;
		memcpy(&w, p, 2);
		c32 = _mm_crc32_u16(c32, w);
		p += 2;
		len -= 2;
	}
	if (len)
		c32 = _mm_crc32_u8(c32, *p);
	/* CRC32-C alone mixes low bits poorly for `% n`: finish with a multiply-xorshift. */
	c32 ^= c32 >> 16;
	c32 *= 0x45d9f3bu;
	c32 ^= c32 >> 16;
	return c32;
}

#endif
