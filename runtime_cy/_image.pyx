# NF images: thin wrappers over runtime_cy/src/nf_image.c (verify, prepare, map, unmap).
# C results (0 / -errno) become exceptions here, once: NFRefusedError when the verifier refused
# the ELF (its message names the offending symbol, relocation or feature), OSError otherwise.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, uintptr_t
from libc.string cimport strerror, memchr

from serpens.runtime_cy.errors import NFRefusedError

from includes.nf_image cimport (
    SERPENS_NF_REGION_BASE, SERPENS_NF_AREA_SIZE, SERPENS_NF_AREAS, serpens_image_layout,
    serpens_image_verify, serpens_image_prepare, serpens_region_reserve, serpens_image_map,
    serpens_image_unmap,
)


cdef extern from "serpens/nf.h" nogil:
    struct serpens_nf_ops:
        uint16_t abi_major
        uint16_t abi_minor
        uint32_t size
        const char *name


ctypedef const serpens_nf_ops *(*nf_entry_fn)() noexcept nogil

NF_REGION_BASE = SERPENS_NF_REGION_BASE
NF_AREA_SIZE = SERPENS_NF_AREA_SIZE
NF_AREAS = SERPENS_NF_AREAS

cdef enum:
    ERRLEN = 512
cdef bint _reserved = False


cdef object _oserror(int rc, str what):
    return OSError(-rc, f"{what}: {strerror(-rc).decode()}")


cdef _raise(int rc, char *err, str what):
    if err[0]:
        raise NFRefusedError(err.decode("utf-8", "replace"))
    raise _oserror(rc, what)


cdef bytes _as_bytes(object so):
    # bytes(5) would be five zero bytes: insist on a bytes-like object.
    return so if type(so) is bytes else memoryview(so).tobytes()


cdef int _to_layout(object t, serpens_image_layout *l) except -1:
    base, text_len, relro_len, data_len, entry_off = t
    l.base = base
    l.text_len = text_len
    l.relro_len = relro_len
    l.data_len = data_len
    l.entry_off = entry_off
    return 0


def verify(so):
    """Check an NF shared object against the ABI: None, or NFRefusedError(reason)."""
    cdef bytes b = _as_bytes(so)
    cdef const uint8_t *p = <const uint8_t *><const char *>b
    cdef size_t n = len(b)
    cdef char err[ERRLEN]
    cdef int rc
    err[0] = 0
    with nogil:
        rc = serpens_image_verify(p, n, err, ERRLEN)
    if rc < 0:
        _raise(rc, err, "verify")


def prepare(so, uint64_t base):
    """Verify and build the sealed memfd for area address `base`.

    Returns (fd, (base, text_len, relro_len, data_len, entry_off)); the caller owns fd.
    """
    cdef bytes b = _as_bytes(so)
    cdef const uint8_t *p = <const uint8_t *><const char *>b
    cdef size_t n = len(b)
    cdef char err[ERRLEN]
    cdef int rc, fd = -1
    cdef serpens_image_layout l
    err[0] = 0
    with nogil:
        rc = serpens_image_prepare(p, n, base, &fd, &l, err, ERRLEN)
    if rc < 0:
        _raise(rc, err, "prepare NF image")
    return fd, (l.base, l.text_len, l.relro_len, l.data_len, l.entry_off)


def region_reserve():
    """Reserve the NF region in this process (idempotent within the process)."""
    global _reserved
    if _reserved:
        return
    cdef int rc = serpens_region_reserve()
    if rc < 0:
        raise _oserror(rc, f"reserve NF region at {SERPENS_NF_REGION_BASE:#x}")
    _reserved = True


def map_image(int fd, layout, bint populate=False):
    """Map a prepared image at its area (the region must be reserved in this process)."""
    cdef serpens_image_layout l
    cdef int rc
    _to_layout(layout, &l)
    with nogil:
        rc = serpens_image_map(fd, &l, populate)
    if rc < 0:
        raise _oserror(rc, f"map NF image at {l.base:#x}")


def unmap_image(layout):
    """Put the region reservation back over the image."""
    cdef serpens_image_layout l
    cdef int rc
    _to_layout(layout, &l)
    rc = serpens_image_unmap(&l)
    if rc < 0:
        raise _oserror(rc, f"unmap NF image at {l.base:#x}")


def probe_entry(layout):
    """Call nf_entry() of an image mapped in this process; return (abi_major, abi_minor, name).

    The ops struct and its name pointer must lie inside the image: `name` is a pointer the
    builder relocated for this area, so reading it back proves relocation worked. Calling this
    for an image that is not mapped here kills the process (it jumps into PROT_NONE).
    """
    cdef serpens_image_layout l
    cdef uint64_t end
    cdef const serpens_nf_ops *ops
    cdef const char *name
    cdef const void *nul
    _to_layout(layout, &l)
    end = l.base + l.text_len + l.relro_len + l.data_len
    if l.entry_off >= l.text_len:
        raise ValueError("entry_off is outside text")
    ops = (<nf_entry_fn><uintptr_t>(l.base + l.entry_off))()
    if <uint64_t><uintptr_t>ops < l.base or <uint64_t><uintptr_t>ops + sizeof(serpens_nf_ops) > end:
        raise ValueError(f"nf_entry returned {<uintptr_t>ops:#x}, outside the image")
    name = ops.name
    if <uint64_t><uintptr_t>name < l.base or <uint64_t><uintptr_t>name >= end:
        raise ValueError(f"ops->name {<uintptr_t>name:#x} is outside the image")
    nul = memchr(name, 0, end - <uint64_t><uintptr_t>name)
    if nul == NULL:
        raise ValueError("ops->name is not terminated inside the image")
    return ops.abi_major, ops.abi_minor, name.decode("utf-8", "replace")
