"""Gateway configs (gateway/config.py): the example loads, defaults follow the ports, and a
bad field is a SpecError naming it."""
import pytest

from serpens.common.spec import SpecError
from serpens.gateway.config import parse_gateway

pytestmark = pytest.mark.unit

GW = """
apiVersion: serpens/v1
kind: Gateway
metadata: {name: gw-1}
spec:
  ports: {wan: net_null_w, dmz: net_null_d, out: net_null_o, fabric: net_null_f}
  egress: out
  underlay: {port: fabric, ip: 10.10.0.1}
"""


def test_defaults_take_every_port_but_egress_and_underlay_as_ingress():
    c = parse_gateway(GW)
    assert (c.name, c.ingress, c.egress, c.underlay.port, c.underlay.mtu) == \
        ("gw-1", ("wan", "dmz"), "out", "fabric", 1500)
    assert (c.cpus, c.gateway_cpu, c.idle_s, c.pace, c.release_factor) == \
        ("0-1", 1, 30.0, {}, 2.0)
    c = parse_gateway(GW + "  ingress: [dmz]\n  pace: {dmz: 5000}\n  idle_s: 2\n"
                           "  release_factor: 3\n")
    assert (c.ingress, c.pace, c.idle_s, c.release_factor) == \
        (("dmz",), {"dmz": 5000.0}, 2.0, 3.0)


@pytest.mark.parametrize("extra, field", [
    ("  ingress: [fabric]\n", "spec.ingress[0]"),
    ("  ingress: [wan, lan]\n", "spec.ingress[1]"),
    ("  ingress: [wan, wan]\n", "spec.ingress[1]"),
    ("  pace: {out: 100}\n", "spec.pace.out"),
    ("  pace: {wan: 0}\n", "spec.pace.wan"),
    ("  idle_s: 0\n", "spec.idle_s"),
    ("  stall_us: 5\n", "spec.stall_us"),
    ("  release_factor: 1\n", "spec.release_factor"),
    ("  gateway_cpu: -1\n", "spec.gateway_cpu"),
    ("  cpus: all\n", "spec.cpus"),
    ("  router_cpu: 1\n", "spec.router_cpu"),
])
def test_a_bad_field_is_named(extra, field):
    with pytest.raises(SpecError) as e:
        parse_gateway(GW + extra)
    assert e.value.field == field, str(e.value)


@pytest.mark.parametrize("old, new, field", [
    ("egress: out", "egress: fabric", "spec.egress"),
    ("egress: out", "egress: lan", "spec.egress"),
    ("ip: 10.10.0.1", "ip: 10.10.0.300", "spec.underlay.ip"),
    ("port: fabric", "port: nic", "spec.underlay.port"),
    ("  underlay: {port: fabric, ip: 10.10.0.1}\n", "", "spec.underlay"),
    ("wan: net_null_w", "wan: eth0", "spec.ports.wan"),
    ("name: gw-1", "name: GW", "metadata.name"),
])
def test_a_bad_required_field_is_named(old, new, field):
    with pytest.raises(SpecError) as e:
        parse_gateway(GW.replace(old, new))
    assert e.value.field == field, str(e.value)


@pytest.mark.parametrize("old, new, field", [
    ("egress: out", "egress: [out]", "spec.egress"),
    ("egress: out", "egress: out\n  ingress: [[wan]]", "spec.ingress[0]"),
    ("egress: out", "egress: out\n  ingress: [wan, out]", "spec.ingress[1]"),
    ("egress: out", "egress: out\n  cpus: '0'\n  gateway_cpu: 3", "spec.gateway_cpu"),
])
def test_a_bad_list_item_egress_or_cpu_is_named(old, new, field):
    with pytest.raises(SpecError) as e:
        parse_gateway(GW.replace(old, new))
    assert e.value.field == field, str(e.value)
