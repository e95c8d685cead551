/*
 * NF images: verify an NF shared object, prepare it as a sealed memfd pre-relocated for its
 * area in the NF region, and map/unmap it in a runtime process (paper §III-A "NF Manager",
 * DESIGN §3 "NF images").
 *
 * Theory of operation. Every process that runs NFs reserves the NF region (PROT_NONE) at the
 * same address first thing at start. The NF manager gives each deployed NF an area in it and
 * writes the NF's memory image (PT_LOAD segments at their vaddrs, .bss as sparse zeros) into a
 * memfd with every R_X86_64_RELATIVE relocation already applied for that area's address, then
 * seals it. Starting the NF in any process is then three mmaps at the area address:
 *   [0, text_len)                      text+rodata, shared, r-x   (file offset 0)
 *   [text_len, text_len+relro_len)     relro (.got, .dynamic ...), shared, r--
 *   [text_len+relro_len, +data_len)    .data+.bss, private copy-on-write, rw-
 * and stopping it is one munmap. No dynamic linker runs.
 *
 * Functions return 0 or -errno (verification failures: -EINVAL, with `err` naming the
 * offending symbol, relocation, segment or dynamic tag).
 */
#ifndef SERPENS_NF_IMAGE_H
#define SERPENS_NF_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#define SERPENS_NF_REGION_BASE 0x200000000000ULL /* 32 TiB: far above heap, below mmap base */
#define SERPENS_NF_AREA_SIZE (16ULL << 20)       /* largest image incl. .bss */
#define SERPENS_NF_AREAS 65536u                  /* 1 TiB of address space, reserved only */
#define SERPENS_NF_REGION_SIZE (SERPENS_NF_AREA_SIZE * SERPENS_NF_AREAS)

/* Where the pieces of a prepared image go; all lengths are multiples of 4096. */
struct serpens_image_layout {
	uint64_t base;      /* area address: SERPENS_NF_REGION_BASE + area * SERPENS_NF_AREA_SIZE */
	uint64_t text_len;  /* shared r-x, file offset 0 */
	uint64_t relro_len; /* shared r--, file offset text_len; may be 0 */
	uint64_t data_len;  /* private rw-, file offset text_len + relro_len; may be 0 */
	uint64_t entry_off; /* nf_entry's offset from base */
};

/* Check an NF shared object against the ABI (see nf.h): ELF64 x86-64 ET_DYN, no PT_INTERP,
 * PT_TLS, STT_TLS symbols, DT_NEEDED, DT_INIT/FINI(_ARRAY), DT_PREINIT_ARRAY, DT_TEXTREL, no
 * writable+executable segment, no undefined symbol, no relocation other than
 * R_X86_64_RELATIVE, nf_entry exported as a function and nothing else exported, and the image
 * fits an area. Never reads outside [elf, elf+len). */
int serpens_image_verify(const uint8_t *elf, size_t len, char *err, size_t errlen);

/* Verify, then build the sealed memfd for area address `base`. On success *memfd_out is the
 * fd (owned by the caller) and *layout describes it. */
int serpens_image_prepare(const uint8_t *elf, size_t len, uint64_t base, int *memfd_out,
			  struct serpens_image_layout *layout, char *err, size_t errlen);

/* Reserve the whole NF region PROT_NONE at SERPENS_NF_REGION_BASE (MAP_FIXED_NOREPLACE, checked).
 * Call once, before anything else maps memory (before rte_eal_init). */
int serpens_region_reserve(void);

/* The three mmaps (MAP_FIXED over the reservation; MAP_POPULATE optional). */
int serpens_image_map(int memfd, const struct serpens_image_layout *layout, int populate);

/* Unmap the image (one munmap). The area becomes a hole in the reservation; the next map of
 * it uses MAP_FIXED_NOREPLACE (see nf_image.c for why). */
int serpens_image_unmap(const struct serpens_image_layout *layout);

#endif /* SERPENS_NF_IMAGE_H */
