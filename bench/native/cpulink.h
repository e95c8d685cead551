/*
 * How far apart the host has put two CPUs right now (benchmarks): the round trip of one cache
 * line between a thread pinned on each. In this nested VM the host moves the two vCPUs
 * between placements that share a cache (65-210 ns) and placements that do not (340-470 ns)
 * every few seconds, and every figure that hands packets between the two CPUs follows it:
 * the router and an empty SFC give 37 Mpps in the first and 14 in the second (issue 18,
 * docs/dataplane.md). A benchmark tags its trials with it so that a figure compares like
 * with like.
 */
#ifndef SERPENS_BENCH_CPULINK_H
#define SERPENS_BENCH_CPULINK_H

#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <time.h>

struct serpens_cpulink {
	volatile uint64_t turn __attribute__((aligned(64))); /* odd: the pong's turn */
	volatile int stop __attribute__((aligned(64)));
};

static inline uint64_t serpens_cpulink_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline int serpens_cpulink_pin(int cpu)
{
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	return pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

static void *serpens_cpulink_pong(void *arg)
{
	struct serpens_cpulink *l = arg;
	while (!l->stop) {
		uint64_t t = l->turn;
		if (t & 1)
			l->turn = t + 1;
	}
	return NULL;
}

/* A batch slower than this per round trip was stretched by a stall of either thread (the
 * far placement measures 340-470 ns): it tells nothing of the placement. */
#define SERPENS_CPULINK_MAX_NS 2000.0

/* The fastest of `batches` batches of `rounds` round trips between cpu_a and cpu_b, in ns per
 * round trip (the fastest: a batch the host paused either thread in is slower, never
 * faster; one over SERPENS_CPULINK_MAX_NS is ignored); stops after timeout_ns. -1 if no
 * batch finished in time or a thread could not be pinned (no such CPU). */
static inline double serpens_cpulink_ns(int cpu_a, int cpu_b, uint32_t batches, uint32_t rounds,
					uint64_t timeout_ns)
{
	struct serpens_cpulink link, *l = &link;
	pthread_t pong;
	cpu_set_t before;
	double best = -1;

	l->turn = 0;
	l->stop = 0;
	if (pthread_getaffinity_np(pthread_self(), sizeof(before), &before))
		return -1;
	/* the pong starts on cpu_b (created on cpu_a it would wait there for a scheduler tick
	 * while this thread spins) */
	pthread_attr_t attr;
	cpu_set_t on_b;
	CPU_ZERO(&on_b);
	CPU_SET(cpu_b, &on_b);
	if (pthread_attr_init(&attr))
		return -1;
	int rc = pthread_attr_setaffinity_np(&attr, sizeof(on_b), &on_b) ||
		 pthread_create(&pong, &attr, serpens_cpulink_pong, l);
	pthread_attr_destroy(&attr);
	if (rc)
		return -1;
	if (serpens_cpulink_pin(cpu_a)) {
		l->stop = 1;
		pthread_join(pong, NULL);
		return -1;
	}
	uint64_t deadline = serpens_cpulink_now() + timeout_ns, turn = 0;
	for (uint32_t b = 0; b < batches; b++) {
		uint64_t t0 = serpens_cpulink_now();
		uint32_t r;
		for (r = 0; r < rounds; r++) {
			l->turn = ++turn; /* odd: the pong answers with turn + 1 */
			uint32_t spins = 0;
			while (l->turn == turn)
				if (++spins == 4096) {
					spins = 0;
					if (serpens_cpulink_now() > deadline)
						goto out;
				}
			turn++;
		}
		double ns = (double)(serpens_cpulink_now() - t0) / rounds;
		if (ns <= SERPENS_CPULINK_MAX_NS && (best < 0 || ns < best))
			best = ns;
		if (serpens_cpulink_now() > deadline)
			break;
	}
out:
	l->stop = 1;
	pthread_join(pong, NULL);
	pthread_setaffinity_np(pthread_self(), sizeof(before), &before);
	return best;
}

#endif
