"""cli/testbed.py's plan (nothing is made here): names that fit a Linux interface name and
never meet another cluster's, networks clear of the host's, and a plan that survives its
round trip through the cluster's state file."""
import ipaddress

import pytest

from serpens.cli import multi, testbed
from serpens.cli.testbed import Testbed, TestbedError, tag_for

pytestmark = pytest.mark.unit

IFNAMSIZ = 15  # characters of an interface name, without its NUL


def test_names_fit_and_two_cluster_dirs_never_share_one():
    a = multi.testbed(tag_for("/run/serpens/local"), multi.MAX_SERVERS)
    b = multi.testbed(tag_for("/tmp/other"), multi.MAX_SERVERS)
    for bed in (a, b):
        names = [*bed.bridges.values(), *bed.ns.values(),
                 *(link for links in bed.links.values() for link in links.values())]
        assert max(map(len, names)) <= IFNAMSIZ
        assert len(set(names)) == len(names)
    assert not set(a.ns.values()) & set(b.ns.values())
    assert tag_for("/run/serpens/local") == tag_for("/run/serpens/../serpens/local")


def test_addresses_come_from_two_free_networks(monkeypatch):
    host = [ipaddress.ip_network("10.192.0.0/16"), ipaddress.ip_network("10.193.0.0/23")]
    monkeypatch.setattr(testbed, "_used_networks", lambda: host)
    for tag in ("a", "b", "c1", "xyz"):
        bed = Testbed(tag, ["gw", "s1", "s2"])
        control, underlay = map(ipaddress.ip_network, (bed.control_net, bed.underlay_net))
        assert not any(n.overlaps(h) for n in (control, underlay) for h in host)
        assert not control.overlaps(underlay)
        assert bed.host == str(control[1])
        assert {ipaddress.ip_address(a) for a in bed.address.values()} < set(control.hosts())
        assert {ipaddress.ip_address(a) for a in bed.underlay.values()} < set(underlay.hosts())
        assert len(set(bed.address.values()) | {bed.host}) == 4


def test_the_plan_round_trips_through_the_state_file():
    bed = Testbed("t1", ["gw", "s1"], outside={"gw": 2})
    again = Testbed.from_dict(bed.to_dict())
    assert (again.ns, again.links, again.address, again.underlay, again.bridges) == \
        (bed.ns, bed.links, bed.address, bed.underlay, bed.bridges)
    assert bed.links["gw"]["eth2"] == "spt1gwo0" and "eth2" not in bed.links["s1"]
    assert bed.netns_exec("s1") == ["ip", "netns", "exec", "spt1s1"]


@pytest.mark.parametrize("tag, members, outside, field", [
    ("", ["a"], None, "tag"), ("toolong", ["a"], None, "tag"), ("a-b", ["a"], None, "tag"),
    ("t", [], None, "members"), ("t", ["a", "a"], None, "members"),
    ("t", ["abcde"], None, "member"), ("t", ["a"], {"b": 1}, "outside"),
    ("t", ["a"], {"a": 5}, "outside")])
def test_a_bad_plan_is_refused_naming_what(tag, members, outside, field):
    with pytest.raises(TestbedError, match=field):
        Testbed(tag, members, "10.1.0.0/24", "10.1.1.0/24", outside=outside)
