/* The loader table (loader.h) and the engine's own loader: map the prepared images. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "loader.h"

static int map_load(struct serpens_nf_code *code, const struct serpens_cmd *cmd, const int *fds,
		    int nfds, char *err, size_t errlen)
{
	code->nimages = 0;
	if (nfds != cmd->nimages) {
		snprintf(err, errlen, "%u images but %d descriptors", cmd->nimages, nfds);
		return -EBADMSG;
	}
	for (uint16_t i = 0; i < cmd->nimages; i++) {
		struct serpens_image_layout *img = &code->images[i];
		*img = cmd->images[i];
		int rc = serpens_image_map(fds[i], img, cmd->populate);
		if (rc) {
			snprintf(err, errlen, "mapping image %u at 0x%llx: %s", i,
				 (unsigned long long)img->base, strerror(-rc));
			for (uint16_t k = 0; k < i; k++)
				serpens_image_unmap(&code->images[k]);
			return rc;
		}
		code->entries[i] = (serpens_nf_entry_fn)(uintptr_t)(img->base + img->entry_off);
		code->nimages = i + 1;
	}
	return 0;
}

static void map_unload(struct serpens_nf_code *code)
{
	for (uint16_t i = 0; i < code->nimages; i++)
		serpens_image_unmap(&code->images[i]);
	code->nimages = 0;
}

static const struct serpens_loader map_loader = {.load = map_load, .unload = map_unload};

static const struct serpens_loader *loaders[SERPENS_LOADERS] = {
	[SERPENS_LOAD_MAP] = &map_loader,
};

const struct serpens_loader *serpens_loader_of(uint32_t mode)
{
	return mode < SERPENS_LOADERS ? loaders[mode] : NULL;
}

int serpens_loader_register(uint32_t mode, const struct serpens_loader *loader)
{
	if (mode >= SERPENS_LOADERS || mode == SERPENS_LOAD_MAP || !loader || !loader->load)
		return -EINVAL;
	loaders[mode] = loader;
	return 0;
}
