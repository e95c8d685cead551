"""common/port_devices.py: a port whose kernel interface or PCI device this host lacks is
named with the reason (what DPDK's "no DPDK port named ..." leaves out)."""
import pytest

from serpens.common.documents import SpecError
from serpens.common.port_devices import check_present, explain, why_absent

pytestmark = pytest.mark.unit


def test_a_missing_interface_is_named():
    assert why_absent("net_af_packet_fabric,iface=eth9x") == \
        "interface eth9x does not exist (in this network namespace)"
    assert why_absent("net_af_packet0,iface=lo") == ""          # lo always exists
    assert why_absent("net_null0") == ""
    assert explain("net_af_packet_fabric,iface=eth9x", "no DPDK port named net_af_packet_fabric") \
        == ("no DPDK port named net_af_packet_fabric: interface eth9x does not exist "
            "(in this network namespace)")
    assert explain("net_null7", "no DPDK port named net_null7") == "no DPDK port named net_null7"


def test_a_missing_pci_device_is_named():
    assert why_absent("ff:1f.7") == "no PCI device 0000:ff:1f.7"
    assert why_absent("0000:ff:1f.7,foo=1") == "no PCI device 0000:ff:1f.7"


def test_check_present_names_the_port():
    check_present({"wan": "net_null0", "lan": "net_af_packet1,iface=lo"})
    with pytest.raises(SpecError) as e:
        check_present({"wan": "net_null0", "fabric": "net_af_packet_fabric,iface=eth9x"})
    assert e.value.field == "spec.ports.fabric" and "interface eth9x does not exist" in str(e.value)
