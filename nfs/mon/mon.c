/*
 * mon -- traffic monitor: per-flow and per-host packet and byte counters.
 *
 * Ports: one input, one output (port 0). MON forwards every packet unchanged to port 0: it
 * never drops, never rewrites, not even malformed or non-IP frames (those are only counted).
 *
 * What is counted, per packet (bytes = the frame's length, Ethernet header included):
 *   - flows: the per-flow state table "flows" (SERPENS_PER_FLOW|READ|WRITE), key struct
 *     serpens_flow as the parser fills it (addresses, ports / ICMP echo id, protocol, family;
 *     zero padding), value {u64 packets, u64 bytes}. Written only by the instance the router
 *     pins the flow to, so plain additions.
 *   - hosts: the global state table "hosts" (SERPENS_GLOBAL|WRITE|EVENTUAL), key 20 bytes
 *     {u8 addr[16] (source address; IPv4 in the first 4 bytes, rest zero), u8 family (4/6),
 *     u8 pad[3] = 0}, value {u64 packets, u64 bytes}. Each instance counts into its own
 *     replica; the runtime adds the replicas into the shared table every merge_period_ms (set
 *     with api->timer in init), before the instance sleeps and when it stops (MON has no
 *     ops->merge: the default merge adds the u64 words). Readers outside see the shared table,
 *     so per-host totals lag by at most one merge period while instances run (the runtime
 *     also merges before an instance sleeps) and are exact once they stopped. MON needs a
 *     runtime with eventual replicas (api->timer present): init fails otherwise.
 *   - Non-first IP fragments (parser: FRAGMENT) carry no L4 header: they count for their host
 *     and for the flow with ports 0 (addresses, protocol and family of the packet), and in
 *     the counter "fragments".
 *   - Malformed frames (parser: TRUNCATED, BAD_HEADER or anything unknown) are counted under
 *     "malformed" and forwarded; they are in no table.
 *   - Non-IP frames (ARP, LLDP, ...) are counted under "non_ip" and forwarded; in no table.
 *   - Full tables: a packet of a new flow when "flows" holds flow_capacity entries, or of a
 *     new host when this instance's replica of "hosts" holds host_capacity entries, is
 *     forwarded and counted under "flows_full" / "hosts_full" (not in that table). Nothing is
 *     evicted. (Replica entries stay, zeroed, after a merge; counts of a host the full shared
 *     table cannot take yet stay in the replica until it can.)
 *
 * State outlives instances: the tables belong to the NF's name in the SFC on the node, so a
 * restarted instance (scale to zero) and concurrent instances of the same name continue the
 * same counters. A table's capacity is fixed when first created: an instance configured with
 * other capacities than the existing tables fails init (SERPENS_EEXIST, logged); drop the
 * tables with the state manager or use another NF name. The agent reads the counters with
 * nfs/mon/__init__.py read_flows() / read_hosts() (agent/state_manager.py).
 *
 * Counters: packets, bytes (every packet MON saw, bytes = frame lengths), new_flows (flow
 * entries this instance created), new_hosts (entries it created in its replica: hosts new to
 * it), fragments, malformed, non_ip, flows_full, hosts_full.
 *
 * Configuration (a dict; nfs/mon/__init__.py encode_config() validates and packs it):
 *   flow_capacity:   entries of "flows" (default 65536, 1..16777216)
 *   host_capacity:   entries of "hosts" (default 4096, 1..16777216)
 *   merge_period_ms: period of the host-table merge (default 100, 1..60000)
 *
 * Packed config (little-endian), checked again by init() (SERPENS_EINVAL on anything off):
 *   16 bytes: u32 magic 0x314e4d53 ("SMN1"), u32 flow_capacity, u32 host_capacity,
 *   u32 merge_period_ms. An empty config means all defaults.
 *
 * Example:
 *     NF(build_stock("mon"), config=mon.encode_config({"flow_capacity": 1 << 20}))
 *     ...
 *     mon.read_flows(StateManager(state_dir), "mon")  # {flow tuple: (packets, bytes)}
 */
#include <serpens/nf.h>

#define MON_MAGIC 0x314e4d53u
#define MON_CFG_LEN 16
#define MON_MAX_CAPACITY (1u << 24)
#define MON_MAX_PERIOD_MS 60000u

struct mon_counts { /* value of both tables */
	uint64_t packets;
	uint64_t bytes;
};

struct mon_host { /* key of "hosts" */
	uint8_t addr[16];
	uint8_t family;
	uint8_t pad[3];
};
_Static_assert(sizeof(struct mon_host) == 20, "host key is 20 bytes");

static int t_flows = -1, t_hosts = -1;
static int c_packets, c_bytes, c_new_flows, c_new_hosts, c_fragments, c_malformed, c_non_ip,
	c_flows_full, c_hosts_full;

static uint32_t rd32le(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static int has_member(const struct serpens_api *api, size_t end)
{
	return api->abi_minor >= 1 && api->size >= end;
}

#define API_HAS(api, m) has_member(api, offsetof(struct serpens_api, m) + sizeof((api)->m))

static int init(struct serpens_ctx *ctx, const void *config, uint32_t len)
{
	const struct serpens_api *api = ctx->api;
	uint32_t flow_cap = 65536, host_cap = 4096, period_ms = 100;

	if (len) {
		const uint8_t *c = config;
		if (!c || len != MON_CFG_LEN || rd32le(c) != MON_MAGIC)
			return SERPENS_EINVAL;
		flow_cap = rd32le(c + 4);
		host_cap = rd32le(c + 8);
		period_ms = rd32le(c + 12);
		if (flow_cap < 1 || flow_cap > MON_MAX_CAPACITY || host_cap < 1 ||
		    host_cap > MON_MAX_CAPACITY || period_ms < 1 || period_ms > MON_MAX_PERIOD_MS)
			return SERPENS_EINVAL;
	}
	if (!API_HAS(api, timer) || !api->create_table || !api->get_state || !api->get_state_bulk ||
	    !api->put_state || !api->timer) {
		api->log(ctx, SERPENS_LOG_ERR, "mon needs state tables with eventual replicas");
		return SERPENS_EINVAL;
	}

	t_flows = api->create_table(ctx, "flows", SERPENS_PER_FLOW | SERPENS_READ | SERPENS_WRITE,
				    sizeof(struct serpens_flow), sizeof(struct mon_counts), flow_cap);
	if (t_flows < 0)
		return t_flows;
	t_hosts = api->create_table(ctx, "hosts", SERPENS_GLOBAL | SERPENS_WRITE | SERPENS_EVENTUAL,
				    sizeof(struct mon_host), sizeof(struct mon_counts), host_cap);
	if (t_hosts < 0)
		return t_hosts;

	int rc = api->timer(ctx, t_hosts, NULL, (uint64_t)period_ms * 1000000ull);
	if (rc < 0) {
		api->log(ctx, SERPENS_LOG_ERR, "timer(hosts, %u ms) failed (%d)", period_ms, rc);
		return rc;
	}

	c_packets = api->counter_register(ctx, "packets");
	c_bytes = api->counter_register(ctx, "bytes");
	c_new_flows = api->counter_register(ctx, "new_flows");
	c_new_hosts = api->counter_register(ctx, "new_hosts");
	c_fragments = api->counter_register(ctx, "fragments");
	c_malformed = api->counter_register(ctx, "malformed");
	c_non_ip = api->counter_register(ctx, "non_ip");
	c_flows_full = api->counter_register(ctx, "flows_full");
	c_hosts_full = api->counter_register(ctx, "hosts_full");
	return 0;
}

/* Count one packet of `len` bytes for key in table t (the flow table, or this instance's
 * replica of the host table: either way this instance is the entry's only writer, so plain
 * additions). `v` is the bulk lookup's answer. Returns 1 if it created the entry, -1 if the
 * table refused it (full), 0 otherwise. */
static int count(struct serpens_ctx *ctx, int t, const void *key, void *v, uint32_t len)
{
	if (!v) /* a key seen twice in one batch was inserted by its first packet */
		v = ctx->api->get_state(ctx, t, key);
	if (v) {
		struct mon_counts *c = v;
		c->packets++;
		c->bytes += len;
		return 0;
	}
	struct mon_counts first = {1, len};
	return ctx->api->put_state(ctx, t, key, &first, (void **)0) == 0 ? 1 : -1;
}

static void process(struct serpens_ctx *ctx, struct serpens_batch *b)
{
	const struct serpens_api *api = ctx->api;
	struct mon_host hosts[SERPENS_BURST];
	const void *fkeys[SERPENS_BURST], *hkeys[SERPENS_BURST];
	void *fvals[SERPENS_BURST], *hvals[SERPENS_BURST];
	uint32_t flen[SERPENS_BURST];
	uint32_t n = 0;
	uint64_t bytes = 0, fragments = 0, malformed = 0, non_ip = 0;
	uint64_t new_flows = 0, new_hosts = 0, flows_full = 0, hosts_full = 0;

	/* Every packet keeps the label the chainer gave it: port 0. */
	for (uint32_t k = 0; k < b->count; k++) {
		uint32_t i = b->idx[k];
		const struct serpens_hdrs *h;
		bytes += b->len[i];
		switch (serpens_hdrs(ctx, b, i, &h)) { /* parsed once for the SFC */
		case SERPENS_PARSE_FRAGMENT:
			fragments++; /* (the parser leaves a fragment's ports 0) */
			break;
		case SERPENS_PARSE_OK:
			break;
		case SERPENS_PARSE_NON_IP:
			non_ip++;
			continue;
		default: /* TRUNCATED, BAD_HEADER, anything newer */
			malformed++;
			continue;
		}
		if (h->flow.family != 4 && h->flow.family != 6) {
			malformed++;
			continue;
		}
		memcpy(hosts[n].addr, h->flow.src, 16);
		hosts[n].family = h->flow.family;
		hosts[n].pad[0] = hosts[n].pad[1] = hosts[n].pad[2] = 0;
		fkeys[n] = &h->flow;
		hkeys[n] = &hosts[n];
		flen[n] = b->len[i];
		n++;
	}

	if (n) {
		/* independent lookups: one call (one round trip where state is remote) */
		struct serpens_lookup l[2] = {{t_flows, n, fkeys, fvals}, {t_hosts, n, hkeys, hvals}};
		if (API_HAS(api, get_state_multi) && api->get_state_multi) {
			api->get_state_multi(ctx, l, 2);
		} else {
			api->get_state_bulk(ctx, t_flows, fkeys, n, fvals);
			api->get_state_bulk(ctx, t_hosts, hkeys, n, hvals);
		}
		for (uint32_t j = 0; j < n; j++) {
			int rc = count(ctx, t_flows, fkeys[j], fvals[j], flen[j]);
			new_flows += rc > 0;
			flows_full += rc < 0;
			rc = count(ctx, t_hosts, hkeys[j], hvals[j], flen[j]);
			new_hosts += rc > 0;
			hosts_full += rc < 0;
		}
	}

	serpens_count(ctx, c_packets, b->count);
	serpens_count(ctx, c_bytes, bytes);
	serpens_count(ctx, c_new_flows, new_flows);
	serpens_count(ctx, c_new_hosts, new_hosts);
	serpens_count(ctx, c_fragments, fragments);
	serpens_count(ctx, c_malformed, malformed);
	serpens_count(ctx, c_non_ip, non_ip);
	serpens_count(ctx, c_flows_full, flows_full);
	serpens_count(ctx, c_hosts_full, hosts_full);
}

static void fini(struct serpens_ctx *ctx)
{
	(void)ctx;
	t_flows = t_hosts = -1;
}

SERPENS_NF(.name = "mon", .init = init, .process = process, .fini = fini,
	   .hdrs = SERPENS_HDRS_KEPT /* never writes a packet */);
