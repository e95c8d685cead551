/*
 * Which SFC a frame belongs to, and its flow hash: one home for the match semantics the router
 * and the gateway share (router.h "Theory of operation"). A VLAN ID mapped to an SFC (an SFC
 * tag an upstream hop put on the frame) wins, else the first matching rule, else the default
 * SFC. Rules are IPv4 or IPv6 prefixes, protocol and port ranges (struct serpens_match_rule). The flow hash is symmetric (a flow
 * and its reverse hash alike) over the 5-tuple, or over the L2 header for non-IP frames.
 */
#ifndef SERPENS_CLASSIFY_H
#define SERPENS_CLASSIFY_H

#include <stdint.h>
#include <string.h>

#include <nmmintrin.h>

#include <rte_byteorder.h>

#include "pkt.h"

#define SERPENS_VLAN_IDS 4096 /* 12-bit VLAN IDs: tag_sfc[] */

/* First match wins. A rule with addresses is of their family (4 or 6) and takes only frames of
 * it; one without (family 0) takes IPv4 and IPv6 frames alike, and a non-IP frame only if it
 * asks for no protocol and no ports. Addresses and masks in network order (IPv4: the first 4
 * bytes, like serpens_flow); ports in host order, inclusive. */
struct serpens_match_rule {
	uint8_t src[16], src_mask[16], dst[16], dst_mask[16];
	uint16_t sport_lo, sport_hi, dport_lo, dport_hi;
	uint8_t family;              /* 4, 6, or 0: any */
	uint8_t proto;               /* 0: any */
	int8_t in_port;              /* index into the caller's ports[], -1: any */
	uint16_t sfc;
};

/* The tables classification reads (fields of the router or the gateway). Their rules are
 * double-buffered (rules[2][], nrules[2], rules_live): the control side writes the idle table,
 * then switches rules_live with one store and waits for the loop to come round before writing
 * again, so a frame meets the old rules or the new, never none or a mix. */
struct serpens_match_tables {
	const struct serpens_match_rule *rules;
	uint32_t nrules;
	int32_t default_sfc;         /* -1: none */
	const uint8_t *tag_sfc;      /* [SERPENS_VLAN_IDS]: VLAN ID -> SFC + 1 (0: not a tag) */
};

/* serpens_hash_crc (pkt.c) inlined, 4 bytes per CRC step: the same value (the CRC32-C
 * instruction takes a word's bytes in memory order), without a call and a byte-wise chain of
 * dependent steps per address: the hash is on every packet's path through the router. */
static inline uint32_t serpens_crc_mixed(const uint8_t *p, uint32_t len, uint32_t seed)
{
	uint32_t c = seed;
	for (; len >= 4; len -= 4, p += 4) {
		uint32_t w;
		memcpy(&w, p, 4);
		c = _mm_crc32_u32(c, w);
	}
	while (len--)
		c = _mm_crc32_u8(c, *p++);
	c ^= c >> 16;
	c *= 0x45d9f3bu;
	c ^= c >> 16;
	return c;
}

static inline uint32_t serpens_flow_hash(const uint8_t *f, uint32_t len,
					 const struct serpens_hdrs *h, int parsed)
{
	uint32_t hash;
	if (parsed == SERPENS_PARSE_NON_IP || !h->family) {
		hash = serpens_crc_mixed(f, len < 14 ? len : 14, 7);
	} else {
		uint32_t n = h->family == 4 ? 4 : 16;
		uint32_t a = serpens_crc_mixed(h->flow.src, n, h->flow.sport);
		uint32_t b = serpens_crc_mixed(h->flow.dst, n, h->flow.dport);
		hash = (a ^ b) * 0x9E3779B1u + h->flow.proto;
	}
	return hash ? hash : 1;
}

/* The flow hash of a frame on its own (a decapsulated inner frame). */
static inline uint32_t serpens_frame_flow_hash(const uint8_t *f, uint32_t len)
{
	struct serpens_hdrs h;
	int parsed = serpens_parse(f, len, &h);
	return serpens_flow_hash(f, len, &h, parsed);
}

static inline int serpens_prefix_matches(const uint8_t *addr, const uint8_t *net,
					 const uint8_t *mask, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++)
		if ((addr[i] & mask[i]) != net[i])
			return 0;
	return 1;
}

static inline int serpens_rule_matches(const struct serpens_match_rule *m, uint32_t port,
				       const struct serpens_hdrs *h)
{
	if (m->in_port >= 0 && (uint32_t)m->in_port != port)
		return 0;
	if (h->family != 4 && h->family != 6) /* not IP: only a rule asking nothing of L3/L4 */
		return !m->family && !m->proto && m->sport_lo == 0 && m->sport_hi == 0xFFFF &&
		       m->dport_lo == 0 && m->dport_hi == 0xFFFF;
	if (m->family && m->family != h->family)
		return 0;
	uint32_t n = h->family == 4 ? 4 : 16;
	uint16_t sport = rte_be_to_cpu_16(h->flow.sport), dport = rte_be_to_cpu_16(h->flow.dport);
	return serpens_prefix_matches(h->flow.src, m->src, m->src_mask, n) &&
	       serpens_prefix_matches(h->flow.dst, m->dst, m->dst_mask, n) &&
	       (!m->proto || m->proto == h->flow.proto) && sport >= m->sport_lo &&
	       sport <= m->sport_hi && dport >= m->dport_lo && dport <= m->dport_hi;
}

/* The common frame read straight (pkt.h serpens_common_frame): sets what classification
 * reads, as serpens_parse would (family, flow addresses, ports, protocol; nothing else) and
 * returns 1; 0: another kind of frame, for serpens_parse (out of line, and it fills every
 * field). */
static inline int serpens_parse_common(const uint8_t *f, uint32_t len, struct serpens_hdrs *h)
{
	if (!serpens_common_frame(f, len))
		return 0;
	serpens_common_flow(f, h);
	return 1;
}

/* The SFC of a frame received on port index `port` (-1: none); sets its flow hash. */
static inline int serpens_classify(const struct serpens_match_tables *t, uint32_t port,
				   const uint8_t *f, uint32_t len, uint32_t *hash)
{
	struct serpens_hdrs h;
	int parsed = serpens_parse_common(f, len, &h) ? SERPENS_PARSE_OK : serpens_parse(f, len, &h);

	*hash = serpens_flow_hash(f, len, &h, parsed);
	if (len >= 16 && f[12] == 0x81 && f[13] == 0x00) {
		uint32_t tagged = t->tag_sfc[((f[14] & 0x0F) << 8) | f[15]];
		if (tagged)
			return (int)tagged - 1;
	}
	for (uint32_t i = 0; i < t->nrules; i++)
		if (serpens_rule_matches(&t->rules[i], port, &h))
			return t->rules[i].sfc;
	return t->default_sfc;
}

/* The live half of a double-buffered rule table (`live`: its rules_live field). */
static inline uint32_t serpens_rules_live(const volatile uint32_t *live)
{
	return __atomic_load_n(live, __ATOMIC_ACQUIRE) & 1;
}

#endif
