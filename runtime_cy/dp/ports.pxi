# DPDK ports: open, hot-plug, ports over rings (included by _dataplane.pyx).

def port_open(str name, Mempool pool):
    """Configure and start the DPDK port `name` (one RX and one TX queue); returns its id."""
    cdef char err[256]
    err[0] = 0
    rc = serpens_port_open(name.encode(), pool.mp, err, sizeof(err))
    if rc < 0:
        raise OSError(-rc, err.decode(errors="replace"))
    return rc


def port_close(uint16_t port):
    serpens_port_close(port)


def port_mac(uint16_t port):
    """DPDK port `port`'s own MAC address, "aa:bb:cc:dd:ee:ff"."""
    cdef rte_ether_addr mac
    rc = rte_eth_macaddr_get(port, &mac)
    if rc < 0:
        raise OSError(-rc, f"port {port}: no MAC address: {strerror(-rc).decode()}")
    return ":".join(f"{b:02x}" for b in mac.addr_bytes[:6])


def port_from_rings(str name, Ring rx, Ring tx, Mempool pool):
    """A started DPDK port whose RX reads `rx` and whose TX writes `tx` (tests, local
    traffic); returns its id."""
    cdef rte_ring *rxq[1]
    cdef rte_ring *txq[1]
    rxq[0] = rx.r
    txq[0] = tx.r
    cdef char err[256]
    port = rte_eth_from_rings(name.encode(), rxq, 1, txq, 1, rte_socket_id())
    if port < 0:
        raise _rte_error(f"port {name}")
    rc = serpens_port_start(port, name.encode(), pool.mp, err, sizeof(err))
    if rc < 0:
        raise OSError(-rc, err.decode(errors="replace"))
    return port


def port_attach(str devargs, Mempool pool):
    """Hot-plug a device (e.g. "net_af_packet0,iface=veth0") into a running primary, then
    configure and start it like port_open; returns the port id."""
    cdef uint16_t port
    cdef char err[256]
    name = devargs.split(",", 1)[0]
    rc = rte_dev_probe(devargs.encode())
    if rc < 0:
        raise OSError(-rc, f"port {name}: cannot attach {devargs!r}: {strerror(-rc).decode()}")
    if rte_eth_dev_get_port_by_name(name.encode(), &port) != 0:
        raise OSError(19, f"port {name}: attached but no ethdev of that name")
    rc = serpens_port_start(port, name.encode(), pool.mp, err, sizeof(err))
    if rc < 0:
        raise OSError(-rc, err.decode(errors="replace"))
    return port
