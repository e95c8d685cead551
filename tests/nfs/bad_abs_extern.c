/* Refused: a data pointer to a symbol that nothing defines (an R_X86_64_64 relocation). */
#include <serpens/nf.h>

extern int platform_table;
int *p = &platform_table;

static void process(struct serpens_ctx *c, struct serpens_batch *b)
{
	(void)c;
	(void)b;
	*p += 1;
}

SERPENS_NF(.name = "bad_abs_extern", .process = process);
