/*
 * Pool process sandbox: no_new_privs, no capabilities, a seccomp allow-list (sandbox.h).
 *
 * The allow-list was measured with `strace -f -c` on pool processes running FW->MON->NAT,
 * sleeping, merging state on request, stopping and starting again, with local and Redis state
 * (scripts/pool_syscalls.py re-measures it). docs/runtime.md explains each entry. The filter
 * is installed with TSYNC so DPDK's threads (rte_mp_handle, the interrupt thread) get it too.
 */
#include <dirent.h>
#include <errno.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "nf_image.h"
#include "sandbox.h"

#define X32_SYSCALL_BIT 0x40000000u
#define ARG_ANY (-1)
#define ARG_SELF_PID (-2) /* the argument must be this process's pid (as a value) */

struct allowed {
	int nr;
	int arg;        /* index of the argument checked, or ARG_ANY */
	long value;     /* the only value allowed for it (its low 32 bits are compared) */
	int value_kind; /* 0: value; ARG_SELF_PID: getpid() */
};

#define ANY(nr) {nr, ARG_ANY, 0, 0}
#define ARG_IS(nr, i, v) {nr, i, v, 0}
#define ARG_IS_SELF(nr, i) {nr, i, 0, ARG_SELF_PID}

static const struct allowed allowed[] = {
	/* the packet loop: sleeping on the eventfd, commands (and image fds) over the socketpair,
	 * yielding the core, the clock where the vDSO falls back to the kernel */
	ANY(SYS_read), ANY(SYS_recvmsg), ANY(SYS_sched_yield), ANY(SYS_clock_gettime),
	ANY(SYS_nanosleep), ANY(SYS_clock_nanosleep), ANY(SYS_futex), ANY(SYS_close),
	/* instance start/stop: mapping NF images; creating or attaching state tables under the
	 * state directory */
	ANY(SYS_mmap), ANY(SYS_munmap), ANY(SYS_mprotect), ANY(SYS_madvise), ANY(SYS_brk),
	ANY(SYS_openat), ANY(SYS_mkdir), ANY(SYS_statfs), ANY(SYS_fstat), ANY(SYS_newfstatat),
	ANY(SYS_ftruncate), ANY(SYS_pread64), ANY(SYS_unlink), ANY(SYS_fallocate),
	ANY(SYS_renameat2), /* a table is built aside, its space reserved, then renamed in */
	/* DPDK's rte_mp_handle thread following the primary's hugepage heap (mp_malloc_sync):
	 * open/lock/map or unmap/unlink the segment files, read /proc/self/pagemap, check the
	 * NUMA node, a SIGBUS guard while touching the page, the reply; the interrupt thread's
	 * epoll_wait */
	ANY(SYS_flock), ANY(SYS_lseek), ANY(SYS_get_mempolicy), ANY(SYS_sendmsg),
	ANY(SYS_epoll_wait),
	/* ... and the primary's hot-plugged ports (a device attached while pools run): the IPC
	 * thread arms an alarm, the interrupt thread rebuilds its epoll set */
	ANY(SYS_timerfd_settime), ANY(SYS_epoll_create), ANY(SYS_epoll_create1),
	ANY(SYS_epoll_ctl),
	/* NF log lines (nf_api.c) and DPDK's log go to stderr */
	ANY(SYS_write),
	/* signals (the crash handler runs on its own stack), abort() (tgkill to this process
	 * only), exiting */
	ANY(SYS_rt_sigaction), ANY(SYS_rt_sigprocmask), ANY(SYS_rt_sigreturn), ANY(SYS_sigaltstack),
	ANY(SYS_restart_syscall), ANY(SYS_getpid), ANY(SYS_gettid), ARG_IS_SELF(SYS_tgkill, 0),
	ANY(SYS_exit), ANY(SYS_exit_group),
};

/* Only with SERPENS_SANDBOX_NET: the Redis state backend of the benchmarks' baselines
 * (bench/native/redis_state.h), a stream to Redis' Unix socket. Never for a node's pool: an
 * NF could reach other local services. */
static const struct allowed allowed_net[] = {
	ARG_IS(SYS_socket, 0, AF_UNIX), ANY(SYS_connect), ANY(SYS_setsockopt), ANY(SYS_sendto),
	ANY(SYS_recvfrom),
};

#define NALLOWED (sizeof(allowed) / sizeof(allowed[0]))
#define NALLOWED_NET (sizeof(allowed_net) / sizeof(allowed_net[0]))
/* per entry at most 5 instructions; plus the prologues and the default */
#define MAX_PROG (16 + 5 * (NALLOWED + NALLOWED_NET))

static size_t add_rules(struct sock_filter *f, size_t n, const struct allowed *list, size_t len,
			long pid)
{
	for (size_t i = 0; i < len; i++) {
		const struct allowed *a = &list[i];
		if (a->arg == ARG_ANY) {
			f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, a->nr, 0, 1);
			f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
			continue;
		}
		long want = a->value_kind == ARG_SELF_PID ? pid : a->value;
		/* nr matches: load the argument's low word, allow only `want`, trap otherwise */
		f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, a->nr, 0, 4);
		f[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
						      offsetof(struct seccomp_data, args[a->arg]));
		f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)want, 0, 1);
		f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
		f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRAP);
	}
	return n;
}

static size_t build_filter(struct sock_filter *f, long pid, int flags)
{
	size_t n = 0;
	const unsigned nr_off = offsetof(struct seccomp_data, nr);
	/* the NF region's addresses share their high 32 bits (nf_image.h): 32 TiB + 1 TiB */
	const uint32_t region_hi = (uint32_t)(SERPENS_NF_REGION_BASE >> 32);
	const uint32_t region_end_hi =
		(uint32_t)((SERPENS_NF_REGION_BASE + SERPENS_NF_REGION_SIZE - 1) >> 32);

	f[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
					      offsetof(struct seccomp_data, arch));
	f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0);
	f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRAP);
	f[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, nr_off);
	/* x32 calls share the arch value: refuse them by their number's flag bit */
	f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, X32_SYSCALL_BIT, 0, 1);
	f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRAP);
	/* A system call instruction inside the NF region is an NF's own: none is allowed, so an
	 * NF cannot use even the calls the runtime needs (openat, mmap, ...) by itself. */
	f[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
					      offsetof(struct seccomp_data, instruction_pointer) + 4);
	f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, region_hi, 0, 2);
	f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JGT | BPF_K, region_end_hi, 1, 0);
	f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRAP);
	f[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, nr_off);
	n = add_rules(f, n, allowed, NALLOWED, pid);
	if (flags & SERPENS_SANDBOX_NET)
		n = add_rules(f, n, allowed_net, NALLOWED_NET, pid);
	f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRAP);
	return n;
}

static int fail(char *err, size_t errlen, int rc, const char *what)
{
	snprintf(err, errlen, "sandbox: %s: %s", what, strerror(-rc));
	return rc;
}

/* Capabilities and the bounding set belong to each thread: this runs in every one. Raw
 * system calls only, as it also runs in a signal handler. 0 or -errno. */
static int drop_own_capabilities(void)
{
	/* The bounding set first: dropping from it needs CAP_SETPCAP, which goes next. */
	for (int cap = 0; cap <= 63; cap++) {
		if (syscall(SYS_prctl, PR_CAPBSET_DROP, cap, 0, 0, 0) && errno != EINVAL)
			return -errno;
	}
	if (syscall(SYS_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) && errno != EINVAL)
		return -errno;
	struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
	struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];
	memset(data, 0, sizeof(data));
	return syscall(SYS_capset, &hdr, data) ? -errno : 0;
}

static int threads_done, threads_rc;

static void drop_capabilities_handler(int sig)
{
	int saved = errno, rc = drop_own_capabilities();
	(void)sig;
	if (rc)
		__atomic_store_n(&threads_rc, rc, __ATOMIC_RELAXED);
	__atomic_add_fetch(&threads_done, 1, __ATOMIC_RELEASE);
	errno = saved;
}

/* DPDK's threads exist already: have each drop its capabilities in a signal handler (what
 * glibc does for setuid across threads), then drop ours. */
static int drop_capabilities(char *err, size_t errlen)
{
	struct sigaction sa = {.sa_handler = drop_capabilities_handler}, old;
	pid_t self = (pid_t)syscall(SYS_gettid);
	int sent = 0, rc = 0;

	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGRTMIN, &sa, &old))
		return fail(err, errlen, -errno, "installing the capability handler");
	__atomic_store_n(&threads_done, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&threads_rc, 0, __ATOMIC_RELAXED);
	DIR *d = opendir("/proc/self/task");
	if (!d)
		rc = -errno;
	for (struct dirent *e; d && (e = readdir(d)) != NULL;) {
		pid_t tid = (pid_t)atoi(e->d_name);
		if (tid <= 0 || tid == self)
			continue;
		if (syscall(SYS_tgkill, getpid(), tid, SIGRTMIN) == 0)
			sent++;
		else if (errno != ESRCH)
			rc = -errno;
	}
	if (d)
		closedir(d);
	for (int waited = 0; !rc && __atomic_load_n(&threads_done, __ATOMIC_ACQUIRE) < sent;
	     waited++) {
		if (waited == 1000) { /* a second: some thread blocks the signal */
			rc = -ETIMEDOUT;
			break;
		}
		usleep(1000);
	}
	sigaction(SIGRTMIN, &old, NULL);
	if (!rc)
		rc = __atomic_load_n(&threads_rc, __ATOMIC_RELAXED);
	if (!rc)
		rc = drop_own_capabilities();
	return rc ? fail(err, errlen, rc, "dropping capabilities in every thread") : 0;
}

int serpens_sandbox_enter(int flags, char *err, size_t errlen)
{
	struct sock_filter insns[MAX_PROG];
	int rc;

	err[0] = 0;
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
		return fail(err, errlen, -errno, "no_new_privs");
	if ((rc = drop_capabilities(err, errlen)) != 0)
		return rc;
	struct sock_fprog prog = {.len = (unsigned short)build_filter(insns, getpid(), flags),
				  .filter = insns};
	long r = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &prog);
	if (r < 0)
		return fail(err, errlen, -errno, "installing the seccomp filter");
	if (r > 0) { /* TSYNC names the thread it could not synchronise */
		snprintf(err, errlen, "sandbox: thread %ld could not take the seccomp filter", r);
		return -EAGAIN;
	}
	return 0;
}
