/*
 * State in Redis: the state backends of the benchmarks' baselines (paper §II-B3, §V-B), so that
 * the very same NF binaries run with their state where general FaaS platforms keep it:
 * - SERPENS_STATE_REDIS (Fission-style): every table in Redis;
 * - SERPENS_STATE_REDIS_GLOBAL (SNF-style): global tables in Redis, per-flow tables local.
 * They are state backends (runtime_cy/src/state_backend.h), registered when the extension
 * loads; the engine never tests for them.
 *
 * Theory of operation, as good as the design allows (a store across a socket):
 * - one connection per pool process, to Redis' Unix socket (the command's state_arg);
 * - per batch one round trip: get_state_bulk sends an MGET; get_state_multi sends the MGETs
 *   of several tables' independent lookups in one pipeline; every write of the batch (put_state,
 *   and values the NF changed in place, found by comparing with a pristine copy) is queued and
 *   sent ahead of the next round trip. A single get_state that the batch has not fetched yet
 *   costs its own round trip, as does state_fetch_add (INCRBY);
 * - RESP is encoded from headers precomputed per table (keys and values have fixed sizes):
 *   no formatting per key; the batch's values are found by hash, not by a scan;
 * - value pointers handed to the NF are valid until the end of the batch; those handed out
 *   in init() (and the first batch) for the instance's life, as nf.h promises;
 * - a lost connection (or a reply that makes no sense) is reported once, in the control
 *   block's state_error: the benchmark then fails instead of reporting figures of an NF that
 *   ran without its state. No consistency beyond Redis' own: this is the baseline's design.
 */
#ifndef SERPENS_REDIS_STATE_H
#define SERPENS_REDIS_STATE_H

#define SERPENS_STATE_REDIS 1
#define SERPENS_STATE_REDIS_GLOBAL 2

#endif
