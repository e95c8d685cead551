/*
 * The pool process sandbox (issue 11, docs/runtime.md "Sandbox"). A pool process runs untrusted
 * NF code in its own address space; once it has attached to DPDK it enters the sandbox, for
 * good and for every thread (DPDK's own included):
 *   - no_new_privs, so nothing it executes can gain privileges;
 *   - no capabilities: effective, permitted, inheritable, ambient and the bounding set, in
 *     every thread (capabilities are per thread: DPDK's threads drop theirs in a handler);
 *   - a seccomp filter allowing only the system calls the runtime loop and DPDK's threads
 *     were measured to make (sandbox.c lists them with the reason for each). Any other call,
 *     an x32 call or a call from another architecture's ABI raises SIGSYS in the calling
 *     thread (SECCOMP_RET_TRAP): without a handler that kills the process.
 */
#ifndef SERPENS_SANDBOX_H
#define SERPENS_SANDBOX_H

#include <stddef.h>

/* Enter the sandbox. 0, or -errno with a message in err. Not reversible. */
#define SERPENS_SANDBOX_NET 1 /* also allow a Unix socket client (the Redis baseline) */

int serpens_sandbox_enter(int flags, char *err, size_t errlen);

#endif
