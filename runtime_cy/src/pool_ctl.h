/*
 * The contract between the agent (DPDK primary) and one pool process (DPDK secondary).
 *
 * Theory of operation (paper §III-A, Fig. 4; DESIGN §3 "Processes"). The agent spawns each
 * pool process with three descriptors: a shared control block (memfd, struct serpens_pool_ctl),
 * a SOCK_SEQPACKET socket for commands (struct serpens_cmd, NF image memfds in SCM_RIGHTS), and
 * an eventfd the process sleeps on. To command it the agent sends the message, bumps cmd_seq
 * and writes the eventfd; the process answers by setting ack_seq (and state/last_error).
 *
 * Sleeping without losing a wake-up, and waking once per sleep. The runtime numbers its sleeps:
 * before it blocks it stores the sleep's number (never 0) in `sleeping`, issues a full barrier
 * and checks its ring, commands and merge requests once more; it blocks only if all are empty,
 * and stores 0 once it runs again. Whoever gives it work (the router, a test harness, the agent)
 * enqueues and then calls serpens_pool_wake(): a full barrier, then it writes the eventfd when
 * `sleeping` holds a sleep that no producer has claimed yet (`woken`), claiming it first.
 * - No lost wake-up: by the two barriers (store, fence, load on each side) either the runtime
 *   sees the new work and does not block, or the producer sees the sleep's number. If it sees
 *   sleep s unclaimed it writes; if s was claimed, the claimer writes after claiming. That write
 *   comes after `sleeping` = s was stored, so after every read() of earlier sleeps: it ends
 *   sleep s (or, if s found work and never blocked, makes the next read return at once).
 * - One write per sleep: after the claim, producers see `woken` == s and write nothing more,
 *   however often they call (the router calls on every loop while packets wait). A claim
 *   that races another (or lands late, for an older sleep) costs at most one spare write.
 *   Numbers are 64-bit: a stale claim never equals a later sleep's number.
 * Commands write the eventfd unconditionally (rare, and the runtime re-checks cmd_seq).
 *
 * Every field says who writes it (A = agent, R = runtime, P = whoever gives it packets); the
 * others only read it.
 * The runtime never allocates or frees mbufs: every packet it dequeues goes to its TX ring with
 * a verdict (SERPENS_LABEL_OUT or _DROP) in the mbuf's label dynfield. `inflight` holds the
 * batch being processed, so the agent can recover those mbufs if the process dies mid-batch.
 */
#ifndef SERPENS_POOL_CTL_H
#define SERPENS_POOL_CTL_H

#include <sched.h>
#include <stdint.h>
#include <unistd.h>

#include <rte_pause.h>

#include "nf_image.h"
#include "serpens/nf.h"
#include "state_backend.h"

#define SERPENS_MAX_STEPS 16   /* NFs (and selectors) in one SFC */
#define SERPENS_MAX_IMAGES 16
#define SERPENS_CONFIG_MAX (1u << 20) /* bytes of NF configuration in one start command */
#define SERPENS_RING_NAME 32
#define SERPENS_CMD_MAGIC 0x53525043u /* "SRPC" */
#define SERPENS_SPLIT_ONLY 128 /* bytes of serpens_pool_ctl.split_only */

enum serpens_cmd_kind { SERPENS_CMD_START = 1, SERPENS_CMD_STOP = 2, SERPENS_CMD_EXIT = 3 };

/* How a start loads the NFs (loader.h): Serpens maps images; the others are benchmark
 * baselines (bench/native/loaders.c). */
enum serpens_load_mode {
	SERPENS_LOAD_MAP = 0,    /* three mmaps of the prepared memfd (the real thing) */
	SERPENS_LOAD_DLOPEN = 1, /* dlopen() the .so at `dl_path` (SOCK-style baseline) */
	SERPENS_LOAD_FORK = 2,   /* fork(); the child runs the already loaded NFs (SAND-style) */
};

enum serpens_step_kind {
	SERPENS_STEP_NF = 1,   /* call an NF */
	SERPENS_STEP_HASH = 2, /* distribute by flow hash over the step's ports */
};

/* One step of a compiled SFC; its label is its index. next[] labels are > the step's own. */
struct serpens_step {
	uint16_t kind;
	uint16_t image;    /* NF steps: index into the command's images[] */
	uint16_t nports;
	uint16_t pad;
	serpens_label_t next[SERPENS_MAX_PORTS];
	uint32_t config_off; /* NF configuration bytes in serpens_cmd.config */
	uint32_t config_len;
	char name[48];       /* for logs, counters and the state namespace */
};

struct serpens_cmd {
	uint32_t magic;
	uint32_t kind;          /* serpens_cmd_kind */
	uint32_t seq;           /* the cmd_seq value this command answers to */
	uint32_t instance_id;
	uint32_t load_mode;     /* serpens_load_mode */
	uint32_t populate;      /* MAP_POPULATE the images */
	uint32_t state_backend; /* state_backend.h: SERPENS_STATE_LOCAL, or a baseline's */
	uint32_t pad;
	uint16_t nsteps;
	uint16_t nimages;       /* == number of fds in SCM_RIGHTS for LOAD_MAP */
	uint32_t config_len;
	char rx_ring[SERPENS_RING_NAME];
	char tx_ring[SERPENS_RING_NAME];
	/* Where the rings are (DPDK memory has one address in every process of a prefix): saves a
	 * lookup on the start path. 0, or a ring whose name differs, means look the name up. */
	uint64_t rx_ring_addr;
	uint64_t tx_ring_addr;
	struct serpens_image_layout images[SERPENS_MAX_IMAGES];
	char dl_path[SERPENS_MAX_IMAGES][108]; /* LOAD_DLOPEN only */
	char state_arg[SERPENS_STATE_ARG];     /* for the state backend (a baseline's socket) */
	struct serpens_step steps[SERPENS_MAX_STEPS];
	uint8_t config[SERPENS_CONFIG_MAX];
};

enum serpens_pool_state {
	SERPENS_POOL_BOOTING = 0,
	SERPENS_POOL_IDLE = 1,    /* attached, no instance: sleeping on the eventfd */
	SERPENS_POOL_RUNNING = 2, /* running an instance (it may be asleep between batches) */
	SERPENS_POOL_EXITED = 3,
};

#define SERPENS_NF_HAS_MERGE 0x1u /* serpens_nf_counters.ops: the NF has its own merge op */
#define SERPENS_NF_HAS_SPLIT 0x2u

struct serpens_nf_counters {
	uint32_t n;                                           /* R */
	uint32_t ops;                                         /* R, at start: SERPENS_NF_HAS_* */
	char names[SERPENS_MAX_COUNTERS][SERPENS_COUNTER_NAME]; /* R, in init() */
	uint64_t values[SERPENS_MAX_COUNTERS];                /* R (the NF) */
	uint64_t in_pkts;                                     /* R: packets given to the NF */
	uint64_t dropped;                                     /* R: packets it dropped */
	/* R, while nf_cycles_on: TSC cycles of the NF's process() calls, and their packets */
	uint64_t timed_cycles;
	uint64_t timed_pkts;
};

/* ---- Capture and trace (observe.h; docs/observability.md "Capture and trace") ----
 * The agent arms an observation by writing the settings and then `on` (a new generation,
 * never 0); the runtime loads `on` once per burst (the only cost while off) and, when set,
 * runs that burst through the observing chainer, which appends records to `ring`: a
 * single-producer (R: head) single-consumer (A: tail) byte ring in this shared block.
 * Records never wrap (a PAD record fills the end) and carry their generation, so records of
 * an earlier arming are skipped. A full ring loses records (counted in `lost`), never
 * packets. Pages of the ring are touched only once a capture writes there. */
#define SERPENS_OBS_RING (1u << 20) /* bytes; a power of two */
enum { SERPENS_OBS_CAPTURE = 1, SERPENS_OBS_TRACE = 2 };
enum { SERPENS_AT_IN = 0, SERPENS_AT_OUT = 1, SERPENS_AT_DROP = 2 };
enum { SERPENS_REC_PAD = 0, SERPENS_REC_PKT = 1, SERPENS_REC_TRACE_PKT = 2,
       SERPENS_REC_TRACE_STEP = 3 };
enum serpens_drop_why {
	SERPENS_WHY_NONE = 0,
	SERPENS_WHY_VERDICT = 1,   /* the NF dropped it */
	SERPENS_WHY_BAD_LABEL = 2, /* the NF gave a label that does not lead forward */
	SERPENS_WHY_BAD_MBUF = 3,  /* the NF left its mbuf broken */
	SERPENS_WHY_SEGMENTS = 4,  /* a chained (multi-segment) mbuf: refused before the SFC */
	/* the router's (router.h, its drop_* counters) */
	SERPENS_WHY_STUCK = 5,     /* its instance took nothing for too long */
	SERPENS_WHY_HOLD = 6,      /* waited for an instance too long, or beyond the hold queue */
	SERPENS_WHY_FAILED = 7,    /* the SFC is failed */
	SERPENS_WHY_MTU = 8,       /* too big for the underlay back to the gateway */
	SERPENS_WHY_DIED = 9,      /* queued for an instance that died */
};

struct serpens_obs_rec {
	uint32_t size;     /* of the record, header included, a multiple of 8 */
	uint16_t kind;     /* SERPENS_REC_* (PAD: only size and kind are valid) */
	int16_t step;      /* the NF's step; -1: the SFC's own in/out, or the runtime's drop */
	uint32_t gen;      /* the arming it belongs to */
	uint16_t label;    /* verdict or label the step set (OUT, DROP, or the next step) */
	uint8_t why;       /* drops: serpens_drop_why */
	uint8_t at;        /* PKT: SERPENS_AT_* of the capture point */
	uint32_t pkt;      /* TRACE_*: the traced packet's number in this arming and instance */
	uint32_t orig_len; /* PKT, TRACE_PKT: the frame's length (caplen bytes follow) */
	uint64_t tsc;      /* PKT, TRACE_PKT: when; TRACE_STEP: cycles of the NF's call */
	uint32_t batch;    /* TRACE_STEP: packets in that call */
	uint32_t caplen;   /* bytes of the frame that follow */
};

struct serpens_obs {
	/* ---- A ---- */
	volatile uint32_t on; /* the arming's generation; 0: nothing armed */
	uint32_t flags;       /* SERPENS_OBS_CAPTURE | SERPENS_OBS_TRACE */
	int32_t step;         /* the capture point's step; -1: the whole SFC */
	uint32_t at;          /* SERPENS_AT_* */
	uint32_t snaplen;     /* bytes copied per packet at most */
	uint32_t trace_max;   /* packets to trace per arming (from the first burst on) */
	volatile uint64_t tail __attribute__((aligned(64))); /* bytes consumed */
	/* ---- R ---- */
	volatile uint64_t head __attribute__((aligned(64))); /* bytes published */
	volatile uint64_t lost;  /* records lost to a full ring (packets went on) */
	uint32_t traced;         /* packets traced in arming traced_gen */
	uint32_t traced_gen;
	uint8_t ring[SERPENS_OBS_RING] __attribute__((aligned(64)));
};

struct serpens_pool_ctl {
	/* ---- A ---- */
	volatile uint32_t cmd_seq;  /* bumped after a command is queued on the socket */
	volatile uint32_t merge_req; /* bumped to ask the instance to merge its state now */
	uint64_t wake_cycles;       /* TSC when A woke the process for a command (benchmarks) */
	volatile uint32_t own_cpu;  /* 1: the agent placed this process alone on its CPU, so it
				     * may spin while waiting for ring room; 0: it shares the CPU
				     * (with instances or the router) and yields it instead */
	volatile uint32_t nf_cycles_on; /* 1: count each NF call's TSC cycles (benchmarks;
					 * per-NF timed_cycles/timed_pkts), loaded once per burst */
	volatile uint32_t split_req; /* bumped to ask the instance to split a share of each
				      * release pool off for another server (docs/state.md
				      * "Between servers"): into `<table>@out` */
	uint8_t pad_a2[36];

	/* ---- R: lifecycle ---- */
	volatile uint32_t state;    /* serpens_pool_state */
	volatile uint32_t ack_seq;  /* seq of the last command handled */
	volatile uint64_t sleeping; /* the sleep's number while blocked (or about to block) on
				     * the eventfd, 0 while running (see the header comment) */
	int32_t last_error;         /* -errno of the last command, 0 on success */
	uint32_t instance_id;       /* of the running instance */
	uint32_t pid;
	volatile uint32_t merge_done; /* the merge_req last answered: eventual replicas merged,
				       * release shares given back (all before it is in the tables) */
	volatile uint32_t split_done; /* the split_req last answered (split_rc its result) */
	int32_t split_rc;            /* 0, or -errno of the last split (split_error says why) */
	char split_error[120];
	char error[200];            /* human-readable reason when last_error != 0 */
	char state_error[128];      /* why the state backend stopped serving (empty: it did not):
				     * a baseline that lost its store must not report figures */

	/* ---- P: the producer of its packets (router or harness) ---- */
	volatile uint64_t woken __attribute__((aligned(64))); /* the last sleep claimed (woken) */

	/* ---- R: statistics ---- */
	uint64_t rx_pkts __attribute__((aligned(64)));
	uint64_t tx_pkts;
	uint64_t drop_pkts;
	uint64_t bad_labels;  /* packets an NF gave an invalid label: dropped */
	uint64_t bad_mbufs;   /* packets whose mbuf an NF left broken (length, chain): dropped */
	uint64_t batches;
	uint64_t wakeups;
	uint64_t forked_done;       /* forked baseline children that finished (LOAD_FORK) */
	uint64_t t_cmd_cycles;     /* TSC when the start command was read (benchmarks) */
	uint64_t t_ready_cycles;   /* TSC when the NFs were mapped and initialised */
	uint64_t t_burst_cycles;   /* TSC when the first burst was handed to the TX ring */
	uint64_t t_batch_cycles;   /* TSC when the instance began its first batch */
	uint64_t busy_cycles;      /* TSC cycles the instance spent on batches (its chain and
				    * per-batch state work, not waits for ring room): the SFC's
				    * CPU time for usage metering; 0 at each start */

	/* ---- R: the batch in flight (mbuf pointers; valid in every DPDK process) ----
	 * inflight_n is set before the batch is dequeued (into inflight[]) and cleared once all
	 * of it is in the TX ring; after the process died the router frees the batch's packets
	 * that never reached the TX ring (router.c reap()). */
	volatile uint32_t inflight_n __attribute__((aligned(64)));
	volatile int32_t cur_step;  /* the step whose NF runs now (-1: none): names a crash */
	volatile uint64_t batch_tsc; /* TSC when the batch in hand began, 0 between batches:
				     * the router's watchdog kills an instance stuck in one */
	void *inflight[SERPENS_BURST];

	/* ---- R: how the process died, written by its fatal-signal handler ---- */
	struct serpens_crash {
		volatile uint32_t signo;  /* 0: no fatal signal recorded */
		int32_t code;             /* si_code */
		int32_t step;             /* cur_step at the fault (-1: outside any NF) */
		int32_t syscall;          /* SIGSYS: the system call refused */
		uint64_t addr;            /* si_addr (SIGSYS: the call's address) */
		uint64_t ip;              /* instruction pointer at the fault */
		uint64_t tsc;             /* when */
	} crash;

	/* ---- R: per-NF counters of the running instance, by step ---- */
	struct serpens_nf_counters nf[SERPENS_MAX_STEPS] __attribute__((aligned(64)));

	/* ---- A: which pool the next split_req is for ----
	 * "<namespace>/<table>": only that release pool (a peer whose pool ran dry asked for a
	 * share of it); empty: every pool (a node joining the SFC). Written before split_req. */
	char split_only[SERPENS_SPLIT_ONLY] __attribute__((aligned(64)));

	/* ---- A and R: capture and trace (above) ---- */
	struct serpens_obs obs __attribute__((aligned(64)));
};

/* A command is one SEQPACKET message of up to ~1 MiB: the agent raises its socket's send
 * buffer to fit (SO_SNDBUFFORCE). Only the bytes of config in use are sent. */
_Static_assert(__builtin_offsetof(struct serpens_pool_ctl, state) == 64,
	       "agent and runtime fields on separate cache lines");

/* Pass the CPU while waiting for the router (ring room): spin only on a CPU of our own. */
static inline void serpens_pool_wait(const struct serpens_pool_ctl *ctl)
{
	if (ctl->own_cpu)
		rte_pause();
	else
		sched_yield();
}

/* The producer's half of the sleep handshake (header comment): call after enqueueing for the
 * process (or asking something of it). Writes its eventfd at most once per sleep; returns 1 if
 * this call wrote it. */
static inline int serpens_pool_wake(struct serpens_pool_ctl *ctl, int efd)
{
	uint64_t one = 1;
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	uint64_t s = __atomic_load_n(&ctl->sleeping, __ATOMIC_RELAXED);
	if (s == 0 || s == __atomic_load_n(&ctl->woken, __ATOMIC_RELAXED))
		return 0;
	__atomic_store_n(&ctl->woken, s, __ATOMIC_RELAXED);
	return write(efd, &one, sizeof(one)) == sizeof(one);
}

#endif /* SERPENS_POOL_CTL_H */
