/* Refused at compile time: a syntax error on line 8. */
#include <serpens/nf.h>

static void process(struct serpens_ctx *c, struct serpens_batch *b)
{
	(void)c;
	(void)b;
	int x = ;
}

SERPENS_NF(.name = "bad_syntax", .process = process);
