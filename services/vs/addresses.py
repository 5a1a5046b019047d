"""The node-local pool of unique host-side sandbox addresses.

One address per sandbox, from ``pool_cidr``: the proxy connects to ``<address>:<port>`` and the
datapath translates it to the fixed guest IP. The network, broadcast and proxy addresses are
never handed out. Allocation goes round the pool instead of reusing the lowest free address, so
a just-released address (which a stale proxy connection or NAT entry may still name) is the
last to come back.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable


class PoolExhausted(RuntimeError):
    """Every address of the pool is in use."""


class AddressPool:
    def __init__(self, network: ipaddress.IPv4Network, reserved: Iterable[ipaddress.IPv4Address] = ()):
        self.network = network
        self._reserved = {network.network_address, network.broadcast_address, *reserved}
        self._used: set[ipaddress.IPv4Address] = set()
        self._first = int(network.network_address) + 1
        self._size = network.num_addresses - 2
        self._cursor = 0

    @property
    def capacity(self) -> int:
        ends = (self.network.network_address, self.network.broadcast_address)
        return self._size - sum(1 for a in self._reserved if a in self.network and a not in ends)

    def __len__(self) -> int:
        return len(self._used)

    def allocate(self) -> ipaddress.IPv4Address:
        for i in range(self._size):
            addr = ipaddress.IPv4Address(self._first + (self._cursor + i) % self._size)
            if addr not in self._used and addr not in self._reserved:
                self._used.add(addr)
                self._cursor = (self._cursor + i + 1) % self._size
                return addr
        raise PoolExhausted(f"no free address in {self.network}")

    def claim(self, addr: ipaddress.IPv4Address) -> None:
        """Mark an address as used (re-adopting state after a restart)."""
        if addr not in self.network or addr in self._reserved:
            raise ValueError(f"{addr} is not an assignable address of {self.network}")
        if addr in self._used:
            raise ValueError(f"{addr} is already in use")
        self._used.add(addr)

    def release(self, addr: ipaddress.IPv4Address) -> None:
        self._used.discard(addr)

    def in_use(self, addr: ipaddress.IPv4Address) -> bool:
        return addr in self._used
