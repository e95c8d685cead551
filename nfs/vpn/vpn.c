/*
 * vpn -- IPsec ESP tunnel-mode encapsulation (RFC 4303) with AES-128-GCM (RFC 4106).
 *
 * What it does to every packet it is given: the IP packet after the Ethernet header (IPv4 or
 * IPv6, any protocol, fragments too) becomes the payload of an ESP packet inside a new outer
 * IPv4 header; the Ethernet header (with any VLAN tags) is kept, its ethertype set to IPv4.
 *
 *     before: | Ethernet | inner IP packet (L bytes) | [Ethernet padding, discarded]
 *     after:  | Ethernet | outer IPv4 (20) | SPI (4) | seq (4) | IV (8) |
 *             | encrypted: inner IP packet, padding 1,2,3,..., pad length, next header |
 *             | ICV (16) |
 *
 * - Padding: RFC 4303 §2.4 default bytes 1, 2, 3, ... so that inner + padding + 2 is a
 *   multiple of 4 (0..3 pad bytes). Next header: 4 (IPv4 in IP) or 41 (IPv6).
 * - Outer IPv4: version 4, IHL 5, TOS copied from the inner header (IPv4 TOS / IPv6 traffic
 *   class: DSCP and ECN), total length, identification = low 16 bits of the sequence number,
 *   DF copied from an inner IPv4 header and set for inner IPv6, TTL 64, protocol 50 (ESP),
 *   header checksum, source/destination = tunnel_src/tunnel_dst from the configuration.
 * - AES-128-GCM as RFC 4106: 16-byte ICV; the 8-byte explicit IV is the 64-bit big-endian
 *   sequence number (0 || seq); nonce = 4-byte salt || IV; AAD = SPI || seq (32-bit
 *   sequence numbers, no ESN). AES uses AES-NI, four counter blocks interleaved (the tag's
 *   block in a spare lane); GHASH uses PCLMULQDQ, up to 8 blocks aggregated with one
 *   reduction (a 64-byte frame's whole hash: AAD, 4 blocks, lengths).
 * - Sequence numbers start at 1 and never repeat within an SA, also across instances and
 *   restarts: the counter lives in the global state table "esp_seq" (key: SPI, 4 bytes in
 *   network order; value: uint64 = last sequence number handed out; flags
 *   SERPENS_GLOBAL|SERPENS_WRITE|SERPENS_EVENTUAL). Each batch takes one block of as many
 *   numbers as it has packets to encrypt with a single state_fetch_add. Within a batch the
 *   numbers rise in packet order; two instances of the same SA (same SFC step name, hence
 *   the same table) get disjoint blocks, so their packets interleave on the wire but never
 *   share a number. The counter never wraps: 2^32-1 is the last number sent; packets that
 *   would need a larger one are dropped and counted (the SA must be re-keyed with a new SPI).
 *
 * Config (36 bytes, packed by nfs/vpn/__init__.py:encode_config from
 * {spi, key, tunnel_src, tunnel_dst}; everything is re-checked by init()):
 *     [0]      version = 1
 *     [1..3]   zero
 *     [4..7]   SPI, network byte order, 256..2^32-1 (0..255 are reserved, RFC 4303 §2.1)
 *     [8..23]  AES-128 key
 *     [24..27] salt (RFC 4106 §4)
 *     [28..31] tunnel_src IPv4 address   (not 0.0.0.0, 255.255.255.255 nor multicast)
 *     [32..35] tunnel_dst IPv4 address   (the same)
 *
 * Counters:
 *     encrypted       packets encapsulated and forwarded (output port 0)
 *     dropped_non_ip  frames that are not a well-formed IPv4/IPv6 packet: non-IP ethertype
 *                     (ARP, LLDP, ...), truncated or bad IP header
 *     too_big         the grown packet does not fit the mbuf (128 bytes headroom, tailroom
 *                     of the data room) or the outer IPv4 total length would exceed 65535
 *     seq_exhausted   dropped because the SA's sequence numbers are used up (2^32-1 sent)
 *     state_error     dropped because state_fetch_add failed (should not happen)
 *
 * Growing the packet: the runtime's mbufs have 128 bytes headroom; the NF takes 36 bytes in
 * front (outer IPv4 + ESP header + IV; the Ethernet header is moved forward) and 18..21 at
 * the end (padding, pad length, next header, ICV), after trimming Ethernet padding.
 * init() fails (-22) on a bad configuration and (-95) on a runtime without state tables.
 *
 * Notes for operators:
 * - The table holds up to 256 SAs (SPIs) per SFC step name; its value is the last sequence
 *   number handed out (uint64, host byte order). The table outlives instances, so re-keying
 *   means a new SPI: an old SPI with a new key would continue the old count.
 * - No MTU handling: the outer packet is 56..59 bytes longer than the inner one and is not
 *   fragmented; clamp the inner MTU/MSS upstream. Outer IPv6 is not supported.
 * - Every encapsulated packet leaves on output port 0; drops are counted as above.
 */
#include <serpens/nf.h>

#include <immintrin.h>
#include <wmmintrin.h>

#define CFG_LEN 36
#define CFG_VERSION 1
#define OVERHEAD_HEAD 36 /* outer IPv4 20 + SPI 4 + seq 4 + IV 8 */
#define ICV_LEN 16
#define SEQ_MAX 0xFFFFFFFFull
#define GH_AGG 8 /* GHASH blocks multiplied by powers of H and reduced once */

/* ---- AES-128 (AES-NI) ------------------------------------------------------------------- */

struct gcm_key {
	__m128i rk[11]; /* AES-128 round keys */
	__m128i h[GH_AGG]; /* H^1..H^8, byte-reversed (GHASH domain) */
};

static __m128i aes_expand_step(__m128i key, __m128i assist)
{
	/* w[i] = w[i-4] ^ w[i-1]...: prefix-xor the four words, then add SubWord(RotWord)^rcon
	 * of the last word of the previous round key, which aeskeygenassist put in word 3. */
	assist = _mm_shuffle_epi32(assist, 0xFF);
	key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
	key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
	key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
	return _mm_xor_si128(key, assist);
}

#define AES_ROUND_KEY(rk, i, rcon) \
	((rk)[i] = aes_expand_step((rk)[(i) - 1], _mm_aeskeygenassist_si128((rk)[(i) - 1], rcon)))

static void aes128_expand(__m128i rk[11], const uint8_t key[16])
{
	rk[0] = _mm_loadu_si128((const __m128i *)key);
	AES_ROUND_KEY(rk, 1, 0x01);
	AES_ROUND_KEY(rk, 2, 0x02);
	AES_ROUND_KEY(rk, 3, 0x04);
	AES_ROUND_KEY(rk, 4, 0x08);
	AES_ROUND_KEY(rk, 5, 0x10);
	AES_ROUND_KEY(rk, 6, 0x20);
	AES_ROUND_KEY(rk, 7, 0x40);
	AES_ROUND_KEY(rk, 8, 0x80);
	AES_ROUND_KEY(rk, 9, 0x1B);
	AES_ROUND_KEY(rk, 10, 0x36);
}

static inline __m128i aes128_block(const __m128i rk[11], __m128i x)
{
	x = _mm_xor_si128(x, rk[0]);
	for (int r = 1; r < 10; r++)
		x = _mm_aesenc_si128(x, rk[r]);
	return _mm_aesenclast_si128(x, rk[10]);
}

/* Four independent blocks at once: AESENC has a latency of several cycles and a throughput
 * of one or two per cycle, so interleaving keeps the unit busy. */
static inline void aes128_block4(const __m128i rk[11], __m128i *a, __m128i *b, __m128i *c,
				 __m128i *d)
{
	__m128i x0 = _mm_xor_si128(*a, rk[0]), x1 = _mm_xor_si128(*b, rk[0]);
	__m128i x2 = _mm_xor_si128(*c, rk[0]), x3 = _mm_xor_si128(*d, rk[0]);
	for (int r = 1; r < 10; r++) {
		x0 = _mm_aesenc_si128(x0, rk[r]);
		x1 = _mm_aesenc_si128(x1, rk[r]);
		x2 = _mm_aesenc_si128(x2, rk[r]);
		x3 = _mm_aesenc_si128(x3, rk[r]);
	}
	*a = _mm_aesenclast_si128(x0, rk[10]);
	*b = _mm_aesenclast_si128(x1, rk[10]);
	*c = _mm_aesenclast_si128(x2, rk[10]);
	*d = _mm_aesenclast_si128(x3, rk[10]);
}

/* ---- GHASH (PCLMULQDQ) ------------------------------------------------------------------
 * GCM numbers the bits of a block from the most significant bit of byte 0 (x^0) to the
 * least significant bit of byte 15 (x^127). With every block byte-reversed, x^i sits at
 * bit 127-i of the 128-bit integer: a bit-reflected polynomial. The carry-less product of
 * two reflected 128-bit values is the reflected 255-bit product one bit too low, so it is
 * shifted left by one; then the upper half (x^0..x^127) is the low-degree part and the lower
 * half (x^128..x^255) is folded back with x^128 = x^7 + x^2 + x + 1, which in reflected form
 * is a right shift by 0, 1, 2 and 7 (with the bits shifted out folded in first). */

static inline __m128i bswap128(__m128i x)
{
	return _mm_shuffle_epi8(x, _mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
}

/* 256-bit carry-less product, schoolbook: accumulates into *lo / *hi (xor). */
static inline void clmul_acc(__m128i a, __m128i b, __m128i *lo, __m128i *hi, __m128i *mid)
{
	*lo = _mm_xor_si128(*lo, _mm_clmulepi64_si128(a, b, 0x00));
	*hi = _mm_xor_si128(*hi, _mm_clmulepi64_si128(a, b, 0x11));
	*mid = _mm_xor_si128(*mid, _mm_clmulepi64_si128(a, b, 0x01));
	*mid = _mm_xor_si128(*mid, _mm_clmulepi64_si128(a, b, 0x10));
}

/* 128-bit logical right shift by n (1 <= n <= 63) of the value [v.hi64 : v.lo64]. */
#define SHR128(v, n) \
	_mm_or_si128(_mm_srli_epi64((v), (n)), _mm_slli_epi64(_mm_srli_si128((v), 8), 64 - (n)))

/* Reduce the unreduced product (lo, hi, mid as accumulated by clmul_acc). */
static inline __m128i gf_reduce(__m128i lo, __m128i hi, __m128i mid)
{
	lo = _mm_xor_si128(lo, _mm_slli_si128(mid, 8));
	hi = _mm_xor_si128(hi, _mm_srli_si128(mid, 8));

	/* [hi:lo] <<= 1 across all 256 bits */
	__m128i clo = _mm_srli_epi64(lo, 63), chi = _mm_srli_epi64(hi, 63);
	lo = _mm_or_si128(_mm_slli_epi64(lo, 1), _mm_slli_si128(clo, 8));
	hi = _mm_or_si128(_mm_or_si128(_mm_slli_epi64(hi, 1), _mm_slli_si128(chi, 8)),
			  _mm_srli_si128(clo, 8));

	/* lo = [X1:X0]. The bits of X0 that the right shifts by 1, 2, 7 below push out of the
	 * 128-bit window are x^256.. terms; fold them once more into X1 first: D = X1 ^ X0<<63 ^
	 * X0<<62 ^ X0<<57 (only lane 0 of t matters; it moves to lane 1). */
	__m128i t = _mm_xor_si128(_mm_xor_si128(_mm_slli_epi64(lo, 63), _mm_slli_epi64(lo, 62)),
				  _mm_slli_epi64(lo, 57));
	lo = _mm_xor_si128(lo, _mm_slli_si128(t, 8)); /* [D:X0] */
	__m128i r = _mm_xor_si128(lo, SHR128(lo, 1));
	r = _mm_xor_si128(r, SHR128(lo, 2));
	r = _mm_xor_si128(r, SHR128(lo, 7));
	return _mm_xor_si128(hi, r);
}

static inline __m128i gf_mul(__m128i a, __m128i b)
{
	__m128i lo = _mm_setzero_si128(), hi = lo, mid = lo;
	clmul_acc(a, b, &lo, &hi, &mid);
	return gf_reduce(lo, hi, mid);
}

/* GHASH over blocks gathered up to GH_AGG at a time: y = (y ^ x1)*H^n ^ x2*H^(n-1) ^ ... ^
 * xn*H, n independent carry-less products and one reduction (instead of n dependent
 * multiply-reduce steps: a small packet's hash was latency-bound). Blocks are given
 * byte-reversed, in GHASH order (AAD, ciphertext, lengths). */
struct ghash {
	__m128i y;
	__m128i x[GH_AGG];
	uint32_t n;
};

static inline void ghash_flush(const struct gcm_key *k, struct ghash *g)
{
	if (!g->n)
		return;
	__m128i lo = _mm_setzero_si128(), hi = lo, mid = lo;
	clmul_acc(_mm_xor_si128(g->y, g->x[0]), k->h[g->n - 1], &lo, &hi, &mid);
	for (uint32_t i = 1; i < g->n; i++)
		clmul_acc(g->x[i], k->h[g->n - 1 - i], &lo, &hi, &mid);
	g->y = gf_reduce(lo, hi, mid);
	g->n = 0;
}

static inline void ghash_add(const struct gcm_key *k, struct ghash *g, __m128i reversed)
{
	g->x[g->n++] = reversed;
	if (g->n == GH_AGG)
		ghash_flush(k, g);
}

/* Up to 15 bytes into a zero-padded block. */
static inline __m128i load_partial(const uint8_t *p, uint32_t n)
{
	uint8_t tmp[16] __attribute__((aligned(16)));
	memset(tmp, 0, sizeof(tmp));
	memcpy(tmp, p, n);
	return _mm_load_si128((const __m128i *)tmp);
}

static void gcm_init(struct gcm_key *k, const uint8_t key[16])
{
	aes128_expand(k->rk, key);
	__m128i h = bswap128(aes128_block(k->rk, _mm_setzero_si128()));
	k->h[0] = h;
	for (int i = 1; i < GH_AGG; i++)
		k->h[i] = gf_mul(k->h[i - 1], h);
}

static inline __m128i ctr_block(__m128i j0, uint32_t ctr)
{
	return _mm_insert_epi32(j0, (int)__builtin_bswap32(ctr), 3);
}

/*
 * AES-GCM authenticated encryption in place (NIST SP 800-38D with a 96-bit IV): buf[0..len)
 * is replaced by its ciphertext and the 16-byte tag is written to tag (which may directly
 * follow buf).
 */
static void gcm_seal(const struct gcm_key *k, const uint8_t nonce[12], const uint8_t *aad,
		     uint32_t aad_len, uint8_t *buf, uint32_t len, uint8_t tag[16])
{
	uint8_t j0b[16] __attribute__((aligned(16)));
	memcpy(j0b, nonce, 12);
	j0b[12] = 0, j0b[13] = 0, j0b[14] = 0, j0b[15] = 1;
	const __m128i j0 = _mm_load_si128((const __m128i *)j0b);
	struct ghash g = {.y = _mm_setzero_si128(), .n = 0};

	uint32_t a = 0;
	for (; a + 16 <= aad_len; a += 16)
		ghash_add(k, &g, bswap128(_mm_loadu_si128((const __m128i *)(aad + a))));
	if (a < aad_len)
		ghash_add(k, &g, bswap128(load_partial(aad + a, aad_len - a)));

	/* Keystream four counter blocks at a time (interleaved: AESENC is latency-bound); a
	 * last group with lanes to spare encrypts J0 for the tag in one of them. */
	const uint32_t blocks = (len + 15) / 16;
	__m128i tag_mask = _mm_setzero_si128();
	int have_mask = 0;
	for (uint32_t b = 0; b < blocks; b += 4) {
		uint32_t r = blocks - b < 4 ? blocks - b : 4;
		__m128i s[4];
		for (uint32_t i = 0; i < 4; i++)
			s[i] = i < r ? ctr_block(j0, 2 + b + i) : j0;
		aes128_block4(k->rk, &s[0], &s[1], &s[2], &s[3]);
		if (r < 4) {
			tag_mask = s[r];
			have_mask = 1;
		}
		for (uint32_t i = 0; i < r; i++) {
			uint32_t off = (b + i) * 16, n = len - off < 16 ? len - off : 16;
			__m128i *p = (__m128i *)(buf + off);
			if (n == 16) {
				__m128i c = _mm_xor_si128(s[i], _mm_loadu_si128(p));
				_mm_storeu_si128(p, c);
				ghash_add(k, &g, bswap128(c));
			} else {
				uint8_t ks[16] __attribute__((aligned(16)));
				_mm_store_si128((__m128i *)ks, s[i]);
				for (uint32_t j = 0; j < n; j++)
					buf[off + j] ^= ks[j];
				ghash_add(k, &g, bswap128(load_partial(buf + off, n)));
			}
		}
	}
	if (!have_mask)
		tag_mask = aes128_block(k->rk, j0);

	/* length block: bit lengths of AAD and ciphertext, 64-bit big-endian each. In the
	 * byte-reversed domain that is simply the integer [len(A)*8 : len(C)*8]. */
	ghash_add(k, &g, _mm_set_epi64x((long long)aad_len * 8, (long long)len * 8));
	ghash_flush(k, &g);
	_mm_storeu_si128((__m128i *)tag, _mm_xor_si128(bswap128(g.y), tag_mask));
}

/* ---- the NF ------------------------------------------------------------------------------ */

static struct gcm_key gk;
static uint8_t salt[4];
static uint8_t spi_be[4];   /* SPI in network order: also the state-table key */
static uint8_t tun_src[4], tun_dst[4];
static int seq_table = -1;
static volatile uint64_t *seq_value; /* the SA's counter in the table (read-only here) */
static int c_encrypted, c_non_ip, c_too_big, c_seq_exhausted, c_state_error;

static uint32_t rd32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void wr32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8), p[3] = (uint8_t)v;
}

static int bad_endpoint(const uint8_t a[4])
{
	uint32_t v = rd32(a);
	return v == 0 || v == 0xFFFFFFFFu || (v >> 28) == 0xE; /* unspecified, broadcast, 224/4 */
}

static int init(struct serpens_ctx *ctx, const void *config, uint32_t len)
{
	const struct serpens_api *api = ctx->api;
	const uint8_t *cfg = config;

	if (len != CFG_LEN || !cfg) {
		api->log(ctx, SERPENS_LOG_ERR, "vpn: config must be %d bytes, got %u", CFG_LEN, len);
		return SERPENS_EINVAL;
	}
	if (cfg[0] != CFG_VERSION || cfg[1] || cfg[2] || cfg[3]) {
		api->log(ctx, SERPENS_LOG_ERR, "vpn: config version %u unknown", cfg[0]);
		return SERPENS_EINVAL;
	}
	if (rd32(cfg + 4) < 256) {
		api->log(ctx, SERPENS_LOG_ERR, "vpn: spi %u is reserved (0..255)", rd32(cfg + 4));
		return SERPENS_EINVAL;
	}
	if (bad_endpoint(cfg + 28) || bad_endpoint(cfg + 32)) {
		api->log(ctx, SERPENS_LOG_ERR, "vpn: tunnel_src/tunnel_dst must be unicast IPv4");
		return SERPENS_EINVAL;
	}
	if (api->size < offsetof(struct serpens_api, state_fetch_add) + sizeof(void *) ||
	    !api->create_table || !api->state_fetch_add || !api->get_state) {
		api->log(ctx, SERPENS_LOG_ERR, "vpn: the runtime has no state tables (ABI 1.1)");
		return -95;
	}
	memcpy(spi_be, cfg + 4, 4);
	memcpy(salt, cfg + 24, 4);
	memcpy(tun_src, cfg + 28, 4);
	memcpy(tun_dst, cfg + 32, 4);
	gcm_init(&gk, cfg + 8);

	c_encrypted = api->counter_register(ctx, "encrypted");
	c_non_ip = api->counter_register(ctx, "dropped_non_ip");
	c_too_big = api->counter_register(ctx, "too_big");
	c_seq_exhausted = api->counter_register(ctx, "seq_exhausted");
	c_state_error = api->counter_register(ctx, "state_error");

	seq_table = api->create_table(ctx, "esp_seq", SERPENS_GLOBAL | SERPENS_WRITE | SERPENS_EVENTUAL,
				      4, 8, 256);
	if (seq_table < 0) {
		api->log(ctx, SERPENS_LOG_ERR, "vpn: create_table esp_seq: %d", seq_table);
		return seq_table;
	}
	uint64_t before;
	int rc = api->state_fetch_add(ctx, seq_table, spi_be, 0, &before); /* creates the entry */
	if (rc < 0) {
		api->log(ctx, SERPENS_LOG_ERR, "vpn: state_fetch_add: %d", rc);
		return rc;
	}
	seq_value = api->get_state(ctx, seq_table, spi_be);
	return 0;
}

struct pending {
	uint8_t i;      /* position in the batch */
	uint8_t pad;    /* ESP padding bytes */
	uint8_t nh;     /* 4 or 41 */
	uint16_t l3_off;
	uint32_t l3_len;
};

enum { GROWN = 0, DROP_NON_IP, DROP_TOO_BIG };

/* Grow packet i for the encapsulation and fill *pk: GROWN, or why it is to be dropped. */
static int grow(struct serpens_ctx *ctx, struct serpens_batch *b, uint32_t i, struct pending *pk)
{
	const struct serpens_api *api = ctx->api;
	const struct serpens_hdrs *hp;
	int r = serpens_hdrs(ctx, b, i, &hp); /* parsed once for the SFC */
	struct serpens_hdrs h = *hp; /* (the packet changes below) */
	if ((r != SERPENS_PARSE_OK && r != SERPENS_PARSE_FRAGMENT) || (h.family != 4 && h.family != 6) ||
	    h.l3_off < 14 || h.l3_off + h.l3_len > b->len[i])
		return DROP_NON_IP;
	uint32_t L = h.l3_len;
	uint32_t pad = (4 - (L + 2) % 4) % 4;
	uint32_t tail = pad + 2 + ICV_LEN;
	if (20 + 16 + L + tail > 0xFFFF)
		return DROP_TOO_BIG;
	uint32_t extra = b->len[i] - h.l3_off - L; /* Ethernet padding after the IP packet */
	if (extra && api->pkt_trim(b, i, extra) != 0)
		return DROP_NON_IP;
	if (!api->pkt_append(b, i, tail))
		return DROP_TOO_BIG;
	uint8_t *old = b->data[i];
	uint8_t *p = api->pkt_prepend(b, i, OVERHEAD_HEAD);
	if (!p)
		return DROP_TOO_BIG;
	/* move the L2 header to the new front (forward copy: p < old) */
	for (uint32_t k = 0; k < h.l3_off; k++)
		p[k] = old[k];
	p[h.l3_off - 2] = 0x08, p[h.l3_off - 1] = 0x00;
	pk->i = (uint8_t)i;
	pk->pad = (uint8_t)pad;
	pk->nh = h.family == 4 ? 4 : 41;
	pk->l3_off = h.l3_off;
	pk->l3_len = L;
	return GROWN;
}

static void seal(const struct pending *pk, struct serpens_batch *b, uint32_t seq)
{
	uint8_t *ip = b->data[pk->i] + pk->l3_off;
	uint8_t *esp = ip + 20;
	uint8_t *pt = esp + 16;
	uint32_t L = pk->l3_len, ptlen = L + pk->pad + 2;

	/* outer IPv4 header, from what the inner header says */
	uint8_t tos, df;
	if (pk->nh == 4) {
		tos = pt[1];
		df = pt[6] & 0x40;
	} else {
		tos = (uint8_t)((pt[0] << 4) | (pt[1] >> 4));
		df = 0x40;
	}
	uint32_t total = 20 + 16 + ptlen + ICV_LEN;
	ip[0] = 0x45, ip[1] = tos, ip[2] = (uint8_t)(total >> 8), ip[3] = (uint8_t)total;
	ip[4] = (uint8_t)(seq >> 8), ip[5] = (uint8_t)seq, ip[6] = df, ip[7] = 0;
	ip[8] = 64, ip[9] = 50, ip[10] = 0, ip[11] = 0;
	memcpy(ip + 12, tun_src, 4);
	memcpy(ip + 16, tun_dst, 4);
	uint32_t sum = 0;
	for (int k = 0; k < 20; k += 2)
		sum += (uint32_t)ip[k] << 8 | ip[k + 1];
	sum = (sum & 0xFFFF) + (sum >> 16);
	sum = (sum & 0xFFFF) + (sum >> 16);
	ip[10] = (uint8_t)(~sum >> 8), ip[11] = (uint8_t)~sum;

	/* ESP header and explicit IV (= 0 || seq, 64-bit big-endian) */
	memcpy(esp, spi_be, 4);
	wr32(esp + 4, seq);
	wr32(esp + 8, 0);
	wr32(esp + 12, seq);

	/* trailer */
	for (uint32_t k = 0; k < pk->pad; k++)
		pt[L + k] = (uint8_t)(k + 1);
	pt[L + pk->pad] = pk->pad;
	pt[L + pk->pad + 1] = pk->nh;

	uint8_t nonce[12];
	memcpy(nonce, salt, 4);
	memcpy(nonce + 4, esp + 8, 8);
	gcm_seal(&gk, nonce, esp, 8, pt, ptlen, pt + ptlen);
	serpens_hdrs_invalidate(b, pk->i); /* an ESP packet now (pkt_prepend invalidated too) */
}

static void process(struct serpens_ctx *ctx, struct serpens_batch *b)
{
	struct pending pk[SERPENS_BURST];
	uint32_t n = 0;

	for (uint32_t k = 0; k < b->count; k++) {
		uint32_t i = b->idx[k];
		int r = grow(ctx, b, i, &pk[n]);
		if (r == GROWN) {
			n++;
		} else {
			serpens_drop(b, i);
			serpens_count(ctx, r == DROP_NON_IP ? c_non_ip : c_too_big, 1);
		}
	}
	if (!n)
		return;

	/* one block of n sequence numbers for the whole batch: seq = before+1 .. before+n */
	uint64_t before;
	if (seq_value && *seq_value >= SEQ_MAX) {
		before = SEQ_MAX; /* exhausted already: do not grow the counter any further */
	} else {
		int rc = ctx->api->state_fetch_add(ctx, seq_table, spi_be, n, &before);
		if (rc < 0) {
			for (uint32_t k = 0; k < n; k++)
				serpens_drop(b, pk[k].i);
			serpens_count(ctx, c_state_error, n);
			return;
		}
	}
	uint32_t sealed = 0;
	for (uint32_t k = 0; k < n; k++) {
		uint64_t seq = before + 1 + k;
		if (seq > SEQ_MAX) {
			serpens_drop(b, pk[k].i);
			serpens_count(ctx, c_seq_exhausted, 1);
			continue;
		}
		seal(&pk[k], b, (uint32_t)seq);
		sealed++;
	}
	serpens_count(ctx, c_encrypted, sealed);
}

SERPENS_NF(.name = "vpn", .init = init, .process = process,
	   .hdrs = SERPENS_HDRS_KEPT /* seal() invalidates */);
