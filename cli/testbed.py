"""Several servers on one machine: a network namespace per member (a server or a gateway),
each wired like a server with two NICs (the host plays the switches and the control plane):

    <ns>:eth0 (control)  --veth--  bridge sp<tag>c  (the host's address .1: etcd, controller)
    <ns>:eth1 (underlay) --veth--  bridge sp<tag>u  (VXLAN between the gateway and servers)

eth0 carries the kernel's control address (gRPC, etcd). eth1 belongs to DPDK (net_af_packet
on it): its underlay address is deliberately *not* given to the namespace's kernel, which
would otherwise see every VXLAN frame too and answer each with an ICMP port unreachable; and
IPv6 is off on the underlay links, so no router solicitations or MLD reports reach the data
path. The af_packet port thus sees the overlay only (its counters are exact), and nobody
needs ARP: the controller pushes MACs (DESIGN §7). The underlay bridge has a static entry for
each member's eth1 MAC (DPDK's af_packet port uses the veth's), so a frame to a server is
never flooded to the others, even before that server has sent anything.

A member may also have `outside` links (eth2, eth3, ...: a veth whose host end `sp<tag><m>o<k>`
is on no bridge): a test sends a gateway's traffic in and reads it back there.

Names derive from a short tag (`tag_for(directory)` for a cluster dir, a PID for a test) and
fit IFNAMSIZ; `to_dict()` is the whole plan, written to the cluster's state file *before*
anything is made, so `remove()` from `Testbed.from_dict()` undoes exactly it, even after a
crash half-way through `create()` (what does not exist is skipped).
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import subprocess

CONTROL, UNDERLAY = "eth0", "eth1"  # the interfaces inside each member's namespace
MAX_MEMBERS = 100


class TestbedError(Exception):
    __test__ = False  # not a pytest class, despite its name


def ip(*args, ns: str = "", check: bool = True) -> subprocess.CompletedProcess:
    """`ip [-n ns] args...`; a failure raises TestbedError with ip's message."""
    r = subprocess.run(["ip", *(["-n", ns] if ns else []), *args], capture_output=True,
                       text=True)
    if check and r.returncode:
        raise TestbedError(f"ip {' '.join(args)}: {r.stderr.strip()}")
    return r


def tag_for(directory: str) -> str:
    """A tag from a cluster directory's absolute path: two clusters' names never meet."""
    return hashlib.sha1(os.path.abspath(directory).encode()).hexdigest()[:5]


def _used_networks() -> list:
    """The host's IPv4 networks (addresses and routes): a testbed must not shadow them."""
    nets = []
    for cmd in (("-4", "-j", "addr"), ("-4", "-j", "route")):
        try:
            doc = json.loads(ip(*cmd).stdout or "[]")
        except (TestbedError, ValueError):
            continue
        for entry in doc:
            for a in entry.get("addr_info", []):
                nets.append(ipaddress.ip_network(f"{a['local']}/{a['prefixlen']}", False))
            dst = entry.get("dst")
            if dst and dst != "default":
                nets.append(ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", False))
    return nets


def pick_networks(tag: str) -> tuple[str, str]:
    """Two free /24s in 10.192.0.0/10 (control, underlay), the first tried chosen by `tag`."""
    used = _used_networks()
    start = int(hashlib.sha1(tag.encode()).hexdigest()[:6], 16) % 8192
    for i in range(8192):
        n = (start + i) % 8192
        pair = [ipaddress.ip_network(f"10.{192 + n // 128}.{2 * (n % 128)}.0/24"),
                ipaddress.ip_network(f"10.{192 + n // 128}.{2 * (n % 128) + 1}.0/24")]
        if not any(p.overlaps(u) for p in pair for u in used):
            return str(pair[0]), str(pair[1])
    raise TestbedError("no free /24 pair in 10.192.0.0/10 for the testbed")


class Testbed:
    """The namespaces, veths and bridges of one cluster (see the module docstring)."""
    __test__ = False  # not a pytest class, despite its name

    def __init__(self, tag: str, members: list[str], control_net: str = "",
                 underlay_net: str = "", mtu: int = 1500, outside: dict | None = None):
        """`outside`: {member: k} gives it k more links (eth2..), on no bridge."""
        if not 1 <= len(tag) <= 6 or not tag.isalnum():
            raise TestbedError(f"tag: 1-6 letters or digits, got {tag!r}")
        if not members or len(members) > MAX_MEMBERS or len(set(members)) != len(members):
            raise TestbedError(f"members: 1..{MAX_MEMBERS} distinct names, got {members!r}")
        for m in members:
            if not 1 <= len(m) <= 4 or not m.isalnum():
                raise TestbedError(f"member {m!r}: 1-4 letters or digits")
        if not control_net or not underlay_net:
            control_net, underlay_net = pick_networks(tag)
        outside = dict(outside or {})
        if any(m not in members or not 0 <= k <= 4 for m, k in outside.items()):
            raise TestbedError(f"outside: {{member: 0..4 links}}, got {outside!r}")
        self.tag, self.members, self.mtu, self.outside = tag, list(members), mtu, outside
        self.control_net, self.underlay_net = control_net, underlay_net
        ctl = ipaddress.ip_network(control_net)
        ul = ipaddress.ip_network(underlay_net)
        self.bridges = {"control": f"sp{tag}c", "underlay": f"sp{tag}u"}
        self.host = str(ctl[1])                                  # on the control bridge
        self.ns = {m: f"sp{tag}{m}" for m in members}
        self.address = {m: str(ctl[2 + i]) for i, m in enumerate(members)}   # eth0
        self.underlay = {m: str(ul[2 + i]) for i, m in enumerate(members)}   # DPDK on eth1
        # the host ends of each member's veths, on the bridges
        self.links = {m: {"control": f"sp{tag}{m}c", "underlay": f"sp{tag}{m}u",
                          **{f"eth{2 + k}": f"sp{tag}{m}o{k}" for k in range(outside.get(m, 0))}}
                      for m in members}

    # ---- the plan, as recorded in a state file ----------------------------------------

    def to_dict(self) -> dict:
        return {"tag": self.tag, "members": self.members, "control_net": self.control_net,
                "underlay_net": self.underlay_net, "mtu": self.mtu, "outside": self.outside}

    @classmethod
    def from_dict(cls, d: dict) -> Testbed:
        return cls(d["tag"], d["members"], d["control_net"], d["underlay_net"], d["mtu"],
                   d.get("outside"))

    def netns_exec(self, member: str) -> list[str]:
        """The argv prefix that runs a program in `member`'s namespace (it execs: the PID
        is the program's)."""
        return ["ip", "netns", "exec", self.ns[member]]

    # ---- make and remove --------------------------------------------------------------

    def exists(self) -> bool:
        """Every namespace and bridge is there (a reboot or `ip netns del` removes them)."""
        namespaces = set(_namespaces())
        return all(ns in namespaces for ns in self.ns.values()) and all(
            _link_exists(b) for b in self.bridges.values())

    def create(self):
        """Make it all; refuses if any of its names exists (another cluster, or one not
        taken down); on a failure removes what it made and raises TestbedError."""
        taken = [n for n in self.ns.values() if n in _namespaces()] + [
            link for link in self._host_links() if _link_exists(link)]
        if taken:
            raise TestbedError(f"already there: {', '.join(taken)} (a cluster not taken "
                               "down? `serpens down` with its --dir removes it)")
        try:
            for kind, bridge in self.bridges.items():
                ip("link", "add", bridge, "mtu", str(self.mtu), "type", "bridge")
                _no_ipv6(bridge)
                if kind == "control":
                    ip("addr", "add", f"{self.host}/24", "dev", bridge)
                ip("link", "set", bridge, "up")
            for m in self.members:
                self._add_member(m)
        except TestbedError:
            self.remove()
            raise

    def _add_member(self, m: str):
        ns = self.ns[m]
        ip("netns", "add", ns)
        # IPv6 off in the namespace before its links arrive: no stray frames on the underlay
        _sysctl(ns, "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
        for kind, host in self.links[m].items():
            inner = {"control": CONTROL, "underlay": UNDERLAY}.get(kind, kind)
            ip("link", "add", host, "mtu", str(self.mtu), "type", "veth", "peer", "name", inner,
               "mtu", str(self.mtu), "netns", ns)
            _no_ipv6(host)
            if kind in self.bridges:
                ip("link", "set", host, "master", self.bridges[kind])
            ip("link", "set", host, "up")
            ip("link", "set", inner, "up", ns=ns)
        # the bridge knows where each underlay MAC is from the start: frames to a server
        # that never sends (an SFC whose output is local) are not flooded to every server
        mac = json.loads(ip("-j", "link", "show", UNDERLAY, ns=ns).stdout)[0]["address"]
        _bridge("fdb", "replace", mac, "dev", self.links[m]["underlay"], "master", "static")
        ip("addr", "add", f"{self.address[m]}/24", "dev", CONTROL, ns=ns)
        ip("link", "set", "lo", "up", ns=ns)

    def remove(self) -> list[str]:
        """Delete whatever of it exists (processes in the namespaces must be stopped first:
        a namespace lives on while a process is in it); returns what it removed."""
        removed = []
        for m in self.members:
            for link in self.links[m].values():
                if ip("link", "del", link, check=False).returncode == 0:
                    removed.append(link)
            if ip("netns", "del", self.ns[m], check=False).returncode == 0:
                removed.append(self.ns[m])
        for bridge in self.bridges.values():
            if ip("link", "del", bridge, check=False).returncode == 0:
                removed.append(bridge)
        return removed

    def _host_links(self) -> list[str]:
        return [*self.bridges.values(), *(l for m in self.members for l in self.links[m].values())]

    def drops(self) -> dict[str, dict[str, int]]:
        """The kernel's drop counters of every link of the testbed (host ends and bridges by
        name, a member's own ends as "<namespace>:<link>") that dropped something: where
        frames on the way between members were lost (a veth whose peer's backlog was full,
        a device that refused a frame, ...)."""
        out = {}
        for link in self._host_links():
            try:
                with open(f"/sys/class/net/{link}/statistics/rx_dropped") as f:
                    rx = int(f.read())
                with open(f"/sys/class/net/{link}/statistics/tx_dropped") as f:
                    tx = int(f.read())
            except OSError:
                continue
            if rx or tx:
                out[link] = {"rx_dropped": rx, "tx_dropped": tx}
        for m, ns in self.ns.items():
            r = ip("-s", "-j", "link", "show", ns=ns, check=False)
            for link in (json.loads(r.stdout) if r.returncode == 0 and r.stdout else []):
                st = link.get("stats64", {})
                rx, tx = st.get("rx", {}).get("dropped", 0), st.get("tx", {}).get("dropped", 0)
                if rx or tx:
                    out[f"{ns}:{link['ifname']}"] = {"rx_dropped": rx, "tx_dropped": tx}
        return out

    # ---- faults -----------------------------------------------------------------------

    def cut(self, member: str):
        """A partition: `member`'s control and underlay links go down at the bridges (not a
        signal)."""
        for kind in self.bridges:
            ip("link", "set", self.links[member][kind], "down")

    def mend(self, member: str):
        for kind in self.bridges:
            ip("link", "set", self.links[member][kind], "up")


def _bridge(*args):
    r = subprocess.run(["bridge", *args], capture_output=True, text=True)
    if r.returncode:
        raise TestbedError(f"bridge {' '.join(args)}: {r.stderr.strip()}")


def _namespaces() -> list[str]:
    out = ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _link_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


def _no_ipv6(link: str):
    """No IPv6 on a host-side link (no link-local address, RS or MLD frames); a kernel
    without IPv6 has nothing to turn off."""
    try:
        with open(f"/proc/sys/net/ipv6/conf/{link}/disable_ipv6", "w") as f:
            f.write("1")
    except OSError:
        pass


def _sysctl(ns: str, *settings: str):
    subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", *settings],
                   capture_output=True)
