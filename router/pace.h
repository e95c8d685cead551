/*
 * Pacing an input port (benchmarks), shared by the router and the gateway: the port emulates
 * a NIC fed at a constant rate from a source that never runs dry (net_pcap infinite_rx).
 * Packet k arrives at t0 + k/rate; the loop may receive only the arrivals due so far, and
 * arrivals beyond `depth` not yet received are lost like a NIC's RX ring overflowing
 * (`missed`). The router stamps each packet with its scheduled arrival, so back-pressure shows
 * up as latency.
 *
 * Writers: the control side switches pacing with serpens_pace_set (cycles last, so the loop
 * never sees a half-set pace); the loop thread writes everything else.
 */
#ifndef SERPENS_PACE_H
#define SERPENS_PACE_H

#include <sched.h>
#include <stdint.h>
#include <time.h>

#include <rte_cycles.h>

struct serpens_pace {
	volatile double cycles;      /* cycles between arrivals (0: not paced) */
	double next;                 /* scheduled arrival of the next packet */
	uint32_t depth;              /* arrivals that may wait (the emulated RX ring) */
	uint64_t missed;             /* arrivals lost beyond depth */
	uint64_t rx_empty;           /* a paced receive found nothing (the source ran dry) */
};

/* Control side: pace at `pps` (0: stop pacing), at most `depth` arrivals waiting. */
static inline void serpens_pace_set(struct serpens_pace *p, double pps, uint32_t depth)
{
	p->cycles = 0;
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if (pps > 0) {
		p->depth = depth;
		p->next = (double)rte_rdtsc();
		__atomic_thread_fence(__ATOMIC_SEQ_CST);
		p->cycles = (double)rte_get_tsc_hz() / pps;
	}
}

/* How many packets the port may deliver now (arrivals so far, bounded by its depth and by
 * `burst`); counts the arrivals lost to overflow. */
static inline uint32_t serpens_pace_quota(struct serpens_pace *p, uint64_t now, uint32_t burst)
{
	if (!p->cycles)
		return burst;
	if ((double)now < p->next)
		return 0;
	double due = ((double)now - p->next) / p->cycles + 1;
	if (due > p->depth) { /* the emulated RX ring overflowed */
		uint64_t lost = (uint64_t)(due - p->depth);
		p->missed += lost;
		p->next += lost * p->cycles;
		due = p->depth;
	}
	return due < burst ? (uint32_t)due : burst;
}

/* The arrival time of the k-th packet of the burst being received (unpaced: now). */
static inline uint64_t serpens_pace_arrival(const struct serpens_pace *p, uint32_t k,
					    uint64_t now)
{
	return p->cycles ? (uint64_t)(p->next + k * p->cycles) : now;
}

/* After receiving n packets (when n is 0 a paced source ran dry: mbufs?). */
static inline void serpens_pace_received(struct serpens_pace *p, uint32_t n)
{
	if (!p->cycles)
		return;
	if (!n)
		p->rx_empty++;
	p->next += n * p->cycles;
}

/* The loop's idle sleep of `us` microseconds, bounded by the port's next arrival. */
static inline uint64_t serpens_pace_sleep_us(const struct serpens_pace *p, uint64_t now,
					     uint64_t us)
{
	if (!p->cycles)
		return us;
	double wait = (p->next - (double)now) * 1e6 / rte_get_tsc_hz();
	if (wait < (double)us)
		us = wait > 0 ? (uint64_t)wait : 0;
	return us;
}

/* The idle back-off every polling loop here shares (router, gateway, the bench's traffic
 * driver): sleep `us` (the loop's back-off, already bounded by its paced ports' next
 * arrivals), unless that is too short to time (timer slack and wake-up, ~60 us in this VM):
 * then yield and poll again, spinning on a due arrival. After a sleep the back-off doubles
 * up to SERPENS_IDLE_MAX_US. Returns 1 if it slept. */
#define SERPENS_IDLE_MIN_US 100  /* shorter sleeps oversleep: spin instead */
#define SERPENS_IDLE_MAX_US 3200 /* a wake-up costs ~30 us of CPU in a nested VM: <1% idle */

static inline int serpens_idle_sleep(uint64_t us, uint32_t *sleep_us)
{
	if (us < SERPENS_IDLE_MIN_US) {
		sched_yield();
		return 0;
	}
	struct timespec ts = {0, (long)us * 1000};
	nanosleep(&ts, NULL);
	if (*sleep_us < SERPENS_IDLE_MAX_US)
		*sleep_us *= 2;
	return 1;
}

#endif
