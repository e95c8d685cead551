/*
 * How a start command gets an SFC's NF code into the pool process: a loader, chosen once per
 * start by the command's load_mode from a small table. The engine has one, SERPENS_LOAD_MAP:
 * three mmaps of each sealed, pre-relocated image memfd (nf_image.h). Benchmarks register the
 * baselines' loaders (bench/native/loaders.c: dlopen, fork) when the extension loads; the
 * runtime's loop does not know them.
 */
#ifndef SERPENS_LOADER_H
#define SERPENS_LOADER_H

#include <stddef.h>
#include <stdint.h>

#include "nf_image.h"
#include "pool_ctl.h"

typedef const struct serpens_nf_ops *(*serpens_nf_entry_fn)(void);

/* The NF code of one instance, as its loader left it. */
struct serpens_nf_code {
	uint16_t nimages;
	serpens_nf_entry_fn entries[SERPENS_MAX_IMAGES]; /* each image's nf_entry */
	struct serpens_image_layout images[SERPENS_MAX_IMAGES];
	void *handles[SERPENS_MAX_IMAGES];               /* the loader's own (dlopen handles) */
};

struct serpens_loader {
	/* Fill `code` with the command's NF images (entries[] at least). fds: the descriptors
	 * that came with the command (the caller closes them after). 0 or -errno with `err`. */
	int (*load)(struct serpens_nf_code *code, const struct serpens_cmd *cmd, const int *fds,
		    int nfds, char *err, size_t errlen);
	/* Undo load (at stop, or after a failed init). NULL: the code stays for later starts. */
	void (*unload)(struct serpens_nf_code *code);
	/* NULL: the instance runs in this process's loop until stopped. Else the loader runs it
	 * elsewhere by calling run(arg) there (in a forked child, say: run() returns once the
	 * instance idles), and this process stays free for the next start. 0 or -errno. */
	int (*run_elsewhere)(void (*run)(void *arg), void *arg);
};

#define SERPENS_LOADERS 4 /* load modes 0..3 */

/* The loader of `mode` (serpens_load_mode), or NULL. */
const struct serpens_loader *serpens_loader_of(uint32_t mode);
/* Make `loader` serve `mode` (benchmarks, from a constructor). 0 or -EINVAL. */
int serpens_loader_register(uint32_t mode, const struct serpens_loader *loader);

#endif
