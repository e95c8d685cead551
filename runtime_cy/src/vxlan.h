/*
 * VXLAN (RFC 7348) on an underlay port, as DESIGN §7 fixes it: outer Ethernet / IPv4 (no
 * options, DF set, checksum filled) / UDP 4789 (source port = flow hash, checksum 0) / VXLAN
 * (flags 0x08, the 24-bit SFC tag in the reserved bits after the flags, 24-bit VNI, last byte
 * 0). 50 bytes in front of the inner Ethernet frame, written in the mbuf's headroom in place.
 * The underlay MTU bounds the outer IPv4 packet: an inner frame fits if len + 36 <= mtu;
 * larger ones are refused (counted by the caller), never truncated or fragmented.
 *
 * Shared by the gateway (gateway/) and the router (router/): plain inline code over one mbuf,
 * no allocation, no syscall.
 */
#ifndef SERPENS_VXLAN_H
#define SERPENS_VXLAN_H

#include <stdint.h>
#include <string.h>

#include <rte_byteorder.h>
#include <rte_ip.h>
#include <rte_mbuf.h>

#define SERPENS_VXLAN_PORT 4789
#define SERPENS_VXLAN_OVERHEAD 50  /* outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8 */
#define SERPENS_VXLAN_IP_OVERHEAD 36 /* what the outer IPv4 packet adds to the inner frame */
#define SERPENS_VXLAN_FLAG_I 0x08
#define SERPENS_VXLAN_SPORT_BASE 49152 /* outer source ports from the dynamic range */
#define SERPENS_VXLAN_MAX_TAG 0xFFFFFF

/* This end of the underlay. */
struct serpens_underlay {
	uint32_t ip;                 /* network order; 0: no underlay */
	uint8_t mac[6];
	uint16_t mtu;                /* largest outer IPv4 packet */
	uint16_t ip_id;              /* next outer IPv4 identification (written by the sender) */
};

enum serpens_underlay_rx {
	SERPENS_UNDERLAY_VXLAN = 0,  /* decapsulated: the inner frame, *tag and *vni set */
	SERPENS_UNDERLAY_ARP = 1,    /* an ARP request for our address, rewritten into the reply;
				      * *tag = its move marker's id (0: none) */
	SERPENS_UNDERLAY_NOT_OURS,   /* neither VXLAN nor ARP for our address */
	SERPENS_UNDERLAY_BAD_OUTER,  /* VXLAN for us with a malformed outer header */
	SERPENS_UNDERLAY_OVER_MTU,   /* VXLAN for us larger than the underlay MTU */
};

enum serpens_encap_result {
	SERPENS_ENCAP_OK = 0,
	SERPENS_ENCAP_OVER_MTU,      /* the outer packet would exceed the MTU */
	SERPENS_ENCAP_NO_ROOM,       /* chained mbuf or no headroom for 50 bytes */
};

/* Outer source port for a flow hash (ECMP entropy, RFC 7348 §5). */
static inline uint16_t serpens_vxlan_sport(uint32_t hash)
{
	return (uint16_t)(SERPENS_VXLAN_SPORT_BASE + ((hash ^ (hash >> 16)) & 0x3FFF));
}

/* Wrap frame m for (dst_ip, dst_mac): see the top of this file. */
static inline int serpens_vxlan_encap(struct rte_mbuf *m, struct serpens_underlay *u,
				      uint32_t dst_ip, const uint8_t *dst_mac, uint32_t tag,
				      uint32_t vni, uint32_t hash)
{
	uint32_t inner = rte_pktmbuf_pkt_len(m);
	if (inner + SERPENS_VXLAN_IP_OVERHEAD > u->mtu)
		return SERPENS_ENCAP_OVER_MTU;
	if (m->nb_segs != 1)
		return SERPENS_ENCAP_NO_ROOM;
	uint8_t *o = (uint8_t *)rte_pktmbuf_prepend(m, SERPENS_VXLAN_OVERHEAD);
	if (!o)
		return SERPENS_ENCAP_NO_ROOM;
	uint16_t ip_len = (uint16_t)(inner + SERPENS_VXLAN_IP_OVERHEAD);
	uint16_t udp_len = (uint16_t)(ip_len - 20);
	uint16_t sport = serpens_vxlan_sport(hash);

	memcpy(o, dst_mac, 6);
	memcpy(o + 6, u->mac, 6);
	o[12] = 0x08, o[13] = 0x00;
	struct rte_ipv4_hdr *ip = (struct rte_ipv4_hdr *)(o + 14);
	ip->version_ihl = 0x45;
	ip->type_of_service = 0;
	ip->total_length = rte_cpu_to_be_16(ip_len);
	ip->packet_id = rte_cpu_to_be_16(u->ip_id++);
	ip->fragment_offset = rte_cpu_to_be_16(RTE_IPV4_HDR_DF_FLAG);
	ip->time_to_live = 64;
	ip->next_proto_id = 17;
	ip->hdr_checksum = 0;
	ip->src_addr = u->ip;
	ip->dst_addr = dst_ip;
	ip->hdr_checksum = rte_ipv4_cksum(ip);
	uint8_t *udp = o + 34;
	udp[0] = (uint8_t)(sport >> 8), udp[1] = (uint8_t)sport;
	udp[2] = SERPENS_VXLAN_PORT >> 8, udp[3] = SERPENS_VXLAN_PORT & 0xFF;
	udp[4] = (uint8_t)(udp_len >> 8), udp[5] = (uint8_t)udp_len;
	udp[6] = udp[7] = 0;  /* no UDP checksum (RFC 7348 §5) */
	uint8_t *vx = o + 42;
	vx[0] = SERPENS_VXLAN_FLAG_I;
	vx[1] = (uint8_t)(tag >> 16), vx[2] = (uint8_t)(tag >> 8), vx[3] = (uint8_t)tag;
	vx[4] = (uint8_t)(vni >> 16), vx[5] = (uint8_t)(vni >> 8), vx[6] = (uint8_t)vni;
	vx[7] = 0;
	return SERPENS_ENCAP_OK;
}

/* A move's marker (gateway.h "Moving flows") is an ARP request for the source's address whose
 * target hardware address, which a request leaves zero, is "SM" and the move's 32-bit marker
 * id (network order, never 0): the source's router records the id (router.h `markers`), so
 * the move waits for its own marker, not for any ARP request. */
#define SERPENS_MARKER_MAGIC "SM"

/* The marker id of ARP request f (len >= 42; 0: an ordinary request). */
static inline uint32_t serpens_arp_marker(const uint8_t *f)
{
	if (f[32] != SERPENS_MARKER_MAGIC[0] || f[33] != SERPENS_MARKER_MAGIC[1])
		return 0;
	return ((uint32_t)f[34] << 24) | ((uint32_t)f[35] << 16) | ((uint32_t)f[36] << 8) | f[37];
}

/* Rewrite an ARP request (f, len >= 42) for our address into its reply. */
static inline int serpens_arp_answer(uint8_t *f, uint32_t len, const struct serpens_underlay *u)
{
	static const uint8_t request_ipv4[8] = {0, 1, 8, 0, 6, 4, 0, 1};
	if (len < 42 || memcmp(f + 14, request_ipv4, 8) || memcmp(f + 38, &u->ip, 4))
		return 0;
	uint8_t asker_mac[6], asker_ip[4];
	memcpy(asker_mac, f + 22, 6);
	memcpy(asker_ip, f + 28, 4);
	memcpy(f, asker_mac, 6);
	memcpy(f + 6, u->mac, 6);
	f[21] = 2;  /* reply */
	memcpy(f + 22, u->mac, 6);
	memcpy(f + 28, &u->ip, 4);
	memcpy(f + 32, asker_mac, 6);
	memcpy(f + 38, asker_ip, 4);
	return 1;
}

/* What a frame received on the underlay is (enum serpens_underlay_rx); VXLAN for us leaves m
 * holding the inner frame only. Every length is checked before it is used. */
static inline int serpens_underlay_rx(struct rte_mbuf *m, const struct serpens_underlay *u,
				      uint32_t *tag, uint32_t *vni)
{
	uint8_t *f = rte_pktmbuf_mtod(m, uint8_t *);
	uint32_t len = m->data_len;

	if (len < 14)
		return SERPENS_UNDERLAY_NOT_OURS;
	if (f[12] == 0x08 && f[13] == 0x06) {
		uint32_t marker = len >= 42 ? serpens_arp_marker(f) : 0;
		if (!serpens_arp_answer(f, len, u))
			return SERPENS_UNDERLAY_NOT_OURS;
		*tag = marker;
		return SERPENS_UNDERLAY_ARP;
	}
	if (f[12] != 0x08 || f[13] != 0x00 || len < 34)
		return SERPENS_UNDERLAY_NOT_OURS;
	const struct rte_ipv4_hdr *ip = (const struct rte_ipv4_hdr *)(f + 14);
	if (ip->dst_addr != u->ip || ip->next_proto_id != 17)
		return SERPENS_UNDERLAY_NOT_OURS;
	if (len < 14 + 20 + 8)
		return SERPENS_UNDERLAY_BAD_OUTER;
	const uint8_t *udp = f + 34;
	if (((udp[2] << 8) | udp[3]) != SERPENS_VXLAN_PORT)
		return SERPENS_UNDERLAY_NOT_OURS;
	/* VXLAN to us from here on: what is wrong with it is a bad outer header */
	uint32_t ip_len = rte_be_to_cpu_16(ip->total_length);
	if (ip->version_ihl != 0x45 || m->nb_segs != 1 || rte_ipv4_cksum(ip) != 0 ||
	    (rte_be_to_cpu_16(ip->fragment_offset) & (RTE_IPV4_HDR_MF_FLAG | RTE_IPV4_HDR_OFFSET_MASK)))
		return SERPENS_UNDERLAY_BAD_OUTER;
	if (ip_len > len - 14)
		return SERPENS_UNDERLAY_BAD_OUTER;
	if (ip_len < SERPENS_VXLAN_IP_OVERHEAD + 14 ||
	    (uint32_t)((udp[4] << 8) | udp[5]) != ip_len - 20)
		return SERPENS_UNDERLAY_BAD_OUTER;
	if (ip_len > u->mtu)
		return SERPENS_UNDERLAY_OVER_MTU;
	const uint8_t *vx = f + 42;
	if (!(vx[0] & SERPENS_VXLAN_FLAG_I))
		return SERPENS_UNDERLAY_BAD_OUTER;
	*tag = ((uint32_t)vx[1] << 16) | ((uint32_t)vx[2] << 8) | vx[3];
	*vni = ((uint32_t)vx[4] << 16) | ((uint32_t)vx[5] << 8) | vx[6];
	rte_pktmbuf_trim(m, (uint16_t)(len - 14 - ip_len)); /* Ethernet padding after the packet */
	rte_pktmbuf_adj(m, SERPENS_VXLAN_OVERHEAD);
	return SERPENS_UNDERLAY_VXLAN;
}

#endif
