# The gateway's Python face (gateway/gateway.h; declarations in gateway_decl.pxd). Included by
# runtime_cy/_dataplane.pyx: the gateway's packet loop runs on this one EAL, as the router does.
import hashlib
import ipaddress
import secrets

GW_MAX_SERVERS = SERPENS_GW_MAX_SERVERS
GW_MAGLEV = SERPENS_GW_MAGLEV
VXLAN_OVERHEAD = SERPENS_VXLAN_OVERHEAD


def maglev_table(weights, int size=SERPENS_GW_MAGLEV):
    """Maglev's lookup table (Eisenbud et al., NSDI'16) with weights: {name: (slot value,
    weight)} -> list of `size` slot values (None: no server). Each server walks its own
    permutation of the slots (offset and skip from a hash of its name, so the table depends
    only on names and weights, not on the order servers came in) and takes `weight` free
    slots per round: its share of the table follows its weight, and a change of one server
    moves few slots of the others."""
    live = sorted((name, value, w) for name, (value, w) in weights.items() if w > 0)
    table = [None] * size
    if not live:
        return table
    perm = []
    for name, value, w in live:
        d = hashlib.blake2b(str(name).encode(), digest_size=16).digest()
        offset = int.from_bytes(d[:8], "little") % size
        skip = int.from_bytes(d[8:], "little") % (size - 1) + 1
        perm.append([offset, skip, 0, value, w])
    filled = 0
    while True:
        for p in perm:
            for _ in range(p[4]):
                while True:
                    c = (p[0] + p[2] * p[1]) % size
                    p[2] += 1
                    if table[c] is None:
                        break
                table[c] = p[3]
                filled += 1
                if filled == size:
                    return table


def flow_hash(bytes frame):
    """The flow hash the router and the gateway compute for a frame (router/classify.h)."""
    return serpens_frame_flow_hash(<const uint8_t *>PyBytes_AS_STRING(frame), len(frame))


RELEASE_FACTOR = 2.0         # Gateway.release_factor's default
RELEASE_MIN_PPS = 100000     # a move's held packets leave at least this fast
RELEASE_CREDIT = SERPENS_GW_RELEASE_CREDIT   # ... after this many at once


def gateway_flow_slots(int sfc, bytes keys, int stride=40):
    """The Maglev slots (gateway.h) that the flows keyed `keys` (40-byte struct serpens_flow
    keys of a per-flow table, concatenated; or each at the start of a `stride`-byte record,
    such as the values of a SERPENS_FLOW_VALUE table) have in the gateway's SFC `sfc`: the
    slot the gateway's hash of their packets picks; -1 for a key that is not an IP flow."""
    if stride < 40:
        raise ValueError(f"stride {stride}: a flow is 40 bytes")
    cdef Py_ssize_t n = len(keys) // stride, i
    cdef const char *base = PyBytes_AS_STRING(keys)
    if len(keys) % stride:
        raise ValueError(f"keys: {len(keys)} bytes, not a whole number of {stride}-byte "
                         f"{'flow keys' if stride == 40 else 'records'}")
    out = array.array("i", bytes(4 * n))
    cdef int[::1] view = out
    with nogil:
        for i in range(n):
            view[i] = serpens_gw_flow_slot(sfc, <const serpens_flow *>(base + stride * i))
    return out


cdef inline bint _slot_chosen(const uint64_t *chosen, int slot) noexcept nogil:
    return 0 <= slot < SERPENS_GW_MAGLEV and (chosen[slot // 64] >> (slot % 64)) & 1


def gateway_keys_in(bytes keys, int key_size, slots_of, slots, bint invert=False):
    """The keys (n of `key_size` bytes, back to back) whose slot (`slots_of`, an array of n
    ints: gateway_flow_slots()) is in the Maglev `slots`; with `invert`, those whose slot is
    not (a slot of -1, no IP flow, among them)."""
    cdef Py_ssize_t ks = key_size, n = len(keys) // key_size if key_size > 0 else 0
    cdef Py_ssize_t i, kept = 0
    cdef const int[::1] of = slots_of
    if key_size <= 0 or len(keys) != n * ks or of.shape[0] != n:
        raise ValueError(f"{len(keys)} bytes of {key_size}-byte keys and {of.shape[0]} slots")
    cdef uint64_t chosen[SERPENS_GW_SLOT_WORDS]
    memset(chosen, 0, sizeof(chosen))
    for slot in slots:
        if not 0 <= slot < SERPENS_GW_MAGLEV:
            raise ValueError(f"slot {slot}: Maglev slots are 0..{SERPENS_GW_MAGLEV - 1}")
        chosen[slot // 64] |= (<uint64_t>1) << (slot % 64)
    out = bytearray(len(keys))
    cdef const char *k = PyBytes_AS_STRING(keys)
    cdef char *o = out
    with nogil:
        for i in range(n):
            if _slot_chosen(chosen, of[i]) != invert:
                memcpy(o + ks * kept, k + ks * i, ks)
                kept += 1
    return bytes(out[:ks * kept])


def gateway_keys_by_slot(bytes keys, int key_size, slots_of):
    """The keys (as gateway_keys_in() takes them) grouped by Maglev slot: (grouped, starts),
    the keys of slot s being grouped[starts[s] * key_size:starts[s + 1] * key_size]; keys
    of no slot (-1) are left out. Made once, it lets each of a move's waves take its
    slots' keys without scanning every key (gateway_keys_of())."""
    cdef Py_ssize_t ks = key_size, n = len(keys) // key_size if key_size > 0 else 0, i
    cdef const int[::1] of = slots_of
    if key_size <= 0 or len(keys) != n * ks or of.shape[0] != n:
        raise ValueError(f"{len(keys)} bytes of {key_size}-byte keys and {of.shape[0]} slots")
    starts = array.array("q", bytes(8 * (SERPENS_GW_MAGLEV + 1)))
    cdef long long[::1] st = starts
    cdef long long total
    cdef int slot
    with nogil:
        for i in range(n):                        # counted per slot ...
            slot = of[i]
            if 0 <= slot < SERPENS_GW_MAGLEV:
                st[slot + 1] += 1
        for slot in range(SERPENS_GW_MAGLEV):      # ... each slot's start ...
            st[slot + 1] += st[slot]
        total = st[SERPENS_GW_MAGLEV]
    out = PyBytes_FromStringAndSize(NULL, ks * total)
    cdef char *o = PyBytes_AS_STRING(out)
    cdef const char *k = PyBytes_AS_STRING(keys)
    cdef long long[::1] at = array.array("q", starts[:SERPENS_GW_MAGLEV])
    with nogil:
        for i in range(n):                        # ... and each key put at its slot's next
            slot = of[i]                          # (within its slot's room: see keys_in)
            if 0 <= slot < SERPENS_GW_MAGLEV and at[slot] < st[slot + 1]:
                memcpy(o + ks * at[slot], k + ks * i, ks)
                at[slot] += 1
    return out, starts


cdef bint _falls(const long long[::1] st) noexcept nogil:
    """Whether `st` goes down anywhere."""
    cdef Py_ssize_t s
    for s in range(st.shape[0] - 1):
        if st[s + 1] < st[s]:
            return True
    return False


def gateway_keys_of(bytes grouped, int key_size, starts, slots):
    """The keys of the Maglev `slots` from gateway_keys_by_slot()'s (grouped, starts), back
    to back."""
    slots = set(slots)   # (first: iterating the caller's may run its code)
    cdef const long long[::1] st = starts
    cdef Py_ssize_t ks = key_size, total = 0, at = 0, size
    cdef int s
    # from 0, never down, to the keys grouped holds: every slot's keys lie inside it
    if key_size <= 0 or st.shape[0] != SERPENS_GW_MAGLEV + 1 or st[0] != 0 or \
            len(grouped) % ks or st[SERPENS_GW_MAGLEV] != len(grouped) // ks or \
            _falls(st):
        raise ValueError("grouped, starts: not gateway_keys_by_slot()'s")
    for slot in slots:
        if not 0 <= slot < SERPENS_GW_MAGLEV:
            raise ValueError(f"slot {slot}: Maglev slots are 0..{SERPENS_GW_MAGLEV - 1}")
        total += st[slot + 1] - st[slot]
    out = PyBytes_FromStringAndSize(NULL, ks * total)
    cdef char *o = PyBytes_AS_STRING(out)
    cdef const char *g = PyBytes_AS_STRING(grouped)
    for slot in slots:
        s = slot
        size = (st[s + 1] - st[s]) * ks
        memcpy(o + at, g + st[s] * ks, size)
        at += size
    return out


def gateway_flow_select(int sfc, bytes keys, bytes values, slots, int key_size=40,
                        bint by_value=False):
    """(keys, values) of the entries whose flows are in the Maglev `slots` of the gateway's
    SFC `sfc` (gateway_flow_slots()): n keys of `key_size` bytes and n values, each back to
    back. The flow is the key (40 bytes, struct serpens_flow), or with `by_value` the value's
    first 40 bytes (a SERPENS_FLOW_VALUE table, keyed by something else)."""
    if key_size <= 0 or (not by_value and key_size != 40):
        raise ValueError(f"key_size {key_size}: a flow key is 40 bytes")
    cdef Py_ssize_t ks = key_size, n = len(keys) // key_size, i, kept = 0
    cdef Py_ssize_t vs = len(values) // n if n else 0
    if len(keys) % ks or (n and len(values) != n * vs) or (not n and values) or \
            (by_value and n and vs < 40):
        raise ValueError(f"{len(keys)} bytes of keys and {len(values)} of values are not "
                         f"whole entries of {ks}-byte keys"
                         + (" and values beginning with a 40-byte flow" if by_value else ""))
    cdef uint64_t chosen[SERPENS_GW_SLOT_WORDS]
    memset(chosen, 0, sizeof(chosen))
    for slot in slots:
        if not 0 <= slot < SERPENS_GW_MAGLEV:
            raise ValueError(f"slot {slot}: Maglev slots are 0..{SERPENS_GW_MAGLEV - 1}")
        chosen[slot // 64] |= (<uint64_t>1) << (slot % 64)
    out_keys = bytearray(len(keys))
    out_values = bytearray(len(values))
    cdef const char *k = PyBytes_AS_STRING(keys)
    cdef const char *v = PyBytes_AS_STRING(values)
    cdef char *ok = out_keys
    cdef char *ov = out_values
    cdef int slot_of
    cdef bint value_flow = by_value
    with nogil:
        for i in range(n):
            slot_of = serpens_gw_flow_slot(
                sfc, <const serpens_flow *>(v + vs * i if value_flow else k + ks * i))
            if slot_of >= 0 and chosen[slot_of // 64] >> (slot_of % 64) & 1:
                memcpy(ok + ks * kept, k + ks * i, ks)
                memcpy(ov + vs * kept, v + vs * i, vs)
                kept += 1
    return bytes(out_keys[:ks * kept]), bytes(out_values[:vs * kept])


def vxlan_sport(uint32_t hash):
    """The outer UDP source port of a flow with this hash (runtime_cy/src/vxlan.h)."""
    return serpens_vxlan_sport(hash)


cdef uint32_t _ipv4_be(str ip) except? 0:
    return int.from_bytes(ipaddress.IPv4Address(ip).packed, "little")


cdef class Gateway:
    """The gateway of gateway/gateway.h. Ports are DPDK port ids; servers and SFCs are the
    gateway's small integers. Configure before traffic for them flows; routes (an SFC's
    servers and weights) may change while it runs."""
    cdef serpens_gateway *g
    cdef object server_ids  # underlay address -> server index
    cdef object weights     # SFC -> {server index: weight}
    cdef bint running
    cdef int lcore
    cdef Mempool pool        # where the move markers' mbufs come from (set_mempool)
    # a move's held packets leave at this multiple of the rate its flows arrived at while
    # held (at least RELEASE_MIN_PPS): the backlog clears in (factor - 1) x the hold's time
    cdef public double release_factor

    def __cinit__(self, in_ports, uint16_t underlay_port, uint16_t egress_port, str underlay_ip,
                  str underlay_mac, uint32_t mtu=1500, double idle_s=30.0,
                  double stall_us=2000):
        """in_ports face the outside; frames back from the servers leave on egress_port;
        mtu bounds the outer IPv4 packet (an inner frame of up to mtu - 36 bytes fits);
        stall_us: the longest a full TX queue (a server's link) may hold the ingress back
        before that port sheds (gateway.h "Back-pressure")."""
        if not SERPENS_VXLAN_IP_OVERHEAD + 14 < mtu <= 9216:
            raise ValueError(f"underlay MTU {mtu}: must be 51..9216")
        self.g = <serpens_gateway *>calloc(1, sizeof(serpens_gateway))
        if self.g == NULL:
            raise MemoryError()
        self.server_ids, self.weights = {}, {}
        self.lcore = -1
        self.release_factor = RELEASE_FACTOR
        self.g.default_sfc = -1
        self.g.underlay_port = self.g.egress_port = -1
        self.g.idle_cycles = <uint64_t>(rte_get_tsc_hz() * idle_s)
        if not 10 <= stall_us <= 1e6:
            raise ValueError(f"stall_us {stall_us:g}: must be 10..1000000")
        self.g.stall_cycles = <uint64_t>(rte_get_tsc_hz() * stall_us / 1e6)
        self.g.underlay.ip = _ipv4_be(underlay_ip)
        mac = bytes.fromhex(underlay_mac.replace(":", ""))
        if len(mac) != 6:
            raise ValueError(f"underlay MAC {underlay_mac!r}")
        memcpy(self.g.underlay.mac, <const char *>mac, 6)
        self.g.underlay.mtu = mtu
        for port in ([in_ports] if isinstance(in_ports, int) else in_ports):
            self.g.ports[self._port(port)].ingress = 1
        self.g.egress_port = self._port(egress_port)
        self.g.underlay_port = self._underlay_port(underlay_port)

    def __dealloc__(self):
        if self.lcore >= 0:
            self.g.stop = 1
            rte_eal_wait_lcore(self.lcore)
        if self.g != NULL:
            serpens_gateway_release(self.g)  # frames waiting, held by moves, a marker
        free(self.g)

    cdef int _port(self, uint16_t port) except -1:
        for i in range(self.g.nports):
            if self.g.ports[i].id == port:
                return i
        if self.g.nports == SERPENS_GW_MAX_PORTS:
            raise ValueError(f"gateway: at most {SERPENS_GW_MAX_PORTS} ports")
        i = self.g.nports
        self.g.ports[i].id = port
        serpens_fence()
        self.g.nports += 1
        return i

    cdef int _underlay_port(self, uint16_t port) except -1:
        i = self._port(port)
        if self.g.ports[i].ingress:
            raise ValueError(f"port {port} is an ingress port, not an underlay port")
        self.g.ports[i].underlay = 1
        return i

    def _port_index(self, port):
        return self._port(port)

    # ---- servers and SFCs ------------------------------------------------------------------

    def set_server(self, str ip, str mac, port=None):
        """A server on the underlay (its address and its MAC there), reached on DPDK port
        `port` (default: the gateway's underlay port; another becomes an underlay port too:
        one point-to-point link per server); returns its index."""
        cdef serpens_gw_server *sv
        key = str(ipaddress.IPv4Address(ip))
        raw = bytes.fromhex(mac.replace(":", ""))
        if len(raw) != 6:
            raise ValueError(f"server {ip}: MAC {mac!r}")
        under = self.g.underlay_port if port is None else self._underlay_port(port)
        i = self.server_ids.get(key)
        if i is None:
            free_ids = [k for k in range(SERPENS_GW_MAX_SERVERS)
                        if k not in self.server_ids.values()]
            if not free_ids:
                raise ValueError(f"gateway: at most {SERPENS_GW_MAX_SERVERS} servers")
            i = free_ids[0]
        sv = &self.g.servers[i]
        sv.used = 0
        serpens_fence()
        sv.ip = _ipv4_be(key)
        memcpy(sv.mac, <const char *>raw, 6)
        sv.port = under
        sv.tx = 0
        serpens_fence()
        sv.used = 1
        self.server_ids[key] = i
        return i

    def remove_server(self, str ip):
        """Forget a server: its flows move to the others (the rest stay where they are)."""
        key = str(ipaddress.IPv4Address(ip))
        i = self.server_ids.pop(key)
        for sfc, w in self.weights.items():
            if i in w:
                del w[i]
                self._publish(sfc)
        self.g.servers[i].used = 0
        serpens_fence()

    def add_sfc(self, uint32_t tag, uint32_t vni=0):
        """A new SFC carried with VXLAN tag `tag` and VNI `vni` (24 bits each); its id. Frames
        back from the servers must carry both."""
        cdef serpens_gw_sfc *s
        if tag > SERPENS_VXLAN_MAX_TAG or vni > SERPENS_VXLAN_MAX_TAG:
            raise ValueError("SFC tag and VNI are 24-bit numbers")
        for k in range(SERPENS_GW_MAX_SFCS):
            if self.g.sfcs[k].used and self.g.sfcs[k].tag == tag:
                raise ValueError(f"SFC tag {tag} is SFC {k}'s already")
        for k in range(SERPENS_GW_MAX_SFCS):
            s = &self.g.sfcs[k]
            if s.used:
                continue
            memset(s, 0, sizeof(serpens_gw_sfc))
            memset(s.table, SERPENS_GW_NO_SERVER, sizeof(s.table))
            s.tag, s.vni = tag, vni
            self.weights[k] = {}
            serpens_fence()
            s.used = 1
            return k
        raise ValueError(f"gateway: at most {SERPENS_GW_MAX_SFCS} SFCs")

    def set_route(self, int sfc, servers):
        """The servers of `sfc`: {underlay address: weight (its instance count)}. Live flows
        keep their server while it stays in the route; new flows follow the new weights."""
        self._check_sfc(sfc)
        w = {}
        for ip, weight in servers.items():
            key = str(ipaddress.IPv4Address(ip))
            if key not in self.server_ids:
                raise ValueError(f"server {ip} is unknown: set_server() first")
            if not 0 <= weight <= 1000:
                raise ValueError(f"server {ip}: weight {weight} outside 0..1000")
            if weight:
                w[self.server_ids[key]] = weight
        self.weights[sfc] = w
        self._publish(sfc)

    cdef _publish(self, int sfc):
        """Build the SFC's Maglev table into its idle half, then switch halves."""
        cdef serpens_gw_sfc *s = &self.g.sfcs[sfc]
        cdef uint32_t idle
        cdef uint64_t mask = 0
        names = {ip: i for ip, i in self.server_ids.items()}
        w = self.weights[sfc]
        table = maglev_table({ip: (i, w[i]) for ip, i in names.items() if i in w})
        idle = (s.table_live + 1) & 1
        for c, server in enumerate(table):
            s.table[idle][c] = SERPENS_GW_NO_SERVER if server is None else server
        for i in w:
            mask |= (<uint64_t>1) << i
        # Servers joining are live before the table names them, servers leaving stay live
        # until it no longer does: no new flow meets a server outside the mask.
        serpens_fence()
        s.servers = s.servers | mask
        serpens_fence()
        s.table_live = idle
        serpens_fence()
        s.servers = mask  # pins to the servers left out move on their next packet
        serpens_fence()

    def route_table(self, int sfc):
        """The live Maglev table of `sfc` (server indexes, None: none)."""
        self._check_sfc(sfc)
        cdef serpens_gw_sfc *s = &self.g.sfcs[sfc]
        return [None if s.table[s.table_live][c] == SERPENS_GW_NO_SERVER
                else s.table[s.table_live][c] for c in range(SERPENS_GW_MAGLEV)]

    def _check_sfc(self, int sfc):
        if not (0 <= sfc < SERPENS_GW_MAX_SFCS and self.g.sfcs[sfc].used):
            raise ValueError(f"SFC {sfc} does not exist")

    def remove_sfc(self, int sfc):
        """Forget SFC `sfc` (its slot is free again). The caller first unroutes it (rules, tag,
        default) and waits for quiesce(), as for the router: no frame of it is then in
        flight; a rule still naming it is refused here, its tags and default are cleared."""
        self._check_sfc(sfc)
        live = self.g.rules_live & 1
        for i in range(self.g.nrules[live]):
            if self.g.rules[live][i].sfc == sfc:
                raise ValueError(f"match rule {i} still routes to SFC {sfc}")
        if self.g.default_sfc == sfc:
            self.g.default_sfc = -1
        for vlan in range(SERPENS_VLAN_IDS):
            if self.g.tag_sfc[vlan] == sfc + 1:
                self.g.tag_sfc[vlan] = 0
        serpens_fence()
        self.g.sfcs[sfc].used = 0  # frames back with its tag are unknown_tag from now on
        serpens_fence()
        del self.weights[sfc]

    # ---- classification (the router's semantics and parser) --------------------------------

    def set_default_sfc(self, int sfc):
        if sfc >= 0:
            self._check_sfc(sfc)
        self.g.default_sfc = sfc

    def set_tag(self, int vlan, int sfc):
        if not 0 < vlan < 4095:
            raise ValueError(f"VLAN ID 1..4094, got {vlan}")
        if sfc >= 0:
            self._check_sfc(sfc)
        self.g.tag_sfc[vlan] = sfc + 1

    def set_rules(self, rules):
        cdef serpens_match_rule table[SERPENS_GW_MAX_RULES]
        cdef uint32_t idle
        match_rules(rules, table, SERPENS_GW_MAX_RULES, self._port_index, self._check_sfc)
        # into the idle table, then one switch (router/classify.h): no frame meets an empty
        # table; once the loop came round the old one is idle and free for the next change
        idle = (self.g.rules_live + 1) & 1
        memcpy(self.g.rules[idle], table, sizeof(table))
        self.g.nrules[idle] = len(rules)
        serpens_fence()
        self.g.rules_live = idle
        serpens_fence()
        self.quiesce()

    def pace(self, uint16_t port, double pps, uint32_t depth=4096):
        """Feed ingress port `port` at `pps` from a source that never runs dry (a replayed
        capture, net_pcap infinite_rx); more than `depth` arrivals waiting are lost (counted
        as the port's `missed`). pps 0: unpaced. router/pace.h, as Router.pace."""
        i = self._port(port)
        if not self.g.ports[i].ingress:
            raise ValueError(f"port {port} is not an ingress port")
        serpens_pace_set(&self.g.ports[i].pace, pps, depth)

    # ---- moves (gateway.h "Moving flows") ---------------------------------------------------

    def set_mempool(self, Mempool pool):
        """The mempool the moves' markers come from (the gateway's own)."""
        self.pool = pool

    def hold_flows(self, int sfc, str source_ip, str target_ip, slots=None):
        """Hold the packets of the flows of `sfc` going to server `source_ip` (every one, or
        those in the Maglev `slots`) until release_flows(); then send the source a marker
        behind the last frame of them it got (an ARP request for its address carrying the
        move's marker id, move_marker(): once its router recorded the id, it has them all).
        The target must serve the SFC. Returns the move's index."""
        cdef serpens_gw_move *mv
        cdef serpens_gw_sfc *s
        cdef rte_mbuf *marker
        self._check_sfc(sfc)
        s = &self.g.sfcs[sfc]
        ends = []
        for what, ip in (("source", source_ip), ("target", target_ip)):
            i = self.server_ids.get(str(ipaddress.IPv4Address(ip)))
            if i is None or not (s.servers >> i) & 1:
                raise ValueError(f"{what} {ip} is no server of SFC {sfc} here")
            ends.append(i)
        if ends[0] == ends[1]:
            raise ValueError(f"source and target are both {source_ip}")
        if slots is not None:
            slots = sorted(set(slots))
            if not slots or slots[0] < 0 or slots[len(slots) - 1] >= SERPENS_GW_MAGLEV:
                raise ValueError(f"slots: 1..{SERPENS_GW_MAGLEV} Maglev slots, each "
                                 f"0..{SERPENS_GW_MAGLEV - 1}")
        if self.pool is None:
            raise ValueError("no mempool for the move's marker (set_mempool)")
        free_move = -1
        for k in range(SERPENS_GW_MAX_MOVES):
            mv = &self.g.moves[k]
            if mv.state == SERPENS_GW_MOVE_FREE:
                if free_move < 0:
                    free_move = k
            elif mv.sfc == sfc and ends[0] in (mv.source, mv.target) and \
                    (mv.all or slots is None or
                     any(mv.slots[slot // 64] >> (slot % 64) & 1 for slot in slots)):
                raise ValueError(f"SFC {sfc}: a move of server {source_ip}'s flows "
                                 f"{'' if slots is None else 'in these slots '}is under "
                                 "way already")
        if free_move < 0:
            raise ValueError(f"gateway: at most {SERPENS_GW_MAX_MOVES} moves at a time")
        frame = self._marker_frame(ends[0])   # before the hold: nothing to undo on failure
        marker = rte_pktmbuf_alloc(self.pool.mp)
        if marker == NULL:
            raise MemoryError("no mbuf for the move's marker")
        memcpy(rte_pktmbuf_append(marker, len(frame)), PyBytes_AS_STRING(frame), len(frame))
        mv = &self.g.moves[free_move]
        mv.sfc, mv.source, mv.target = sfc, ends[0], ends[1]
        mv.all = slots is None
        memset(mv.slots, 0, sizeof(mv.slots))
        for slot in (slots or ()):
            mv.slots[slot // 64] |= (<uint64_t>1) << (slot % 64)
        mv.head = mv.tail = 0
        mv.held = mv.held_dropped = mv.repinned = 0
        mv.marker = int.from_bytes(frame[34:38], "big")
        mv.hold_tsc = rte_rdtsc()
        self.g.moving += 1
        serpens_fence()
        mv.state = SERPENS_GW_MOVE_HOLD
        serpens_fence()
        # sent by the loop after every frame sent before
        self.g.marker_port = self.g.servers[ends[0]].port
        serpens_fence()
        self.g.marker = marker
        return free_move

    def move_marker(self, int move):
        """The id the move's marker carries (the source's router records it)."""
        return self._move(move).marker

    cdef bytes _marker_frame(self, int server):
        """A marker for `server` (vxlan.h): an ARP request for its address, to its MAC (on a
        shared segment no other server sees it), "SM" and a fresh random id as its target
        hardware address; once the last marker went out (ValueError if it did not)."""
        cdef serpens_gw_server *sv = &self.g.servers[server]
        deadline = time.monotonic() + 1.0
        while self.g.marker != NULL:  # the loop has not taken the last one yet
            if time.monotonic() > deadline:
                raise ValueError("gateway: the last move's marker was not sent yet")
            time.sleep(0.0001)
        own_mac = bytes(self.g.underlay.mac[k] for k in range(6))
        own_ip = (<uint32_t>self.g.underlay.ip).to_bytes(4, "little")
        ip = (<uint32_t>sv.ip).to_bytes(4, "little")
        marker = (secrets.randbits(32) or 1).to_bytes(4, "big")
        return (bytes(sv.mac[k] for k in range(6)) + own_mac + b"\x08\x06" +
                b"\x00\x01\x08\x00\x06\x04\x00\x01" + own_mac + own_ip + b"SM" + marker +
                ip).ljust(60, b"\x00")

    def release_flows(self, int move, bint commit, double timeout=5.0):
        """Release a move's flows (commit: re-pinned to its target; else they stay on the
        source) and wait until what it held was sent; returns its counters
        {flows, held, held_dropped}. Not running: it completes over the next poll()s."""
        cdef serpens_gw_move *mv = self._move(move)
        if mv.state != SERPENS_GW_MOVE_HOLD:
            raise ValueError(f"move {move} is not holding")
        mv.release_gap = self._release_gap(mv)
        serpens_fence()
        mv.state = SERPENS_GW_MOVE_COMMIT if commit else SERPENS_GW_MOVE_ABORT
        serpens_fence()
        if self.lcore < 0 and not self.running:
            return None
        deadline = time.monotonic() + timeout
        while serpens_load_u32(&mv.state) != SERPENS_GW_MOVE_DONE:
            if time.monotonic() > deadline:
                raise TimeoutError(f"move {move}: the held packets were not all sent in "
                                   f"{timeout} s")
            time.sleep(0.0002)
        return self.finish_move(move)

    cdef uint64_t _release_gap(self, serpens_gw_move *mv):
        """TSC cycles x 256 between the held packets sent (gateway.h: the release's pace)."""
        hz = rte_get_tsc_hz()
        held_s = max(1e-6, (rte_rdtsc() - mv.hold_tsc) / hz)
        pps = max(RELEASE_MIN_PPS, self.release_factor * mv.held / held_s)
        return max(1, <uint64_t>(hz * 256.0 / pps))

    def move_state(self, int move):
        return ("free", "hold", "commit", "abort", "draining", "done")[self._move(move).state]

    def finish_move(self, int move):
        """Free a released move (DONE) and return its counters."""
        cdef serpens_gw_move *mv = self._move(move)
        if serpens_load_u32(&mv.state) != SERPENS_GW_MOVE_DONE:
            raise ValueError(f"move {move} is not done")
        out = {"flows": mv.repinned, "held": mv.held, "held_dropped": mv.held_dropped}
        mv.state = SERPENS_GW_MOVE_FREE
        serpens_fence()
        self.g.moving -= 1
        return out

    def move_counters(self, int move):
        cdef serpens_gw_move *mv = self._move(move)
        return {"held": mv.held, "held_dropped": mv.held_dropped,
                "waiting": mv.tail - mv.head}

    cdef serpens_gw_move *_move(self, int move) except NULL:
        if not 0 <= move < SERPENS_GW_MAX_MOVES or \
                self.g.moves[move].state == SERPENS_GW_MOVE_FREE:
            raise ValueError(f"no move {move}")
        return &self.g.moves[move]

    # ---- running ---------------------------------------------------------------------------

    def run(self):
        """Run on the calling thread until stop() (nogil)."""
        self.g.stop = 0
        self.running = True
        try:
            with nogil:
                serpens_gateway_run(self.g)
        finally:
            self.running = False

    def launch(self, unsigned lcore):
        """Run on EAL worker lcore `lcore` (the gateway's own DPDK process); stop() ends it."""
        self.g.stop = 0
        rc = rte_eal_remote_launch(serpens_gateway_lcore_main, self.g, lcore)
        if rc:
            raise OSError(-rc, f"launching the gateway on lcore {lcore}: "
                               f"{strerror(-rc).decode()}")
        self.lcore = lcore

    def poll(self):
        """One iteration on the calling thread (tests); the frames handled (or, if none, those
        that had waited and left): 0 means it found nothing to do."""
        return serpens_gateway_poll(self.g)

    def stop(self):
        self.g.stop = 1
        serpens_fence()
        if self.lcore >= 0:
            with nogil:
                rte_eal_wait_lcore(self.lcore)
            self.lcore = -1

    def quiesce(self, double timeout=1.0):
        """Wait until the loop began two more iterations (a change made before is in effect).
        Not running (neither launched nor run()): nothing is in flight, True at once."""
        cdef uint64_t start = serpens_load_u64(&self.g.loops)
        if self.lcore < 0 and not self.running:
            return True
        deadline = time.monotonic() + timeout
        while serpens_load_u64(&self.g.loops) < start + 2:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.0001)
        return True

    def stats(self):
        g = self.g
        servers = {ip: {"index": i, "tx": g.servers[i].tx,
                        "port": g.ports[g.servers[i].port].id}
                   for ip, i in self.server_ids.items()}
        sfcs = {k: {"tag": g.sfcs[k].tag, "rx": g.sfcs[k].rx, "tx": g.sfcs[k].tx,
                    "back": g.sfcs[k].back, "new_flows": g.sfcs[k].new_flows,
                    "moved_flows": g.sfcs[k].moved_flows,
                    "drops": {"no_server": g.sfcs[k].no_server,
                              "over_mtu": g.sfcs[k].over_mtu, "no_room": g.sfcs[k].no_room},
                    "flow_full": g.sfcs[k].flow_full, "held": g.sfcs[k].held,
                    "held_dropped": g.sfcs[k].held_dropped, "moves": g.sfcs[k].moves}
                for k in range(SERPENS_GW_MAX_SFCS) if g.sfcs[k].used}
        ports = {g.ports[i].id: {"rx": g.ports[i].rx, "tx": g.ports[i].tx,
                                 "tx_failed": g.ports[i].tx_failed,
                                 "tx_stalls": g.ports[i].tx_stalls,
                                 "waiting": g.ports[i].nout,
                                 "shedding": bool(g.ports[i].shedding),
                                 "unmatched": g.ports[i].unmatched,
                                 "missed": g.ports[i].pace.missed,
                                 "rx_empty": g.ports[i].pace.rx_empty}
                 for i in range(g.nports)}
        return {"rx": g.rx, "tx": g.tx, "tx_failed": g.tx_failed, "sleeps": g.sleeps,
                "arp_replies": g.arp_replies,
                "drops": {"unmatched": g.unmatched, "not_ours": g.not_ours,
                          "bad_outer": g.bad_outer, "over_mtu": g.over_mtu,
                          "unknown_tag": g.unknown_tag},
                "servers": servers, "sfcs": sfcs, "ports": ports}
