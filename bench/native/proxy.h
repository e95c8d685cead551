/*
 * The global proxy of `bench chain` (Fission-style, paper §V-A): between two NFs of a chain the
 * packets pass a separate proxy service, as a FaaS platform's function calls pass its router.
 * Here it is one process (a DPDK secondary, bench/proxy_main.py) on its own CPU, polling: the
 * node's router hands it each hop's output on a ring pair, as it would to an instance, and it
 * hands every packet straight back, marked to go on to the next NF (bench/proxy.py).
 */
#ifndef SERPENS_BENCH_PROXY_H
#define SERPENS_BENCH_PROXY_H

#include <stdint.h>

#include <rte_ring.h>

#define SERPENS_BENCH_PROXY_HOPS 16

/* Forward rx[h] to tx[h] (h < n) while *stop == running; forwarded[h] counts. Packets get the
 * verdict label OUT (label_off: the mbuf dynfield). Returns 0, or -1 if n is too large. */
int serpens_bench_proxy(struct rte_ring *const *rx, struct rte_ring *const *tx, uint32_t n,
			int label_off, const volatile uint32_t *stop, uint32_t running,
			uint64_t *forwarded);

#endif
