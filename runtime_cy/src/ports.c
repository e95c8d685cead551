/* Port setup (see ports.h). */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <rte_ethdev.h>

#include "ports.h"

#define RX_DESC 1024
#define TX_DESC 1024

int serpens_port_open(const char *name, struct rte_mempool *mp, char *err, size_t errlen)
{
	uint16_t port;

	if (rte_eth_dev_get_port_by_name(name, &port) != 0) {
		snprintf(err, errlen, "no DPDK port named %s (is it in the node's vdevs/allow list?)",
			 name);
		return -ENODEV;
	}
	return serpens_port_start(port, name, mp, err, errlen);
}

int serpens_port_start(uint16_t port, const char *name, struct rte_mempool *mp, char *err,
		       size_t errlen)
{
	struct rte_eth_conf conf;
	int rc;

	memset(&conf, 0, sizeof(conf));
	if ((rc = rte_eth_dev_configure(port, 1, 1, &conf)) < 0 ||
	    (rc = rte_eth_rx_queue_setup(port, 0, RX_DESC, rte_eth_dev_socket_id(port), NULL, mp)) < 0 ||
	    (rc = rte_eth_tx_queue_setup(port, 0, TX_DESC, rte_eth_dev_socket_id(port), NULL)) < 0 ||
	    (rc = rte_eth_dev_start(port)) < 0) {
		snprintf(err, errlen, "port %s: setup failed: %s", name, strerror(-rc));
		return rc;
	}
	return port;
}

void serpens_port_close(uint16_t port)
{
	rte_eth_dev_stop(port);
	rte_eth_dev_close(port);
}
