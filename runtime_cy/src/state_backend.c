/* State backends (see state_backend.h). */
#include <errno.h>

#include "nf_api.h"
#include "state_backend.h"

static const struct serpens_state_backend local = {
	.name = "local",
	.api = &serpens_api_v1,
};

static const struct serpens_state_backend *backends[SERPENS_STATE_BACKENDS] = {
	[SERPENS_STATE_LOCAL] = &local,
};

int serpens_state_backend_register(uint32_t id, const struct serpens_state_backend *b)
{
	if (id == SERPENS_STATE_LOCAL || id >= SERPENS_STATE_BACKENDS || !b || !b->api)
		return -EINVAL;
	backends[id] = b;
	return 0;
}

const struct serpens_state_backend *serpens_state_backend_get(uint32_t id)
{
	return id < SERPENS_STATE_BACKENDS ? backends[id] : NULL;
}
