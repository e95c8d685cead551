"""An SFC's VXLAN route on a node (RunSFCRequest.vxlan, DESIGN §7): the SFC tag and VNI its
frames carry on the underlay, and the gateway its packets go back to with `output: gateway`.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from serpens.common.spec import SpecError

_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
MAX_TAG = (1 << 24) - 1   # tags and VNIs are the 24-bit fields of the VXLAN header


@dataclass(frozen=True)
class VxlanRoute:
    tag: int            # 1..2^24-1
    vni: int            # 0..2^24-1
    gateway_ip: str     # the gateway's underlay IPv4 address
    gateway_mac: str    # lower-case aa:bb:cc:dd:ee:ff

    @classmethod
    def of(cls, route) -> VxlanRoute | None:
        """From anything with the proto VxlanRoute's fields (None, or tag 0: no route, the SFC
        is local only). SpecError naming the field `vxlan.<field>` for a bad one."""
        if route is None or not route.tag:
            return None
        if not 0 < route.tag <= MAX_TAG:
            raise SpecError("vxlan.tag", f"an SFC tag 1..{MAX_TAG}, got {route.tag}")
        if not 0 <= route.vni <= MAX_TAG:
            raise SpecError("vxlan.vni", f"a VNI 0..{MAX_TAG}, got {route.vni}")
        try:
            ip = ipaddress.IPv4Address(route.gateway_ip)
        except ValueError:
            raise SpecError("vxlan.gateway_ip",
                            f"an IPv4 address, got {route.gateway_ip[:64]!r}") from None
        if ip.is_multicast or ip.is_unspecified or int(ip) == 0xFFFFFFFF:
            raise SpecError("vxlan.gateway_ip", f"a unicast address, got {ip}")
        mac = route.gateway_mac.lower()
        if not _MAC.match(mac):
            raise SpecError("vxlan.gateway_mac",
                            f"a MAC (aa:bb:cc:dd:ee:ff), got {route.gateway_mac[:64]!r}")
        return cls(route.tag, route.vni, str(ip), mac)
