# Offline replay of a capture through one instance (included by _dataplane.pyx).

def replay(uint16_t in_port, uint16_t out_port, Ring rx, Ring tx, PoolCtl ctl, int efd):
    """Run a capture through an instance (see replay.h): returns the router's counts."""
    cdef serpens_replay_stats st
    cdef int rc
    with nogil:
        rc = serpens_replay(in_port, out_port, rx.r, tx.r, ctl.c, efd, label_off, &st)
    if rc:
        raise OSError(-rc, strerror(-rc).decode())
    return {"rx": st.rx, "out": st.out, "dropped": st.dropped, "tx_failed": st.tx_failed}
