/*
 * Pool process main loop. Idle: blocked on the eventfd. START: map the SFC's NF images (three
 * mmaps each), init the NFs, then poll the instance's RX ring, run the chainer over each burst
 * of up to 32 packets and hand every packet to the TX ring with its verdict. After `idle_us`
 * without packets the instance sleeps on the eventfd until the router (or a command) wakes it.
 * STOP: fini, unmap, back to idle. No allocation, lock, syscall or Python on the packet path.
 */
#define _GNU_SOURCE /* REG_RIP, siginfo's SIGSYS fields */
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#include <rte_cycles.h>
#include <rte_mbuf.h>
#include <rte_mbuf_dyn.h>
#include <rte_ring.h>

#include "chainer.h"
#include "loader.h"
#include "ring_end.h"
#include "runtime.h"

struct instance {
	struct serpens_chain chain;
	const struct serpens_state_backend *state; /* chosen at start */
	struct serpens_ring_end rx, tx; /* its RX ring's consumer, its TX ring's producer */
	const struct serpens_loader *loader; /* of the last start (loader.h) */
	struct serpens_nf_code code;
	int first_burst_done;
};

struct runtime {
	const struct serpens_runtime_env *env;
	struct serpens_pool_ctl *ctl;
	struct serpens_cmd cmd; /* last command received */
	int fds[SERPENS_MAX_IMAGES];
	int nfds;
	struct instance inst;
	int running;
	uint64_t idle_cycles;
	uint64_t sleeps; /* numbers this process's sleeps (pool_ctl.h): the last one's */
	struct serpens_observer observer; /* of the burst in hand while capture or trace is on */
};

static void set_error(struct runtime *rt, int rc, const char *msg)
{
	rt->ctl->last_error = rc;
	snprintf(rt->ctl->error, sizeof(rt->ctl->error), "%s", msg);
}

static void ack(struct runtime *rt, int rc)
{
	if (rc == 0) {
		rt->ctl->last_error = 0;
		rt->ctl->error[0] = 0;
	}
	__atomic_store_n(&rt->ctl->ack_seq, rt->cmd.seq, __ATOMIC_RELEASE);
}

static int pending_command(const struct runtime *rt)
{
	return __atomic_load_n(&rt->ctl->cmd_seq, __ATOMIC_ACQUIRE) != rt->ctl->ack_seq;
}

static int pending_merge(const struct runtime *rt)
{
	return __atomic_load_n(&rt->ctl->merge_req, __ATOMIC_ACQUIRE) != rt->ctl->merge_done ||
	       __atomic_load_n(&rt->ctl->split_req, __ATOMIC_ACQUIRE) != rt->ctl->split_done;
}


/* Sleep on the eventfd unless work arrived meanwhile (see pool_ctl.h for the handshake). */
static void sleep_until_woken(struct runtime *rt, struct rte_ring *rx)
{
	uint64_t v;
	__atomic_store_n(&rt->ctl->sleeping, ++rt->sleeps, __ATOMIC_RELAXED);
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	/* rx: running an instance (merge requests are for it); NULL: idle in the pool */
	if (!pending_command(rt) && (!rx || (!pending_merge(rt) && rte_ring_count(rx) == 0))) {
		if (read(rt->env->efd, &v, sizeof(v)) < 0 && errno != EINTR)
			usleep(1000); /* should not happen; do not spin if it does */
		rt->ctl->wakeups++;
	}
	__atomic_store_n(&rt->ctl->sleeping, 0, __ATOMIC_RELAXED);
}

/* ---- fatal signals ------------------------------------------------------------------------
 * An NF is untrusted code running in this process: a fault in it (or a system call the sandbox
 * refuses, SIGSYS) ends the process. Before it ends, the handler writes what happened into the
 * control block, which the agent reads after the death to name the NF, the signal and the
 * address in the SFC's status. It runs on its own stack (the NF may have wrecked ours), touches
 * only the control block, and then lets the signal's default action end the process so the
 * agent sees the real signal. */
static struct serpens_pool_ctl *crash_ctl;

static void on_fatal_signal(int sig, siginfo_t *si, void *uc_)
{
	struct serpens_pool_ctl *ctl = crash_ctl;
	ucontext_t *uc = uc_;
	if (ctl && !ctl->crash.signo) {
		ctl->crash.code = si->si_code;
		ctl->crash.step = ctl->cur_step;
		ctl->crash.addr = sig == SIGSYS ? (uint64_t)(uintptr_t)si->si_call_addr
						: (uint64_t)(uintptr_t)si->si_addr;
		ctl->crash.syscall = sig == SIGSYS ? si->si_syscall : -1;
		ctl->crash.ip = uc ? (uint64_t)uc->uc_mcontext.gregs[REG_RIP] : 0;
		ctl->crash.tsc = rte_rdtsc();
		__atomic_store_n(&ctl->crash.signo, (uint32_t)sig, __ATOMIC_RELEASE);
	}
	/* Die of this signal now, whatever raised it (a refused call is skipped, not re-run;
	 * int3 or a kill() would just return): the default action, sent to ourselves. */
	sigset_t unblock;
	signal(sig, SIG_DFL);
	sigemptyset(&unblock);
	sigaddset(&unblock, sig); /* (the handler runs with every signal blocked) */
	sigprocmask(SIG_UNBLOCK, &unblock, NULL);
	syscall(SYS_tgkill, getpid(), syscall(SYS_gettid), sig);
	syscall(SYS_exit_group, 128 + sig); /* not reached */
}

static void catch_fatal_signals(struct serpens_pool_ctl *ctl)
{
	static uint8_t altstack[64 * 1024];
	static const int sigs[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGSYS, SIGTRAP};
	stack_t ss = {.ss_sp = altstack, .ss_size = sizeof(altstack)};
	struct sigaction sa;

	crash_ctl = ctl;
	memset(&ctl->crash, 0, sizeof(ctl->crash));
	ctl->cur_step = -1;
	sigaltstack(&ss, NULL);
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_fatal_signal;
	sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
	sigfillset(&sa.sa_mask);
	for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
		sigaction(sigs[i], &sa, NULL);
}

/* ---- commands --------------------------------------------------------------------------- */

static int receive_command(struct runtime *rt)
{
	char cbuf[CMSG_SPACE(sizeof(int) * SERPENS_MAX_IMAGES)];
	struct iovec iov = {&rt->cmd, sizeof(rt->cmd)};
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
			    .msg_controllen = sizeof(cbuf)};
	ssize_t n = recvmsg(rt->env->sock, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);

	rt->nfds = 0;
	if (n <= 0)
		return n == 0 ? -EPIPE : -errno;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
			int k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
			memcpy(rt->fds, CMSG_DATA(c), sizeof(int) * k);
			rt->nfds = k;
		}
	}
	size_t head = offsetof(struct serpens_cmd, config);
	if ((size_t)n < head || rt->cmd.magic != SERPENS_CMD_MAGIC ||
	    rt->cmd.config_len > SERPENS_CONFIG_MAX || (size_t)n < head + rt->cmd.config_len ||
	    rt->cmd.nimages > SERPENS_MAX_IMAGES || (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)))
		return -EBADMSG;
	return 0;
}

static void close_fds(struct runtime *rt)
{
	for (int i = 0; i < rt->nfds; i++)
		close(rt->fds[i]);
	rt->nfds = 0;
}

static void unload_code(struct instance *in)
{
	if (in->loader && in->loader->unload)
		in->loader->unload(&in->code);
}

static struct rte_ring *find_ring(const char *name, uint64_t addr)
{
	struct rte_ring *r = (struct rte_ring *)(uintptr_t)addr;
	if (r && strncmp(r->name, name, SERPENS_RING_NAME) == 0)
		return r;
	return rte_ring_lookup(name);
}

static void run_instance(struct runtime *rt, int detached);

/* The state backend the command names, attached (state_backend.h). */
static int attach_state(struct runtime *rt, char *err, size_t errlen)
{
	const struct serpens_cmd *cmd = &rt->cmd;
	const struct serpens_state_backend *b = serpens_state_backend_get(cmd->state_backend);
	char arg[SERPENS_STATE_ARG];

	rt->ctl->state_error[0] = 0;
	rt->inst.state = NULL;
	if (!b) {
		snprintf(err, errlen, "no state backend %u in this build", cmd->state_backend);
		return -ENOENT;
	}
	memcpy(arg, cmd->state_arg, sizeof(arg));
	arg[sizeof(arg) - 1] = 0;
	int rc = b->attach ? b->attach(arg, rt->ctl->state_error, sizeof(rt->ctl->state_error),
				      err, errlen) : 0;
	if (rc == 0)
		rt->inst.state = b;
	return rc;
}

/* The state backend's flush (state_backend.h; NULL for the local one). */
static void state_flush(const struct instance *in)
{
	if (in->state && in->state->flush)
		in->state->flush();
}

/* The agent asked for a share of every release pool for another server (pool_ctl.h
 * split_req): split it off into `<table>@out` with the NFs' split ops, then answer. */
static void answer_split(struct runtime *rt, struct instance *in)
{
	struct serpens_pool_ctl *ctl = rt->ctl;
	uint32_t req = __atomic_load_n(&ctl->split_req, __ATOMIC_ACQUIRE);
	if (req == ctl->split_done)
		return;
	char only[SERPENS_SPLIT_ONLY];
	memcpy(only, ctl->split_only, sizeof(only)); /* written before split_req (acquired) */
	only[sizeof(only) - 1] = 0;
	ctl->split_error[0] = 0;
	ctl->split_rc = serpens_chain_exchange(&in->chain, 1, only, ctl->split_error,
					       sizeof(ctl->split_error));
	state_flush(in);
	__atomic_store_n(&ctl->split_done, req, __ATOMIC_RELEASE);
}

/* The instance of the last start, run by a loader elsewhere (loader.h run_elsewhere: a forked
 * child of this process) until its ring stays empty, then ended. */
static void run_detached(void *arg)
{
	struct runtime *rt = arg;
	struct instance *in = &rt->inst;
	char err[200];

	in->first_burst_done = 0;
	if (serpens_chain_init(&in->chain, &rt->cmd, in->state->api, in->code.entries, rt->ctl,
			       err, sizeof(err)) == 0) {
		run_instance(rt, 1);
		serpens_chain_fini(&in->chain);
		state_flush(in);
	}
	__atomic_add_fetch(&rt->ctl->forked_done, 1, __ATOMIC_RELEASE);
}

/* 0: the instance runs in this process; 1: its loader runs it elsewhere; or -errno. */
static int start_instance(struct runtime *rt)
{
	const struct serpens_cmd *cmd = &rt->cmd;
	struct instance *in = &rt->inst;
	char err[200] = "";
	int rc;

	rt->ctl->t_cmd_cycles = rte_rdtsc();
	serpens_ring_end_init(&in->rx, find_ring(cmd->rx_ring, cmd->rx_ring_addr), 1);
	serpens_ring_end_init(&in->tx, find_ring(cmd->tx_ring, cmd->tx_ring_addr), 0);
	if (!in->rx.r || !in->tx.r) {
		close_fds(rt);
		snprintf(err, sizeof(err), "no ring named '%.32s' or '%.32s'", cmd->rx_ring, cmd->tx_ring);
		set_error(rt, -ENOENT, err);
		return -ENOENT;
	}
	in->loader = serpens_loader_of(cmd->load_mode);
	if (!in->loader) {
		close_fds(rt);
		snprintf(err, sizeof(err), "no loader for load mode %u", cmd->load_mode);
		set_error(rt, -EINVAL, err);
		return -EINVAL;
	}
	if ((rc = attach_state(rt, err, sizeof(err))) != 0) {
		close_fds(rt);
		set_error(rt, rc, err);
		return rc;
	}
	rc = in->loader->load(&in->code, cmd, rt->fds, rt->nfds, err, sizeof(err));
	close_fds(rt); /* the mappings keep the memfds alive */
	if (rc == 0 && in->loader->run_elsewhere) {
		rc = in->loader->run_elsewhere(run_detached, rt);
		if (rc == 0)
			return 1;
		snprintf(err, sizeof(err), "%s", strerror(-rc));
	} else if (rc == 0) {
		rc = serpens_chain_init(&in->chain, cmd, in->state->api, in->code.entries, rt->ctl,
					err, sizeof(err));
		if (rc)
			unload_code(in);
	}
	if (rc) {
		set_error(rt, rc, err);
		return rc;
	}
	in->first_burst_done = 0;
	rt->ctl->t_batch_cycles = 0;
	rt->ctl->busy_cycles = 0;
	rt->ctl->instance_id = cmd->instance_id;
	rt->ctl->t_ready_cycles = rte_rdtsc();
	return 0;
}

static void stop_instance(struct runtime *rt)
{
	uint32_t req = __atomic_load_n(&rt->ctl->merge_req, __ATOMIC_ACQUIRE);
	answer_split(rt, &rt->inst); /* the agent waits for it */
	serpens_chain_fini(&rt->inst.chain);
	state_flush(&rt->inst); /* what fini() wrote too */
	/* fini merged and gave everything back: that answers any merge request left */
	__atomic_store_n(&rt->ctl->merge_done, req, __ATOMIC_RELEASE);
	unload_code(&rt->inst);
	rt->ctl->instance_id = 0;
}

/* ---- packets ---------------------------------------------------------------------------- */

/* An mbuf's two lines: the first (addresses, lengths) is read here; the second is written,
 * as it holds the label's dynfield, and read at the end of the burst (m->next): taking it
 * for writing now saves a second transfer from the router's core, where RX wrote it. */
static inline void prefetch_mbufs(struct rte_mbuf *const *m, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++) {
		rte_prefetch0(m[i]);
		__builtin_prefetch((const char *)m[i] + RTE_CACHE_LINE_SIZE, 1, 3);
	}
}

/* A frame's first line, for writing: NFs that rewrite headers (NAT) store into it, and a
 * line fetched shared from the router's core would cross again at the first store. */
static inline void prefetch_frame(const void *data)
{
	__builtin_prefetch(data, 1, 3);
}

/* The mbufs of the burst that follows in the ring: `ready` of them (at most SERPENS_BURST)
 * are known to wait behind this burst (ring_end.h: no new look at prod.tail, a line the
 * router writes all the time), read without taking them. While this burst runs, the next one's
 * lines, written on the router's core, cross to this one (a cross-core miss costs 150-550
 * cycles here; paid in front of each burst it was ~10% of an SFC's time, issue 18): its
 * mbufs as this burst starts, its frames (addressed by the mbufs, come by then) as it ends. */
static inline void burst_after(const struct serpens_ring_end *rx, uint32_t ready,
			       struct rte_mbuf **next)
{
	for (uint32_t j = 0; j < ready; j++)
		next[j] = serpens_ring_peek(rx, j);
}

/* One body, two specializations (as the chainer's): with ob == NULL (constant) nothing of
 * capture or trace is left in it; process_burst() picks one per burst. */
static inline __attribute__((always_inline)) void
run_burst(struct runtime *rt, struct instance *in, uint32_t n, uint32_t ready,
	  struct serpens_observer *ob, uint32_t obs_gen, int timed)
{
	struct serpens_pool_ctl *ctl = rt->ctl;
	struct serpens_batch b;
	int off = rt->env->label_off;
	uint32_t out = 0;

	b.n = n;
	b.now_ns = serpens_now_ns();
	uint64_t t0 = rte_rdtsc();
	ctl->batch_tsc = t0;
	if (!ctl->t_batch_cycles)
		ctl->t_batch_cycles = ctl->batch_tsc;
	/* The router's core wrote these mbufs: fetch all headers, then all frames, together
	 * rather than one cross-core miss after another (when the ring held this burst behind
	 * the last one, they were fetched during that one: burst_after), and the next
	 * burst's headers behind this one's work. */
	prefetch_mbufs((struct rte_mbuf *const *)ctl->inflight, n);
	for (uint32_t i = 0; i < n; i++) {
		struct rte_mbuf *m = ctl->inflight[i];
		prefetch_frame(rte_pktmbuf_mtod(m, void *));
	}
	struct rte_mbuf *next[SERPENS_BURST]; /* the next burst's (burst_after) */
	burst_after(&in->rx, ready, next);
	prefetch_mbufs(next, ready);
	uint32_t single = 0; /* bit i: packet i came as one segment */
	for (uint32_t i = 0; i < n; i++) {
		struct rte_mbuf *m = ctl->inflight[i];
		b.pkt[i] = m;
		b.data[i] = rte_pktmbuf_mtod(m, uint8_t *);
		b.len[i] = m->data_len;
		/* NFs see one contiguous frame; chained mbufs are refused, not half-processed. */
		b.labels[i] = m->nb_segs == 1 ? 0 : SERPENS_LABEL_DROP;
		single |= (uint32_t)(m->nb_segs == 1) << i;
	}
	/* Nothing parsed yet: the first NF that reads a packet's headers parses it (nf.h). */
	memset(b.parse, SERPENS_PARSE_STALE, sizeof(b.parse));
	b.flow_hashed = 0;
	serpens_nf_batch_begin(&b); /* whose flows' hashes the state lookups may reuse */
	in->chain.bad_labels = 0;
	if (ob || timed) {
		if (ob)
			serpens_obs_begin(ob, &ctl->obs, obs_gen, &b);
		serpens_chain_run_observed(&in->chain, &b, ob, timed);
	} else {
		serpens_chain_run(&in->chain, &b);
	}
	serpens_nf_batch_begin(NULL);
	if (in->state->batch_end)
		in->state->batch_end();
	for (uint32_t i = 0; i < n; i++) {
		struct rte_mbuf *m = ctl->inflight[i]; /* not b.pkt[]: the NF could rewrite that */
		/* The NF had the mbuf in hand: the router frees or sends what leaves here, so a
		 * header it broke (a length past the buffer, a chain) must not leave, and freeing
		 * it must not follow a chain it made up. */
		if ((single >> i & 1) &&
		    unlikely(m->nb_segs != 1 || m->next != NULL || m->pkt_len != m->data_len ||
			     (uint32_t)m->data_off + m->data_len > m->buf_len)) {
			if (b.labels[i] == SERPENS_LABEL_OUT) {
				b.labels[i] = SERPENS_LABEL_DROP;
				ctl->bad_mbufs++;
			}
			m->next = NULL; /* (written only when broken: no line dirtied per packet) */
			m->nb_segs = 1;
		}
		*RTE_MBUF_DYNFIELD(m, off, uint16_t *) = b.labels[i];
		out += b.labels[i] == SERPENS_LABEL_OUT;
	}
	if (ob) { /* what leaves the SFC, as it leaves */
		for (uint32_t i = 0; i < n; i++) {
			struct rte_mbuf *m = ctl->inflight[i];
			uint32_t room = m->data_off < m->buf_len ? m->buf_len - m->data_off : 0;
			b.data[i] = rte_pktmbuf_mtod(m, uint8_t *);
			b.len[i] = m->data_len < room ? m->data_len : room; /* (a broken one) */
		}
		serpens_obs_end(ob, &b, n);
	}
	ctl->rx_pkts += n;
	ctl->tx_pkts += out;
	ctl->drop_pkts += n - out;
	ctl->bad_labels += in->chain.bad_labels;
	ctl->batches++;
	for (uint32_t j = 0; j < ready; j++)
		prefetch_frame(rte_pktmbuf_mtod(next[j], void *));
	ctl->busy_cycles += rte_rdtsc() - t0; /* (usage: not the wait for room below) */

	/* Everything goes back to the router, drops included: it owns the mbufs. A full TX ring
	 * waits for the router, which drains it only when the next hop has room: sharing the
	 * core with that hop (or the router), spinning would hold the core its room depends on
	 * until our time slice ends, so we yield; on a core of our own we spin. The watchdog
	 * does not count this wait (batch_tsc is cleared first). */
	ctl->batch_tsc = 0;
	uint32_t sent = 0;
	while (sent < n) {
		sent += serpens_ring_give(&in->tx, ctl->inflight + sent, n - sent);
		if (sent < n)
			serpens_pool_wait(ctl);
	}
	__atomic_store_n(&ctl->inflight_n, 0, __ATOMIC_RELEASE);
	if (!in->first_burst_done) {
		in->first_burst_done = 1;
		ctl->t_burst_cycles = rte_rdtsc();
	}
}

/* n packets taken, `ready` more behind them (at most SERPENS_BURST: the next burst). */
static void process_burst(struct runtime *rt, struct instance *in, uint32_t n, uint32_t ready)
{
	/* Capture, trace or per-NF cycles armed? The one branch per burst they cost while off. */
	uint32_t obs_gen = __atomic_load_n(&rt->ctl->obs.on, __ATOMIC_ACQUIRE);
	uint32_t timed = rt->ctl->nf_cycles_on;
	if (unlikely(obs_gen | timed))
		run_burst(rt, in, n, ready, obs_gen ? &rt->observer : NULL, obs_gen, timed != 0);
	else
		run_burst(rt, in, n, ready, NULL, 0, 0);
}

/* Poll until a command is pending, or (detached: a process of its own, see run_detached) until
 * idle. */
static void run_instance(struct runtime *rt, int detached)
{
	struct instance *in = &rt->inst;
	struct serpens_pool_ctl *ctl = rt->ctl;
	uint64_t idle_since = 0;

	for (;;) {
		if (!detached && pending_command(rt))
			return;
		if (pending_merge(rt)) { /* the agent wants the tables whole (a state read) */
			uint32_t req = __atomic_load_n(&ctl->merge_req, __ATOMIC_ACQUIRE);
			serpens_chain_merge(&in->chain, serpens_now_ns(), 1);
			serpens_chain_release(&in->chain, 0);
			char err[8];
			serpens_chain_exchange(&in->chain, 0, NULL, err, sizeof(err)); /* returned shares */
			state_flush(in);
			__atomic_store_n(&ctl->merge_done, req, __ATOMIC_RELEASE);
			answer_split(rt, in);
		}
		/* inflight_n first, then the dequeue (all or nothing): a process killed at any
		 * point leaves the router enough to free exactly what it held (router.c reap()). */
		uint32_t n = serpens_ring_ready(&in->rx, SERPENS_BURST), behind = 0;
		if (n) {
			__atomic_store_n(&ctl->inflight_n, n, __ATOMIC_RELEASE);
			behind = serpens_ring_take(&in->rx, ctl->inflight, n);
			process_burst(rt, in, n, behind < SERPENS_BURST ? behind : SERPENS_BURST);
			idle_since = 0;
			uint64_t now_ns = serpens_now_ns();
			int merge = now_ns >= in->chain.next_merge_ns;
			if (merge || in->chain.has_release) { /* the SFC's state work: its CPU too */
				uint64_t t0 = rte_rdtsc();
				if (merge)
					serpens_chain_merge(&in->chain, now_ns, 0);
				if (in->chain.has_release)
					serpens_chain_release(&in->chain, 1);
				ctl->busy_cycles += rte_rdtsc() - t0;
			}
			continue;
		}
		uint64_t now = rte_rdtsc();
		if (!idle_since) {
			idle_since = now;
		} else if (now - idle_since > rt->idle_cycles) {
			if (detached)
				return;
			/* Asleep, it can neither merge on time nor answer its pools: merge now and
			 * give back what it holds (state tables). */
			serpens_chain_merge(&in->chain, serpens_now_ns(), 1);
			serpens_chain_release(&in->chain, 0);
			state_flush(in);
			sleep_until_woken(rt, in->rx.r);
			idle_since = 0;
		} else {
			/* Nothing to do: let another instance sharing this core run now rather than
			 * at the end of our time slice (milliseconds); alone on the core this returns
			 * at once, and polls the ring no harder than the router's line can bear. */
			sched_yield();
		}
	}
}

static int handle_command(struct runtime *rt)
{
	int rc = receive_command(rt);
	if (rc) {
		close_fds(rt);
		/* Without a readable command, answer the sequence number we were woken for. */
		rt->cmd.seq = rt->ctl->cmd_seq;
		set_error(rt, rc, "unreadable command");
		ack(rt, rc);
		return rc == -EPIPE ? rc : 0;
	}
	switch (rt->cmd.kind) {
	case SERPENS_CMD_START:
		if (rt->running) {
			close_fds(rt);
			set_error(rt, -EBUSY, "an instance is already running");
			rc = -EBUSY;
		} else {
			rc = start_instance(rt);
			rt->running = rc == 0;
			rc = rc > 0 ? 0 : rc; /* (1: it runs elsewhere, this process stays idle) */
			if (rt->running)
				__atomic_store_n(&rt->ctl->state, SERPENS_POOL_RUNNING, __ATOMIC_RELEASE);
		}
		ack(rt, rc);
		return 0;
	case SERPENS_CMD_STOP:
		close_fds(rt);
		if (rt->running) {
			stop_instance(rt);
			rt->running = 0;
		}
		__atomic_store_n(&rt->ctl->state, SERPENS_POOL_IDLE, __ATOMIC_RELEASE);
		ack(rt, 0);
		return 0;
	case SERPENS_CMD_EXIT:
		close_fds(rt);
		if (rt->running)
			stop_instance(rt);
		rt->running = 0;
		__atomic_store_n(&rt->ctl->state, SERPENS_POOL_EXITED, __ATOMIC_RELEASE);
		ack(rt, 0);
		return 1;
	default:
		close_fds(rt);
		set_error(rt, -EINVAL, "unknown command");
		ack(rt, -EINVAL);
		return 0;
	}
}

int serpens_runtime_main(const struct serpens_runtime_env *env)
{
	static struct runtime rt; /* large (the chain and a command); one per process */

	memset(&rt, 0, sizeof(rt));
	rt.env = env;
	rt.ctl = env->ctl;
	rt.idle_cycles = rte_get_tsc_hz() / 1000000 * env->idle_us;
	rt.ctl->pid = getpid();
	catch_fatal_signals(rt.ctl);
	__atomic_store_n(&rt.ctl->state, SERPENS_POOL_IDLE, __ATOMIC_RELEASE);

	for (;;) {
		if (rt.running) {
			run_instance(&rt, 0);
		} else if (!pending_command(&rt)) {
			sleep_until_woken(&rt, NULL);
			continue;
		}
		int rc = handle_command(&rt);
		if (rc)
			return rc > 0 ? 0 : rc;
	}
}
