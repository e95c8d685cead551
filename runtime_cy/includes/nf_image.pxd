# Declarations of runtime_cy/src/nf_image.h (see there for the contract).
from libc.stdint cimport uint8_t, uint64_t


cdef extern from "nf_image.h" nogil:
    const uint64_t SERPENS_NF_REGION_BASE
    const uint64_t SERPENS_NF_AREA_SIZE
    const unsigned int SERPENS_NF_AREAS
    const uint64_t SERPENS_NF_REGION_SIZE

    struct serpens_image_layout:
        uint64_t base
        uint64_t text_len
        uint64_t relro_len
        uint64_t data_len
        uint64_t entry_off

    int serpens_image_verify(const uint8_t *elf, size_t len, char *err, size_t errlen)
    int serpens_image_prepare(const uint8_t *elf, size_t len, uint64_t base, int *memfd_out,
                              serpens_image_layout *layout, char *err, size_t errlen)
    int serpens_region_reserve()
    int serpens_image_map(int memfd, const serpens_image_layout *layout, int populate)
    int serpens_image_unmap(const serpens_image_layout *layout)
