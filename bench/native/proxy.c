/* The global proxy of `bench chain` (see proxy.h). */
#include <sched.h>
#include <string.h>

#include <rte_mbuf.h>
#include <rte_mbuf_dyn.h>
#include <rte_ring.h>

#include "proxy.h"
#include "serpens/nf.h"

int serpens_bench_proxy(struct rte_ring *const *rx, struct rte_ring *const *tx, uint32_t n,
			int label_off, const volatile uint32_t *stop, uint32_t running,
			uint64_t *forwarded)
{
	struct rte_mbuf *held[SERPENS_BENCH_PROXY_HOPS][SERPENS_BURST];
	uint32_t nheld[SERPENS_BENCH_PROXY_HOPS] = {0};

	if (n > SERPENS_BENCH_PROXY_HOPS)
		return -1;
	while (__atomic_load_n(stop, __ATOMIC_ACQUIRE) == running) {
		uint32_t moved = 0;
		for (uint32_t h = 0; h < n; h++) {
			uint32_t k = nheld[h];
			if (!k) { /* a hop whose next ring is full keeps its burst, the others go on */
				k = rte_ring_sc_dequeue_burst(rx[h], (void **)held[h], SERPENS_BURST,
							      NULL);
				for (uint32_t i = 0; i < k; i++) /* forwarded: the router sends it on */
					*RTE_MBUF_DYNFIELD(held[h][i], label_off, uint16_t *) =
						SERPENS_LABEL_OUT;
			}
			uint32_t q = rte_ring_sp_enqueue_burst(tx[h], (void **)held[h], k, NULL);
			if (q && q < k)
				memmove(held[h], held[h] + q, sizeof(held[h][0]) * (k - q));
			nheld[h] = k - q;
			moved += q;
			forwarded[h] += q;
		}
		if (!moved) /* it polls, but lets the router it shares a CPU with run meanwhile */
			sched_yield();
	}
	/* stopping: the router gets back what this process held */
	for (uint32_t h = 0; h < n; h++)
		while (nheld[h]) {
			uint32_t q = rte_ring_sp_enqueue_burst(tx[h], (void **)held[h], nheld[h], NULL);
			memmove(held[h], held[h] + q, sizeof(held[h][0]) * (nheld[h] - q));
			nheld[h] -= q;
			if (nheld[h])
				sched_yield();
		}
	return 0;
}
