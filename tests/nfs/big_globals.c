/*
 * Accepted: static tables of pointers to the NF's own static data. Each pointer is an
 * R_X86_64_RELATIVE relocation that the image builder applies for the area address, like the
 * `name` pointer of the ops struct. The arrays are large enough to give the image .data and
 * .bss pages of their own.
 */
#include <serpens/nf.h>

static const char *const rules[] = {"allow tcp 80", "allow tcp 443", "deny udp 53", "deny any"};
static uint32_t hits[4];
static uint32_t *const hit_ptr[4] = {&hits[0], &hits[1], &hits[2], &hits[3]};
static uint8_t scratch[64 * 1024];          /* .bss */
static uint8_t *scratch_ptr[4] = {scratch, scratch + 4096, scratch + 8192, scratch + 12288};
static char names[8][SERPENS_COUNTER_NAME] = {"r0", "r1", "r2", "r3"};
static int counters[4];

static int init(struct serpens_ctx *c, const void *config, uint32_t config_len)
{
	(void)config;
	(void)config_len;
	for (int k = 0; k < 4; k++) {
		counters[k] = c->api->counter_register(c, names[k]);
		if (counters[k] < 0)
			return counters[k];
	}
	return 0;
}

static void process(struct serpens_ctx *c, struct serpens_batch *b)
{
	for (uint32_t k = 0; k < b->count; k++) {
		uint32_t i = b->idx[k];
		uint32_t r = b->len[i] & 3;

		(*hit_ptr[r])++;
		serpens_count(c, counters[r], 1);
		memcpy(scratch_ptr[r], b->data[i], b->len[i] < 4096 ? b->len[i] : 4096);
		if (rules[r][0] == 'd')
			serpens_drop(b, i);
	}
}

SERPENS_NF(.name = "big_globals", .init = init, .process = process);
