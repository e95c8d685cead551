/*
 * null -- the empty NF: every packet leaves unchanged. An SFC of it measures what the router
 * and the instance cost without any NF work (`bench sfc`'s null_sfc_mpps).
 */
#include <serpens/nf.h>

static void process(struct serpens_ctx *c, struct serpens_batch *b)
{
	(void)c;
	(void)b;
}

SERPENS_NF(.name = "null", .process = process, .hdrs = SERPENS_HDRS_KEPT);
