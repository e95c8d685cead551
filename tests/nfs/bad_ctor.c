/* Refused: constructors would run code when a dynamic linker loads the image; none runs here. */
#include <serpens/nf.h>

static int ready;

__attribute__((constructor)) static void setup(void)
{
	ready = 1;
}

static void process(struct serpens_ctx *c, struct serpens_batch *b)
{
	(void)c;
	if (!ready)
		for (uint32_t k = 0; k < b->count; k++)
			serpens_drop(b, b->idx[k]);
}

SERPENS_NF(.name = "bad_ctor", .process = process);
