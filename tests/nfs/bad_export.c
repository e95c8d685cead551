/* Refused: exports a function besides nf_entry. */
#include <serpens/nf.h>

__attribute__((visibility("default"))) int helper(int x)
{
	return x + 1;
}

static void process(struct serpens_ctx *c, struct serpens_batch *b)
{
	(void)c;
	b->n = helper(b->n) - 1;
}

SERPENS_NF(.name = "bad_export", .process = process);
