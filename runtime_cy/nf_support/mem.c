/*
 * memcpy/memset/memcmp linked into every NF image (NFs have no libc, but gcc emits calls to
 * these for struct copies and large initialisers even under -ffreestanding).
 *
 * Hidden visibility: each NF has its own copy and exports nothing but nf_entry. Build with
 * -fno-builtin -fno-tree-loop-distribute-patterns, or gcc recognises the loops below as
 * memcpy/memset and turns them back into calls to themselves.
 *
 * Copies use 8-byte words once both pointers are aligned the same way (the common case for
 * packet headers and structs); small or misaligned tails go byte by byte.
 */
#include <stddef.h>
#include <stdint.h>

#define NF_MEM __attribute__((visibility("hidden")))

/* Words may alias anything, including the bytes around them. */
typedef uint64_t __attribute__((may_alias)) word_t;

NF_MEM void *memcpy(void *dst, const void *src, size_t n)
{
	uint8_t *d = dst;
	const uint8_t *s = src;

	if ((((uintptr_t)d ^ (uintptr_t)s) & 7) == 0) {
		while (n && ((uintptr_t)d & 7)) {
			*d++ = *s++;
			n--;
		}
		for (; n >= 32; n -= 32, d += 32, s += 32) {
			((word_t *)d)[0] = ((const word_t *)s)[0];
			((word_t *)d)[1] = ((const word_t *)s)[1];
			((word_t *)d)[2] = ((const word_t *)s)[2];
			((word_t *)d)[3] = ((const word_t *)s)[3];
		}
		for (; n >= 8; n -= 8, d += 8, s += 8)
			*(word_t *)d = *(const word_t *)s;
	}
	while (n--)
		*d++ = *s++;
	return dst;
}

NF_MEM void *memset(void *dst, int c, size_t n)
{
	uint8_t *d = dst;
	word_t w = (uint8_t)c * 0x0101010101010101ULL;

	while (n && ((uintptr_t)d & 7)) {
		*d++ = (uint8_t)c;
		n--;
	}
	for (; n >= 32; n -= 32, d += 32) {
		((word_t *)d)[0] = w;
		((word_t *)d)[1] = w;
		((word_t *)d)[2] = w;
		((word_t *)d)[3] = w;
	}
	for (; n >= 8; n -= 8, d += 8)
		*(word_t *)d = w;
	while (n--)
		*d++ = (uint8_t)c;
	return dst;
}

NF_MEM int memcmp(const void *a, const void *b, size_t n)
{
	const uint8_t *p = a, *q = b;

	/* Skip equal words quickly; the first differing word is then compared bytewise. */
	if ((((uintptr_t)p ^ (uintptr_t)q) & 7) == 0) {
		while (n && ((uintptr_t)p & 7)) {
			if (*p != *q)
				return *p - *q;
			p++, q++, n--;
		}
		while (n >= 8 && *(const word_t *)p == *(const word_t *)q)
			p += 8, q += 8, n -= 8;
	}
	for (; n; p++, q++, n--)
		if (*p != *q)
			return *p - *q;
	return 0;
}
