# Packet helpers of the C core, for tests (included by _dataplane.pyx).

def parse(bytes frame):
    """serpens_parse on a frame (tests): (result, dict of the parsed offsets)."""
    cdef serpens_hdrs h
    cdef int r = serpens_parse(<const unsigned char *>PyBytes_AS_STRING(frame), len(frame), &h)
    return r, {"ethertype": h.ethertype, "l3_off": h.l3_off, "l4_off": h.l4_off,
               "payload_off": h.payload_off, "payload_len": h.payload_len,
               "l3_len": h.l3_len, "family": h.family, "flags": h.flags}
