/*
 * The benchmarks' baseline loaders (runtime_cy/src/loader.h), registered when the extension
 * loads; the engine itself only maps images (SERPENS_LOAD_MAP).
 * - SERPENS_LOAD_DLOPEN, SOCK-style: a pre-initialised runtime dlopen()s each NF's .so (the
 *   command's dl_path) on every start and dlclose()s it at stop.
 * - SERPENS_LOAD_FORK, SAND-style: the process (a zygote) dlopen()s the NFs on its first start
 *   and keeps them; every start forks a child that runs the instance until its ring idles and
 *   exits, touching only the rings and the shared control block. The zygote stays free.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "loader.h"

static void dlopen_unload(struct serpens_nf_code *code)
{
	for (uint16_t i = 0; i < code->nimages; i++)
		dlclose(code->handles[i]);
	code->nimages = 0;
}

static int dlopen_load(struct serpens_nf_code *code, const struct serpens_cmd *cmd, const int *fds,
		       int nfds, char *err, size_t errlen)
{
	(void)fds;
	(void)nfds;
	code->nimages = 0;
	for (uint16_t i = 0; i < cmd->nimages; i++) {
		char path[sizeof(cmd->dl_path[i]) + 1];
		memcpy(path, cmd->dl_path[i], sizeof(cmd->dl_path[i]));
		path[sizeof(cmd->dl_path[i])] = 0;
		code->images[i] = cmd->images[i];
		void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
		void *sym = h ? dlsym(h, "nf_entry") : NULL;
		if (!sym) {
			snprintf(err, errlen, "dlopen %s: %s", path, dlerror());
			if (h)
				dlclose(h);
			dlopen_unload(code);
			return -ENOENT;
		}
		code->handles[i] = h;
		code->entries[i] = (serpens_nf_entry_fn)sym;
		code->nimages = i + 1;
	}
	return 0;
}

static int fork_load(struct serpens_nf_code *code, const struct serpens_cmd *cmd, const int *fds,
		     int nfds, char *err, size_t errlen)
{
	if (code->nimages) /* loaded by an earlier start: kept for every fork */
		return 0;
	return dlopen_load(code, cmd, fds, nfds, err, errlen);
}

static int fork_run_elsewhere(void (*run)(void *arg), void *arg)
{
	signal(SIGCHLD, SIG_IGN); /* the children reap themselves */
	pid_t pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		run(arg);
		_exit(0);
	}
	return 0;
}

static const struct serpens_loader dlopen_loader = {.load = dlopen_load,
						    .unload = dlopen_unload};
static const struct serpens_loader fork_loader = {.load = fork_load,
						  .run_elsewhere = fork_run_elsewhere};

__attribute__((constructor)) static void register_baseline_loaders(void)
{
	serpens_loader_register(SERPENS_LOAD_DLOPEN, &dlopen_loader);
	serpens_loader_register(SERPENS_LOAD_FORK, &fork_loader);
}
