/* Refused: thread-local storage. */
#include <serpens/nf.h>

static __thread uint64_t packets;

static void process(struct serpens_ctx *c, struct serpens_batch *b)
{
	(void)c;
	packets += b->count;
}

SERPENS_NF(.name = "bad_tls", .process = process);
