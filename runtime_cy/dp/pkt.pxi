# Packet helpers of the C core, for tests (included by _dataplane.pyx).

def parse(bytes frame, bint general=False):
    """serpens_parse on a frame (tests): (result, dict of the parsed offsets and, as "raw",
    the whole struct's bytes, flow and pads included); with `general`, the parser without
    the common frames' straight path."""
    cdef serpens_hdrs h
    cdef const unsigned char *f = <const unsigned char *>PyBytes_AS_STRING(frame)
    cdef int r = serpens_parse_general(f, len(frame), &h) if general else \
        serpens_parse(f, len(frame), &h)
    return r, {"ethertype": h.ethertype, "l3_off": h.l3_off, "l4_off": h.l4_off,
               "payload_off": h.payload_off, "payload_len": h.payload_len,
               "l3_len": h.l3_len, "family": h.family, "flags": h.flags,
               "raw": PyBytes_FromStringAndSize(<const char *>&h, sizeof(h))}
