/*
 * creat -- a test NF that tries to create a file with a raw system call, as hostile code
 * would (no libc: the `syscall` instruction itself), to test the pool process sandbox.
 *
 * Config: the path to create (NUL-terminated, under 200 bytes). A packet whose UDP payload
 * starts with 'C' makes process() call creat(path, 0600); in a sandboxed pool process the
 * call raises SIGSYS, which kills the process. Other packets are forwarded.
 */
#include <serpens/nf.h>

#define SYS_creat 85

static char path[200];

static int init(struct serpens_ctx *ctx, const void *config, uint32_t len)
{
	(void)ctx;
	if (len == 0 || len >= sizeof(path))
		return -22;
	memcpy(path, config, len);
	path[len] = 0;
	return 0;
}

static long raw_creat(const char *p)
{
	long ret;
	__asm__ volatile("syscall" : "=a"(ret) : "a"(SYS_creat), "D"(p), "S"(0600)
			 : "rcx", "r11", "memory");
	return ret;
}

static void process(struct serpens_ctx *ctx, struct serpens_batch *b)
{
	for (uint32_t k = 0; k < b->count; k++) {
		uint32_t i = b->idx[k];
		struct serpens_hdrs h;
		if (ctx->api->parse(b->data[i], b->len[i], &h) == SERPENS_PARSE_OK &&
		    h.payload_len >= 1 && b->data[i][h.payload_off] == 'C')
			raw_creat(path);
	}
}

SERPENS_NF(.name = "creat", .init = init, .process = process);
