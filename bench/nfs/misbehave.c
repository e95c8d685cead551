/*
 * misbehave -- an NF that does what untrusted code might, for the fault-injection tests and
 * `serpensctl bench faults`. Its configuration's first byte picks the misdeed, done on every
 * batch it is given:
 *
 *   'N'  write through a NULL pointer (SIGSEGV)
 *   'R'  read 1 MiB past the end of its first packet (SIGSEGV if that is not mapped)
 *   'L'  loop forever inside process() (the watchdog's case)
 *   'S'  create the file named by the rest of the configuration with a raw `syscall`
 *        instruction (open(O_CREAT)): the sandbox must refuse it (SIGSYS)
 *   else forward everything
 */
#include <serpens/nf.h>

static uint8_t mode;
static char path[200];
static volatile uint64_t sink;

static int init(struct serpens_ctx *ctx, const void *config, uint32_t len)
{
	const char *cfg = config;
	(void)ctx;
	mode = len ? (uint8_t)cfg[0] : 0;
	for (uint32_t i = 1; i < len && i < sizeof(path); i++)
		path[i - 1] = cfg[i];
	return 0;
}

static long raw_open(const char *file, long flags, long perm)
{
	long ret;
	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(2L /* SYS_open */), "D"(file), "S"(flags), "d"(perm)
			 : "rcx", "r11", "memory");
	return ret;
}

static void process(struct serpens_ctx *ctx, struct serpens_batch *b)
{
	(void)ctx;
	if (b->count == 0)
		return;
	uint32_t first = b->idx[0];
	switch (mode) {
	case 'N':
		*(volatile int *)0 = 1;
		break;
	case 'R':
		for (uint64_t off = 0; off <= (1u << 20); off += 4096)
			sink += b->data[first][b->len[first] + off];
		break;
	case 'L':
		for (;;)
			sink++;
	case 'S':
		raw_open(path, 0100 /* O_CREAT */ | 01 /* O_WRONLY */, 0644);
		break;
	}
}

SERPENS_NF(.name = "misbehave", .init = init, .process = process);
