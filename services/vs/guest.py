"""The network identity every clone of a snapshot shares, baked in at template build time.

All clones have the same guest IP and MAC, so CubeVS never routes on them: each sandbox's tap
has its own host-side address and the datapath translates between the two. The values are
parameters of each Allocate (a template could be built with another identity), with the
defaults below that the default templates use.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

DEFAULT_GUEST_IP = "169.254.0.21"
DEFAULT_PREFIX_LEN = 30
DEFAULT_GATEWAY_IP = "169.254.0.22"
DEFAULT_GUEST_MAC = "02:fc:00:00:00:15"
# The gateway MAC is the tap's own MAC. It is fixed (not random per tap) so that the ARP entry a
# snapshot carries for the gateway stays right in every clone on every tap.
DEFAULT_GATEWAY_MAC = "02:fc:00:00:00:16"

_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


class GuestNetworkError(ValueError):
    """An invalid guest identity."""


def mac_bytes(mac: str) -> bytes:
    mac = mac.lower()
    if not _MAC_RE.match(mac):
        raise GuestNetworkError(f"invalid MAC address {mac!r}")
    b = bytes(int(x, 16) for x in mac.split(":"))
    if b[0] & 1:
        raise GuestNetworkError(f"MAC {mac} is a multicast address")
    if b == b"\0" * 6:
        raise GuestNetworkError("MAC 00:00:00:00:00:00 is not usable")
    return b


@dataclass(frozen=True)
class GuestNetwork:
    ip: str = DEFAULT_GUEST_IP
    prefix_len: int = DEFAULT_PREFIX_LEN
    gateway_ip: str = DEFAULT_GATEWAY_IP
    mac: str = DEFAULT_GUEST_MAC
    gateway_mac: str = DEFAULT_GATEWAY_MAC

    def validate(self) -> GuestNetwork:
        try:
            ip = ipaddress.IPv4Address(self.ip)
            gw = ipaddress.IPv4Address(self.gateway_ip)
        except ValueError as e:
            raise GuestNetworkError(f"invalid guest address: {e}") from None
        if not (8 <= self.prefix_len <= 30):
            raise GuestNetworkError(f"guest prefix length {self.prefix_len} must be 8..30")
        net = ipaddress.IPv4Network(f"{ip}/{self.prefix_len}", strict=False)
        if gw not in net or gw == ip:
            raise GuestNetworkError(f"gateway {gw} must be another address in the guest's subnet {net}")
        if mac_bytes(self.mac) == mac_bytes(self.gateway_mac):
            raise GuestNetworkError("guest and gateway MAC must differ")
        return self

    @classmethod
    def default(cls) -> GuestNetwork:
        return cls()
