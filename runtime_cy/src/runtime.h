/*
 * The pool process main loop (paper §III-A "Process Pool", §IV-B2). See pool_ctl.h for the
 * protocol with the agent.
 */
#ifndef SERPENS_RUNTIME_H
#define SERPENS_RUNTIME_H

#include <stdint.h>

#include "pool_ctl.h"

struct serpens_runtime_env {
	struct serpens_pool_ctl *ctl;
	int sock;            /* commands (+ image fds) from the agent */
	int efd;             /* wake-ups */
	int label_off;       /* mbuf dynfield offset of the uint16_t verdict */
	uint32_t idle_us;    /* poll an empty ring this long before sleeping */
};

/* Runs until an EXIT command or a fatal error; returns 0 or -errno. Never exits the process. */
int serpens_runtime_main(const struct serpens_runtime_env *env);

#endif
