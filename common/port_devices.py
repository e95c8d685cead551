"""What a port's DPDK device string needs from the host, checked before DPDK is asked: a
kernel interface (`iface=eth1` of net_af_packet/net_pcap) must exist in this network
namespace and a PCI address must name a device. DPDK itself only says a port it could not
probe does not exist ("no DPDK port named ..."); this says why (deploy/ checks a config with
it before a running agent or gateway is restarted on it)."""
from __future__ import annotations

import os
import re
import socket

from .documents import SpecError

PCI = re.compile(r"^([0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")


def _option(device: str, key: str) -> str:
    for part in device.split(",")[1:]:
        k, _, v = part.partition("=")
        if k.strip() == key:
            return v.strip()
    return ""


def why_absent(device: str) -> str:
    """Why `device` cannot be probed on this host ('' when nothing is known to be missing)."""
    iface = _option(device, "iface")
    if iface:
        try:
            socket.if_nametoindex(iface)
        except OSError:
            return f"interface {iface} does not exist (in this network namespace)"
    name = device.split(",", 1)[0].strip()
    if PCI.match(name):
        full = name if name.count(":") == 2 else f"0000:{name}"
        if not os.path.exists(f"/sys/bus/pci/devices/{full.lower()}"):
            return f"no PCI device {full}"
    return ""


def check_present(ports: dict) -> None:
    """SpecError naming the first port of `ports` (name -> device string) this host lacks."""
    for name, device in ports.items():
        why = why_absent(device)
        if why:
            raise SpecError(f"spec.ports.{name}", f"{device}: {why}")


def explain(device: str, error: str) -> str:
    """DPDK's error opening `device`, with the missing interface or device when that is why."""
    why = why_absent(device)
    return f"{error}: {why}" if why else error
