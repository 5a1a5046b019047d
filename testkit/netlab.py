"""Network namespaces with a tap for a test microVM, and an HTTP client that runs inside them.

Every clone of a snapshot has the same guest address, so each test machine gets its own
namespace holding its tap (the host side of the guest's /30 link). The namespace has no other
link, so nothing the guest sends leaves it; `TestNet.destroy()` deletes it with the tap.
"""
from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import time
from dataclasses import dataclass

from cube_common import netns
from testkit import nshttp
from vmm_core import GuestNetwork, NetworkAttachment

GUEST = GuestNetwork()
# Every tap shows the guest the same gateway MAC, as CubeVS's do: a clone's ARP cache comes from
# the snapshot, and a gateway with another MAC would get its SYN-ACKs addressed to the template's
# tap until the guest re-resolved it (seconds).
GATEWAY_MAC = "02:fc:00:00:00:16"
_counter = itertools.count()


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@dataclass
class TestNet:
    name: str
    tap: str = "tap0"

    @property
    def attachment(self) -> NetworkAttachment:
        return NetworkAttachment(self.tap, GUEST.mac, self.name)

    @classmethod
    def create(cls) -> TestNet:
        name = f"cubevmt{os.getpid() % 10000}x{next(_counter)}"
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        _ip("netns", "add", name)
        net = cls(name)
        _ip("-n", name, "tuntap", "add", "dev", net.tap, "mode", "tap")
        _ip("-n", name, "link", "set", net.tap, "address", GATEWAY_MAC)
        _ip("-n", name, "addr", "add", f"{GUEST.gateway}/{GUEST.prefix}", "dev", net.tap)
        _ip("-n", name, "link", "set", net.tap, "up")
        _ip("-n", name, "link", "set", "lo", "up")
        return net

    def destroy(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)

    def http_get(self, path: str, port: int = 8080, timeout: float = 5.0) -> str:
        """GET http://<guest>:<port><path> from inside the namespace; the body as text."""
        return nshttp.get_text(self.name, GUEST.ip, port, path, timeout=timeout)

    async def wait_http(self, path: str = "/", port: int = 8080, timeout: float = 90.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return await asyncio.to_thread(self.http_get, path, port, 2.0)
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.02)

    async def wait_tcp(self, port: int = 8080, timeout: float = 30.0) -> None:
        """Until a TCP connection to the guest port is accepted (the kernel answers the SYN)."""
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout
        while True:
            s = netns.socket_in(self.name)
            s.setblocking(False)
            try:
                await asyncio.wait_for(loop.sock_connect(s, (GUEST.ip, port)), 1.0)
                return
            except (TimeoutError, OSError):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"guest port {port} did not answer within {timeout}s") from None
                await asyncio.sleep(0.001)
            finally:
                s.close()
