/* DPDK ports for the router: one RX and one TX queue each, set up and started. */
#ifndef SERPENS_PORTS_H
#define SERPENS_PORTS_H

#include <stddef.h>
#include <stdint.h>

#include <rte_mempool.h>

/* Find the port named `name` (a vdev name such as "net_pcap0", or a PCI address), configure
 * one RX and one TX queue with `mp` and start it. Returns the port id or -errno with `err`. */
int serpens_port_open(const char *name, struct rte_mempool *mp, char *err, size_t errlen);
/* The same for a port known by id (`name` is for messages). */
int serpens_port_start(uint16_t port, const char *name, struct rte_mempool *mp, char *err,
		       size_t errlen);
void serpens_port_close(uint16_t port);

#endif
