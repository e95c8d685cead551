/* Refused: calls into libc, which NFs do not have. */
#include <serpens/nf.h>

int printf(const char *fmt, ...);
void *malloc(size_t n);

static void process(struct serpens_ctx *c, struct serpens_batch *b)
{
	char *p = malloc(16);

	(void)c;
	printf("%u packets %p\n", b->count, p);
}

SERPENS_NF(.name = "bad_libc", .process = process);
