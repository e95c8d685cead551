/* Small inlines for the Cython side: DPDK macros and atomics Cython cannot spell. */
#ifndef SERPENS_DP_INLINE_H
#define SERPENS_DP_INLINE_H

#include <rte_mbuf.h>
#include <rte_mbuf_dyn.h>
#include <stddef.h>

#include "pool_ctl.h"

static inline char *serpens_mtod(struct rte_mbuf *m) { return rte_pktmbuf_mtod(m, char *); }

static inline uint16_t serpens_label_get(struct rte_mbuf *m, int off)
{
	return *RTE_MBUF_DYNFIELD(m, off, uint16_t *);
}

/* Bytes of a command before its NF configuration. */
static inline size_t serpens_cmd_head(void) { return offsetof(struct serpens_cmd, config); }

static inline void serpens_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

/* *p = desired if it is `expected`; 1 if it was. */
static inline int serpens_cas_u32(volatile uint32_t *p, uint32_t expected, uint32_t desired)
{
	return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_SEQ_CST,
					   __ATOMIC_SEQ_CST);
}

static inline uint32_t serpens_inc_u32(volatile uint32_t *p)
{
	return __atomic_add_fetch(p, 1, __ATOMIC_SEQ_CST);
}

static inline uint32_t serpens_load_u32(const volatile uint32_t *p)
{
	return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

static inline uint64_t serpens_load_u64(const volatile uint64_t *p)
{
	return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

static inline void serpens_store_u32(volatile uint32_t *p, uint32_t v)
{
	__atomic_store_n(p, v, __ATOMIC_RELEASE);
}

static inline void serpens_store_u64(volatile uint64_t *p, uint64_t v)
{
	__atomic_store_n(p, v, __ATOMIC_RELEASE);
}

#endif
