/*
 * Packet bytes: header parse, Internet checksums (RFC 1071, RFC 1624), flow hash. Plain C over
 * a frame's bytes (no mbuf, no DPDK), shared by the NF API (serpens/nf.h hands these to NFs),
 * the chainer's hash step, the router's flow table and the state tables' key hash.
 */
#ifndef SERPENS_PKT_H
#define SERPENS_PKT_H

#include <stdint.h>

#include "serpens/nf.h"

/* serpens_api.parse: fills h, returns a serpens_parse_result. */
int serpens_parse(const uint8_t *frame, uint32_t len, struct serpens_hdrs *h);

/* serpens_api.csum_*: see serpens/nf.h. */
uint32_t serpens_csum_partial(const void *data, uint32_t len, uint32_t sum);
uint16_t serpens_csum_fold(uint32_t sum);
uint16_t serpens_csum_update(uint16_t csum, const void *old_bytes, const void *new_bytes,
			     uint32_t len);
uint16_t serpens_l4_csum(const uint8_t *frame, const struct serpens_hdrs *h);

/* serpens_api.hash: CRC32-C finished with a multiply-xorshift (well mixed for `% n`). */
uint32_t serpens_hash_crc(const void *key, uint32_t len, uint32_t seed);

#endif
