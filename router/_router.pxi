# The router's Python face (router.h; declarations in router_decl.pxd). Included by
# runtime_cy/_dataplane.pyx: the router runs in the agent's DPDK process, on that one EAL.

ROUTER_MAX_INSTANCES = SERPENS_ROUTER_MAX_INSTANCES
ROUTER_MAX_SFCS = SERPENS_ROUTER_MAX_SFCS
LAT_BUCKETS = SERPENS_LAT_BUCKETS
LAT_REC_FORMAT = "<QQII"  # serpens_lat_rec: rx_tsc, tx_tsc, flow, seq
# router.h enum serpens_stage, in order
STAGES = ("loop", "rx", "classify", "dispatch", "enqueue", "dequeue", "verdict", "tx", "free",
          "idle")


cdef int match_rules(rules, serpens_match_rule *table, int cap, port_index,
                     check_sfc) except -1:
    """Fill `table` (cap entries, zeroed first) from match rule dicts (Router.set_rules):
    the router's and the gateway's one parser of them."""
    import ipaddress
    if len(rules) > cap:
        raise ValueError(f"at most {cap} match rules")
    cdef serpens_match_rule *m
    memset(table, 0, cap * sizeof(serpens_match_rule))
    for i, rule in enumerate(rules):
        m = &table[i]
        check_sfc(rule["sfc"])
        m.sfc = rule["sfc"]
        nets = {f: ipaddress.ip_network(rule[f], strict=False)
                for f in ("src", "dst") if rule.get(f) is not None}
        families = {net.version for net in nets.values()}
        if len(families) > 1:
            raise ValueError(f"match rule {i}: src and dst of different IP versions")
        m.family = families.pop() if families else 0
        for field, net in nets.items():
            addr = net.network_address.packed
            mask = net.netmask.packed
            if field == "src":
                memcpy(m.src, <const char *>addr, len(addr))
                memcpy(m.src_mask, <const char *>mask, len(mask))
            else:
                memcpy(m.dst, <const char *>addr, len(addr))
                memcpy(m.dst_mask, <const char *>mask, len(mask))
        m.proto = rule.get("proto", 0)
        m.sport_lo, m.sport_hi = rule.get("sport", (0, 65535))
        m.dport_lo, m.dport_hi = rule.get("dport", (0, 65535))
        m.in_port = port_index(rule["in_port"]) if rule.get("in_port") is not None else -1
    return 0


cdef class Router:
    """The router of router/router.h. Ports are DPDK port ids; SFCs and instances are the
    router's small integers (an instance's index). Configure SFCs, rules and tags before traffic for them flows."""
    cdef serpens_router *r
    cdef object refs
    cdef int lcore
    cdef bint on_thread  # run() is running it on some thread

    def __cinit__(self, in_ports, out_port=None, uint32_t wake_batch=128, double wake_us=50,
                  double drain_us=100, double stall_us=2000, double hold_ms=200):
        """stall_us: the longest one instance or hold queue may stop the node's RX before
        its packets are dropped instead; hold_ms: the longest a packet waits for an instance
        (router.h "Containment")."""
        self.r = serpens_router_alloc()  # zeroed, line-aligned (flow buckets)
        if self.r == NULL:
            raise MemoryError()
        for i in range(SERPENS_ROUTER_MAX_INSTANCES):
            self.r.inst[i].pidfd = -1
        self.r.stall_cycles = <uint64_t>(rte_get_tsc_hz() * stall_us / 1e6)
        self.r.hold_cycles = <uint64_t>(rte_get_tsc_hz() * hold_ms / 1e3)
        self.r.wake_batch = wake_batch
        self.r.wake_cycles = <uint64_t>(rte_get_tsc_hz() * wake_us / 1e6)
        self.r.drain_cycles = <uint64_t>(rte_get_tsc_hz() * drain_us / 1e6)
        self.r.default_sfc = -1
        self.refs = {}
        self.lcore = -1
        for port in ([in_ports] if isinstance(in_ports, int) else in_ports):
            self.r.ports[self._port(port)].input = 1
        if out_port is not None:  # the one-SFC node: everything goes to SFC 0
            self.r.default_sfc = self.add_sfc(out_port)

    def __dealloc__(self):
        if self.lcore >= 0:
            self.r.stop = 1
            rte_eal_wait_lcore(self.lcore)
        free(self.r.log)
        free(self.r)

    cdef int _port(self, uint16_t port) except -1:
        """The router's index of a DPDK port (added on first use)."""
        for i in range(self.r.nports):
            if self.r.ports[i].id == port:
                return i
        if self.r.nports == SERPENS_ROUTER_MAX_PORTS:
            raise ValueError(f"router: at most {SERPENS_ROUTER_MAX_PORTS} ports")
        i = self.r.nports
        self.r.ports[i].id = port
        serpens_fence()
        self.r.nports += 1
        return i

    # ---- configuration ----------------------------------------------------------------------

    def add_sfc(self, out_port=None, next_sfc=None):
        """A new SFC; its OUT packets go to DPDK port `out_port` or, chained, into SFC
        `next_sfc` (local-proxy mode: the hop between NFs passes the router). Returns its id."""
        cdef serpens_router_sfc *s
        if (out_port is None) == (next_sfc is None):
            raise ValueError("an SFC leaves by exactly one of out_port, next_sfc")
        for sfc in range(SERPENS_ROUTER_MAX_SFCS):
            s = &self.r.sfcs[sfc]
            if s.used:
                continue
            if next_sfc is not None:
                if not (0 <= next_sfc < SERPENS_ROUTER_MAX_SFCS and self.r.sfcs[next_sfc].used):
                    raise ValueError(f"next SFC {next_sfc} does not exist")
                s.next, s.out_port = next_sfc, 0  # chains point back only: no cycle
            else:
                s.next, s.out_port = -1, self._port(out_port)
            s.rx = s.out = s.dropped = s.new_flows = s.moved_flows = s.rebalanced_flows = 0
            s.bytes = 0
            s.drop_died = s.drop_stuck = s.drop_hold = s.drop_failed = 0  # not the last user's
            s.drop_all = 0
            s.drop_mtu = s.vx_on = s.to_gateway = 0
            s.notify_fd = -1
            serpens_fence()
            s.used = 1
            return sfc
        raise ValueError(f"router: at most {SERPENS_ROUTER_MAX_SFCS} SFCs")

    def remove_sfc(self, int sfc):
        """Forget SFC `sfc`. The caller first unroutes it (rules, tag, default), waits for
        quiesce(), and retires its instances; what is still held for it is refused here."""
        self._check_sfc(sfc)
        s = &self.r.sfcs[sfc]
        for i in range(SERPENS_ROUTER_MAX_INSTANCES):
            if self.r.inst[i].state != SERPENS_INST_EMPTY and self.r.inst[i].sfc == sfc:
                raise ValueError(f"SFC {sfc} still has an instance at index {i}")
        if s.nheld:
            raise ValueError(f"SFC {sfc} still holds {s.nheld} packets")
        for k in range(SERPENS_ROUTER_MAX_SFCS):
            if self.r.sfcs[k].used and k != sfc and self.r.sfcs[k].next == sfc:
                raise ValueError(f"SFC {k} is chained into SFC {sfc}")
        live = self.r.rules_live & 1
        for i in range(self.r.nrules[live]):
            if self.r.rules[live][i].sfc == sfc:
                raise ValueError(f"match rule {i} still routes to SFC {sfc}")
        if self.r.default_sfc == sfc:
            self.r.default_sfc = -1
        for vlan in range(SERPENS_VLAN_IDS):
            if self.r.tag_sfc[vlan] == sfc + 1:
                self.r.tag_sfc[vlan] = 0
        s.vx_on = 0
        serpens_fence()
        s.notify_fd = -1
        s.used = 0

    def quiesce(self, double timeout=1.0):
        """Wait until the router began two more iterations (a routing change made before the
        call is then seen by every packet it routes). False if it is not running or slow."""
        cdef uint64_t start = serpens_load_u64(&self.r.loops)
        if self.lcore < 0:
            return False
        deadline = time.monotonic() + timeout
        while serpens_load_u64(&self.r.loops) < start + 2:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.0001)
        return True

    def markers(self):
        """The ids of the last move markers received (vxlan.h), oldest first."""
        cdef uint64_t n = serpens_load_u64(&self.r.nmarkers)
        cdef uint64_t first = n - SERPENS_ROUTER_MARKERS if n > SERPENS_ROUTER_MARKERS else 0
        return [self.r.markers[k % SERPENS_ROUTER_MARKERS] for k in range(first, n)]

    def marker_passed(self, uint32_t marker):
        """Whether marker `marker` (an id) is among the last received and the router's loop
        began another iteration since: every frame received before it was dispatched (given
        to an instance, or held for one starting). Unlike quiesce(), no wait: the loop
        usually moved on before a mover asks."""
        cdef uint64_t n = serpens_load_u64(&self.r.nmarkers)
        cdef uint64_t first = n - SERPENS_ROUTER_MARKERS if n > SERPENS_ROUTER_MARKERS else 0
        cdef uint64_t k
        for k in range(first, n):
            # (the id before its loop: the router stores them the other way round)
            if serpens_load_u32(&self.r.markers[k % SERPENS_ROUTER_MARKERS]) == marker:
                return serpens_load_u64(&self.r.loops) > \
                    serpens_load_u64(&self.r.marker_loops[k % SERPENS_ROUTER_MARKERS])
        return False

    def quiet(self, int sfc):
        """Whether every packet of `sfc` the router received is given to an instance (in
        owed()'s counts): no burst waits to be placed, `sfc` holds nothing for a starting
        instance, and no release from its hold queue is under way (held packets leave
        nheld before the instance's count takes them: the loop must have passed the
        release). Read in that order, each load an acquire: the router stores the other
        way round (router.c place(), release_held())."""
        self._check_sfc(sfc)
        cdef serpens_router_sfc *s = &self.r.sfcs[sfc]
        if serpens_load_u32(&self.r.nstalled):
            return False
        cdef uint64_t released = serpens_load_u64(&s.release_loop)
        if serpens_load_u64(&self.r.loops) <= released:
            return False
        if serpens_load_u32(&s.nheld):
            return False
        return serpens_load_u64(&s.release_loop) == released

    def owed(self, int sfc):
        """{instance: (given, done)} of `sfc`'s instances that are given packets (active or
        draining): given, every packet it was given (its ring or waiting for it; one counter,
        read whole), done, those it returned or that were dropped while they waited for it:
        a mover polls it until every one is done with what it had been given (agent/
        peer_moves.py wait_quiet; stats() builds every counter's dict)."""
        self._check_sfc(sfc)
        out = {}
        cdef uint32_t st
        for i in range(SERPENS_ROUTER_MAX_INSTANCES):
            st = self.r.inst[i].state
            if (st == SERPENS_INST_ACTIVE or st == SERPENS_INST_DRAINING) and \
                    self.r.inst[i].sfc == sfc:
                out[i] = (serpens_load_u64(&self.r.inst[i].assigned),
                          serpens_load_u64(&self.r.inst[i].returned)
                          + serpens_load_u64(&self.r.inst[i].pending_dropped))
        return out

    def held(self, int sfc):
        """Packets of `sfc` waiting in its hold queue."""
        self._check_sfc(sfc)
        return serpens_load_u32(&self.r.sfcs[sfc].nheld)

    def set_default_sfc(self, int sfc):
        """Packets no tag and no rule classify go to `sfc` (-1: counted as unmatched, freed)."""
        if sfc >= 0:
            self._check_sfc(sfc)
        self.r.default_sfc = sfc

    def set_tag(self, int vlan, int sfc):
        """Packets whose outer VLAN ID is `vlan` belong to `sfc` (-1: forget the tag)."""
        if not 0 < vlan < 4095:
            raise ValueError(f"VLAN ID 1..4094, got {vlan}")
        if sfc >= 0:
            self._check_sfc(sfc)
        self.r.tag_sfc[vlan] = sfc + 1

    def set_rules(self, rules):
        """The match table, first match wins: dicts with `sfc` and optional `src`, `dst`
        (IPv4 or IPv6 prefixes, one version per rule), `proto` (number), `sport`, `dport` ((lo, hi)), `in_port` (DPDK port)."""
        cdef serpens_match_rule table[SERPENS_ROUTER_MAX_RULES]
        cdef uint32_t idle
        match_rules(rules, table, SERPENS_ROUTER_MAX_RULES, self._port_index, self._check_sfc)
        # into the idle table, then one switch (classify.h): no frame meets an empty table;
        # once the loop came round the old one is idle and free for the next change
        idle = (self.r.rules_live + 1) & 1
        memcpy(self.r.rules[idle], table, sizeof(table))
        self.r.nrules[idle] = len(rules)
        serpens_fence()
        self.r.rules_live = idle
        serpens_fence()
        self.quiesce()

    def _port_index(self, port):
        return self._port(port)

    # ---- VXLAN (router.h) -------------------------------------------------------------------

    def set_underlay(self, uint16_t port, str ip, str mac, uint32_t mtu=1500):
        """DPDK port `port` is the node's underlay (overlay frames only), where the node is
        `ip` / `mac`; mtu bounds outer IPv4 packets (inner frames up to mtu - 36 bytes)."""
        import ipaddress
        if not SERPENS_VXLAN_IP_OVERHEAD + 14 < mtu <= 9216:
            raise ValueError(f"underlay MTU {mtu}: must be 51..9216")
        raw = bytes.fromhex(mac.replace(":", ""))
        if len(raw) != 6:
            raise ValueError(f"underlay MAC {mac!r}")
        i = self._port(port)
        self.r.ports[i].input = 1
        self.r.underlay.ip = 0
        serpens_fence()
        self.r.underlay_port = i
        memcpy(self.r.underlay.mac, <const char *>raw, 6)
        self.r.underlay.mtu = mtu
        serpens_fence()
        self.r.underlay.ip = int.from_bytes(ipaddress.IPv4Address(ip).packed, "little")

    def set_gateway(self, str ip, str mac):
        """Where SFCs whose output is the gateway send their packets (pushed, not resolved)."""
        import ipaddress
        raw = bytes.fromhex(mac.replace(":", ""))
        if len(raw) != 6:
            raise ValueError(f"gateway MAC {mac!r}")
        cdef uint32_t idle = (self.r.gw_live + 1) & 1
        memcpy(self.r.gw[idle].mac, <const char *>raw, 6)
        self.r.gw[idle].ip = int.from_bytes(ipaddress.IPv4Address(ip).packed, "little")
        serpens_fence()
        self.r.gw_live = idle  # address and MAC change together (router.h)
        serpens_fence()
        self.quiesce()

    def set_sfc_vxlan(self, int sfc, uint32_t tag, uint32_t vni=0, bint to_gateway=False):
        """Underlay frames carrying SFC tag `tag` are `sfc`'s; with to_gateway its OUT packets
        go back to the gateway encapsulated (tag, vni) on the underlay port."""
        self._check_sfc(sfc)
        s = &self.r.sfcs[sfc]
        if tag > SERPENS_VXLAN_MAX_TAG or vni > SERPENS_VXLAN_MAX_TAG:
            raise ValueError("SFC tag and VNI are 24-bit numbers")
        for k in range(SERPENS_ROUTER_MAX_SFCS):
            if k != sfc and self.r.sfcs[k].used and self.r.sfcs[k].vx_on and \
                    self.r.sfcs[k].vx_tag == tag:
                raise ValueError(f"SFC tag {tag} is SFC {k}'s already")
        if to_gateway:
            if not self.r.underlay.ip or not self.r.gw[self.r.gw_live & 1].ip:
                raise ValueError("set_underlay() and set_gateway() before an SFC's output "
                                 "can be the gateway")
            if s.next >= 0:
                raise ValueError(f"SFC {sfc} is chained into SFC {s.next}: its output is that")
        s.vx_on = 0
        serpens_fence()
        s.vx_tag, s.vx_vni = tag, vni
        if to_gateway:
            s.out_port = self.r.underlay_port
        s.to_gateway = to_gateway
        serpens_fence()
        s.vx_on = 1

    def clear_sfc_vxlan(self, int sfc):
        """Underlay frames no longer go to `sfc` (unrouting it before its removal: its tag is
        unknown from now on); its OUT packets still leave as before."""
        self._check_sfc(sfc)
        self.r.sfcs[sfc].vx_on = 0
        serpens_fence()

    def _check_sfc(self, int sfc):
        if not (0 <= sfc < SERPENS_ROUTER_MAX_SFCS and self.r.sfcs[sfc].used):
            raise ValueError(f"SFC {sfc} does not exist")

    def pace(self, uint16_t port, double pps, uint32_t depth=4096):
        """Emulate a NIC fed at `pps` on an input port whose source never runs dry (e.g.
        net_pcap infinite_rx): arrivals are stamped with their scheduled time, and more than
        `depth` arrivals waiting are lost (counted as `missed`). pps 0: unpaced."""
        serpens_pace_set(&self.r.ports[self._port(port)].pace, pps, depth)

    # ---- latency log ------------------------------------------------------------------------

    def log_start(self, uint64_t capacity, uint32_t stamp_off=0):
        """Record (rx_tsc, tx_tsc, flow, seq) of each of the next `capacity` packets sent;
        stamp_off: rx_tsc is the u64 a source upstream wrote at this offset of each frame
        (a frame too short for it: the router's own arrival stamp)."""
        self.r.log_on = 0
        serpens_fence()
        self.r.log_stamp_off = stamp_off
        free(self.r.log)
        self.r.log = <serpens_lat_rec *>malloc(capacity * sizeof(serpens_lat_rec))
        if self.r.log == NULL:
            raise MemoryError()
        # touched now: page faults while the router records would show up as latency
        memset(self.r.log, 0, capacity * sizeof(serpens_lat_rec))
        self.r.log_cap, self.r.log_n = capacity, 0
        serpens_fence()
        self.r.log_on = 1

    def log_take(self):
        """Stop recording; the records as bytes (LAT_REC_FORMAT each)."""
        self.r.log_on = 0
        serpens_fence()
        n = serpens_load_u64(&self.r.log_n)
        return PyBytes_FromStringAndSize(<char *>self.r.log, n * sizeof(serpens_lat_rec))

    # ---- sampled latency (metrics) -----------------------------------------------------------

    def latency_start(self, bounds_s):
        """Sample RX-to-TX latency from now on (router.h lat_on): one packet per burst sent,
        into a histogram with these upper bounds (seconds, ascending, at most
        LAT_BUCKETS). Counting starts from zero."""
        bounds = sorted(float(b) for b in bounds_s)
        if not 0 < len(bounds) <= SERPENS_LAT_BUCKETS:
            raise ValueError(f"1..{SERPENS_LAT_BUCKETS} latency bounds, got {len(bounds)}")
        self.r.lat_on = 0
        serpens_fence()
        hz = rte_get_tsc_hz()
        for i, b in enumerate(bounds):
            self.r.lat_bounds[i] = <uint64_t>(b * hz)
        self.r.lat_nbounds = len(bounds)
        memset(self.r.lat_counts, 0, sizeof(self.r.lat_counts))
        self.r.lat_sum = 0
        serpens_fence()
        self.r.lat_on = 1

    def latency_stop(self):
        """Sample no more (latency() is None from now on)."""
        self.r.lat_on = 0
        serpens_fence()

    def latency(self):
        """(bounds in seconds, counts per bucket (the last: above every bound), sum in
        seconds) of the samples so far; None when sampling is off."""
        if not self.r.lat_on:
            return None
        hz = float(rte_get_tsc_hz())
        n = self.r.lat_nbounds
        return ([self.r.lat_bounds[i] / hz for i in range(n)],
                [self.r.lat_counts[i] for i in range(n + 1)], self.r.lat_sum / hz)

    # ---- instances --------------------------------------------------------------------------

    def reserve_index(self):
        """An instance index for set_instance(), kept from other callers until then (or until
        release_index())."""
        for i in range(SERPENS_ROUTER_MAX_INSTANCES):
            if self.r.inst[i].state == SERPENS_INST_EMPTY and i not in self.refs:
                self.refs[i] = None
                return i
        raise ValueError(f"router: all {SERPENS_ROUTER_MAX_INSTANCES} instance indexes in use")

    def release_index(self, int i):
        """Give back a reserved index that set_instance() never filled."""
        if self.r.inst[i].state == SERPENS_INST_EMPTY and self.refs.get(i, 0) is None:
            del self.refs[i]

    def set_instance(self, int i, Ring rx, Ring tx, PoolCtl ctl, int efd, int sfc=0,
                     int pidfd=-1, int pid=0, double budget_ms=0):
        """Index i now holds a running instance of `sfc` that takes new flows; with `pidfd`,
        `pid` and `budget_ms`, the watchdog kills it when one batch takes longer."""
        if not 0 <= i < SERPENS_ROUTER_MAX_INSTANCES:
            raise IndexError(i)
        self._check_sfc(sfc)
        inst = &self.r.inst[i]
        if inst.state != SERPENS_INST_EMPTY:
            raise ValueError(f"router instance index {i} is in use")
        self.refs[i] = (rx, tx, ctl)  # the rings and control block outlive their use here
        inst.rx, inst.tx, inst.ctl, inst.efd, inst.sfc = rx.r, tx.r, ctl.c, efd, sfc
        inst.pidfd, inst.pid = pidfd, pid
        inst.budget_cycles = <uint64_t>(rte_get_tsc_hz() * budget_ms / 1e3)
        inst.budget_ns = <uint64_t>(budget_ms * 1e6)
        inst.suspect_batch = inst.suspect_cpu_ns = inst.crash_seen_tsc = 0
        inst.last_return_tsc = rte_rdtsc()
        inst.shedding = inst.watchdog_fired = 0
        inst.stall_since = inst.dropped = 0
        inst.waiting = inst.npending = 0
        inst.enqueued = inst.returned = inst.wakeups = 0
        inst.assigned = inst.pending_dropped = inst.shed_mark = inst.shed_owed = 0
        inst.drained = 0
        # a barrier of the index's previous instance (a rebalance it took part in) means
        # nothing for this one, whose counters start at 0: it would hold the SFC forever
        inst.barrier_on = 0
        inst.barrier = 0
        if self.r.ninst <= i:  # the loop looks at slots below ninst only
            self.r.ninst = i + 1
        serpens_fence()
        inst.state = SERPENS_INST_ACTIVE

    def rebalance(self, int sfc, int to):
        """Move a share of `sfc`'s flows to its new instance at index `to`, in order, with no
        packet of a flow at two instances at once (router.h)."""
        self._check_sfc(sfc)
        if self.r.inst[to].state != SERPENS_INST_ACTIVE or self.r.inst[to].sfc != sfc:
            raise ValueError(f"index {to} is not an active instance of SFC {sfc}")
        self.r.sfcs[sfc].rebalance_to = to + 1
        serpens_fence()
        self.r.requests = 1

    def drain_instance(self, int i):
        """Give instance i no new flows; its flows move once it has drained (drained(i)). Only
        an active instance drains (the router may have reaped a crashed one meanwhile)."""
        self.r.inst[i].drained = 0
        serpens_fence()
        serpens_cas_u32(&self.r.inst[i].state, SERPENS_INST_ACTIVE, SERPENS_INST_DRAINING)

    def drained(self, int i):
        return self.r.inst[i].state == SERPENS_INST_DRAINING and self.r.inst[i].drained == 1

    def clear_instance(self, int i, double timeout=2.0):
        """Forget instance i once its process stopped or died: the router forwards what it
        finished and frees (counting them as dropped) the packets still queued for it or
        lost in its last batch (router.h "Containment"). Its rings may be freed after this
        returns True; False (the router did not answer in `timeout`) leaves the index taken."""
        cdef serpens_router_instance *inst = &self.r.inst[i]
        if inst.state == SERPENS_INST_EMPTY:
            self.refs.pop(i, None)
            return True
        serpens_fence()
        # (the router may have reaped it already: then it stays REAPED)
        if not serpens_cas_u32(&inst.state, SERPENS_INST_ACTIVE, SERPENS_INST_DEAD):
            serpens_cas_u32(&inst.state, SERPENS_INST_DRAINING, SERPENS_INST_DEAD)
        serpens_fence()
        if self.lcore < 0 and not self.on_thread:
            serpens_router_reap(self.r, i)  # nobody else runs the router
        deadline = time.monotonic() + timeout
        while serpens_load_u32(&inst.state) != SERPENS_INST_REAPED:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.0001)
        inst.pidfd = -1
        inst.state = SERPENS_INST_EMPTY
        serpens_fence()
        self.refs.pop(i, None)
        return True

    def reaped(self, int i):
        """The router let go of instance i by itself: its process recorded a fatal signal."""
        return serpens_load_u32(&self.r.inst[i].state) == SERPENS_INST_REAPED

    def watchdog_fired(self, int i):
        """TSC when the watchdog killed instance i (stuck in one batch); 0: it did
        not."""
        if not serpens_load_u32(&self.r.inst[i].watchdog_fired):
            return 0
        return self.r.inst[i].watchdog_tsc

    def set_drop_capture(self, int sfc, ObsRing ring=None):
        """Copy the packets the router drops for `sfc` into `ring` while a drop capture is
        armed on it; None stops (the router is quiesced first: the ring may then go)."""
        if not 0 <= sfc < SERPENS_ROUTER_MAX_SFCS:
            raise ValueError(f"SFC {sfc} does not exist")
        if ring is None:
            self.r.sfcs[sfc].obs = NULL
            serpens_fence()
            self.quiesce()
            self.refs.pop(("obs", sfc), None)
            return
        self._check_sfc(sfc)
        self.refs[("obs", sfc)] = ring  # alive while the router may write to it
        self.r.sfcs[sfc].obs = ring.o
        serpens_fence()

    def set_drop_all(self, int sfc, bint drop):
        """Drop `sfc`'s packets instead of holding them for an instance (a failed SFC)."""
        self._check_sfc(sfc)
        self.r.sfcs[sfc].drop_all = drop
        serpens_fence()

    def run(self):
        """Run on the calling thread until stop() (nogil)."""
        self._prepare()
        self.on_thread = True
        try:
            with nogil:
                serpens_router_run(self.r)
        finally:
            self.on_thread = False

    def _prepare(self):
        if label_off < 0 or meta_off < 0:
            raise RuntimeError("register_label_field() first (the agent's dataplane does)")
        self.r.label_off, self.r.meta_off = label_off, meta_off
        self.r.stop = 0

    def launch(self, unsigned lcore):
        """Run on EAL worker lcore `lcore` (DESIGN §3: the router owns a core); stop() ends it."""
        self._prepare()
        rc = rte_eal_remote_launch(serpens_router_lcore_main, self.r, lcore)
        if rc:
            raise OSError(-rc, f"launching the router on lcore {lcore}: "
                               f"{strerror(-rc).decode()}")
        self.lcore = lcore

    def stop(self):
        self.r.stop = 1
        serpens_fence()
        if self.lcore >= 0:
            with nogil:
                rte_eal_wait_lcore(self.lcore)
            self.lcore = -1

    def set_notify_fd(self, int fd, int sfc=0):
        """An eventfd the router writes when packets of `sfc` wait and it has no instance."""
        self._check_sfc(sfc)
        self.r.sfcs[sfc].notify_fd = fd

    def take_instance_request(self, int sfc=0):
        """True once per episode of packets of `sfc` waiting with no instance running."""
        serpens_fence()
        if self.r.sfcs[sfc].wants_instance:
            self.r.sfcs[sfc].wants_instance = 0
            return True
        return False

    def activity(self, int i):
        """Packets given to instance i so far (the instance manager's idle clock)."""
        return self.r.inst[i].enqueued

    def stamp_stages(self, bint on):
        """Account the loop's TSC time to its stages (router.h serpens_stage; costs a TSC
        read per stage): stage_cycles() reads the sums (cumulative while on)."""
        self.r.stamp_last = 0
        self.r.stamp_on = on

    def stage_cycles(self):
        """Cycles spent per stage of the loop while stamp_stages was on (names: STAGES)."""
        return {name: self.r.stage_cycles[k] for k, name in enumerate(STAGES)}

    def stats(self):
        r = self.r
        per = {i: {"sfc": r.inst[i].sfc, "enqueued": r.inst[i].enqueued,
                   "returned": r.inst[i].returned, "wakeups": r.inst[i].wakeups,
                   "dropped": r.inst[i].dropped, "pending": r.inst[i].npending,
                   "state": r.inst[i].state}
               for i in range(SERPENS_ROUTER_MAX_INSTANCES) if r.inst[i].state}
        ports = {r.ports[i].id: {"rx": r.ports[i].rx, "tx": r.ports[i].tx,
                                 "tx_failed": r.ports[i].tx_failed,
                                 "unmatched": r.ports[i].unmatched, "missed": r.ports[i].pace.missed,
                                 "rx_empty": r.ports[i].pace.rx_empty}
                 for i in range(r.nports)}
        sfcs = {k: {"rx": r.sfcs[k].rx, "out": r.sfcs[k].out, "dropped": r.sfcs[k].dropped,
                    "bytes": r.sfcs[k].bytes,
                    "drops": {"instance_died": r.sfcs[k].drop_died,
                              "instance_stuck": r.sfcs[k].drop_stuck,
                              "no_instance": r.sfcs[k].drop_hold,
                              "sfc_failed": r.sfcs[k].drop_failed,
                              "over_mtu": r.sfcs[k].drop_mtu},
                    "new_flows": r.sfcs[k].new_flows, "moved_flows": r.sfcs[k].moved_flows,
                    "rebalanced_flows": r.sfcs[k].rebalanced_flows, "held": r.sfcs[k].nheld,
                    "moving": r.sfcs[k].moving}
                for k in range(SERPENS_ROUTER_MAX_SFCS) if r.sfcs[k].used}
        return {"rx": r.rx, "tx": r.tx, "dropped": r.dropped, "tx_failed": r.tx_failed,
                "sleeps": r.sleeps, "busy_s": r.busy_cycles / float(rte_get_tsc_hz()), "pending": r.npending, "held": r.nheld,
                "new_flows": sum(s["new_flows"] for s in sfcs.values()),
                "moved_flows": sum(s["moved_flows"] for s in sfcs.values()),
                "ports": ports, "sfcs": sfcs, "instances": per,
                "vxlan": {"rx": r.vx_rx, "arp_replies": r.vx_arp,
                          "drops": {"not_ours": r.vx_not_ours, "bad_outer": r.vx_bad_outer,
                                    "over_mtu": r.vx_over_mtu,
                                    "unknown_tag": r.vx_unknown_tag}}}
