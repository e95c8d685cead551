/*
 * One end of an rte_ring that one thread alone uses (an instance is its RX ring's only
 * consumer and its TX ring's only producer), remembering what it last learned of the other
 * end: the entries known to wait (consumer) or the room known to be free (producer). Only
 * when that does not cover what it asks for does it read the other end's index again. That
 * index sits on a line the other core writes all the time, so every read of it is a
 * cross-core miss (150-550 cycles here); rte_ring's own SP/SC calls read it on every burst,
 * which cost an instance ~8% of its time under load (issue 18). Entries known to wait stay
 * there and room known to be free stays free: only this end takes them.
 *
 * The ring stays an rte_ring of pointers (the other side uses DPDK's calls on it), and this
 * end moves head and tail as rte_ring's single-producer/single-consumer paths do, in the same
 * order: the slots are read (written) before the tail says so, with release; the other end's
 * tail is read with acquire.
 */
#ifndef SERPENS_RING_END_H
#define SERPENS_RING_END_H

#include <rte_ring.h>

struct serpens_ring_end {
	struct rte_ring *r;
	void **slots;   /* the ring's, after its header (rte_ring_elem_pvt.h) */
	uint32_t mask;
	uint32_t capacity;
	uint32_t head;  /* this end's index, kept here: reading it back from the ring's line
			 * misses too, as the other core's reads of the tail beside it take the
			 * line away (AMD hands a modified line to its reader) */
	uint32_t known; /* entries known to wait (consumer), free slots known (producer) */
};

/* Take up the consumer's (consumer != 0) or the producer's end of r. */
static inline void serpens_ring_end_init(struct serpens_ring_end *e, struct rte_ring *r,
					 int consumer)
{
	e->r = r;
	e->known = 0;
	if (!r)
		return;
	e->slots = (void **)&r[1];
	e->mask = r->mask;
	e->capacity = r->capacity;
	e->head = consumer ? r->cons.head : r->prod.head;
}

/* Consumer: how many of `want` may be taken now (serpens_ring_take). */
static inline uint32_t serpens_ring_ready(struct serpens_ring_end *e, uint32_t want)
{
	if (e->known < want)
		e->known = __atomic_load_n(&e->r->prod.tail, __ATOMIC_ACQUIRE) - e->head;
	return e->known < want ? e->known : want;
}

/* Consumer: take n pointers (at most what serpens_ring_ready() gave); returns the entries
 * still known to wait behind them. */
static inline uint32_t serpens_ring_take(struct serpens_ring_end *e, void **objs, uint32_t n)
{
	uint32_t head = e->head;
	for (uint32_t i = 0; i < n; i++)
		objs[i] = e->slots[(head + i) & e->mask];
	e->head = head + n;
	e->r->cons.head = head + n;
	__atomic_store_n(&e->r->cons.tail, head + n, __ATOMIC_RELEASE);
	return e->known -= n;
}

/* Consumer: the pointer `ahead` places past the next one to take, without taking it (for
 * prefetching what is known to wait). */
static inline void *serpens_ring_peek(const struct serpens_ring_end *e, uint32_t ahead)
{
	return e->slots[(e->head + ahead) & e->mask];
}

/* Producer: put up to n pointers; returns how many went in (fewer: the ring is full). */
static inline uint32_t serpens_ring_give(struct serpens_ring_end *e, void *const *objs,
					 uint32_t n)
{
	uint32_t head = e->head;
	if (e->known < n)
		e->known = e->capacity + __atomic_load_n(&e->r->cons.tail, __ATOMIC_ACQUIRE) - head;
	n = n < e->known ? n : e->known;
	if (!n)
		return 0;
	e->r->prod.head = head + n;
	for (uint32_t i = 0; i < n; i++)
		e->slots[(head + i) & e->mask] = objs[i];
	e->head = head + n;
	__atomic_store_n(&e->r->prod.tail, head + n, __ATOMIC_RELEASE);
	e->known -= n;
	return n;
}

#endif
