"""Tap devices and the warm pool that keeps some ready, so that Allocate does not create one.

A pool tap is fully prepared: persistent (QEMU attaches to it by name, ``-netdev
tap,ifname=...,script=no``), MAC = the gateway MAC, IPv6 off, up, and the datapath programs
attached; the programs drop everything on it until a sandbox is bound. Released taps are
destroyed, never recycled: a stray process still holding the old fd must not see the next
sandbox's traffic. A background thread refills the pool.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from cube_common import netns
from services.vs import rtnl
from services.vs.guest import DEFAULT_GATEWAY_MAC
from services.vs.log import get_logger
from services.vs.settings import Settings

log = get_logger("taps")

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNSETOWNER = 0x400454CC
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000


@dataclass(frozen=True)
class Tap:
    name: str
    ifindex: int


def _make_persistent_tap(name: str) -> None:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI))
        fcntl.ioctl(fd, TUNSETPERSIST, 1)
    finally:
        os.close(fd)


def _set_ipv6_off(name: str) -> None:
    # The guest has no IPv6 identity; keep the host from sending ND/MLD into the tap.
    path = f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6"
    if os.path.exists(path):
        with open(path, "w") as f:
            f.write("1")


class TapFactory:
    """Creates and deletes taps in the node's namespace."""

    def __init__(self, settings: Settings, attach: Callable[[int], None]):
        self.settings = settings
        self._attach = attach
        self._ipr: IPRoute | None = None  # opened on first use, closed by close()
        self._ipr_lock = threading.Lock()

    def _rtnl(self) -> IPRoute:
        # One netlink socket for the factory's life (opening one in another netns forks).
        if self._ipr is None:
            self._ipr = rtnl.iproute(self.settings.netns)
        return self._ipr

    def close(self) -> None:
        with self._ipr_lock:
            if self._ipr is not None:
                self._ipr.close()
                self._ipr = None

    def new_name(self) -> str:
        return f"{self.settings.tap_prefix}{secrets.token_hex(3)}"

    def is_ours(self, name: str) -> bool:
        p = self.settings.tap_prefix
        return name.startswith(p) and len(name) == len(p) + 6 and all(c in "0123456789abcdef" for c in name[len(p):])

    def create(self, mac: str = DEFAULT_GATEWAY_MAC) -> Tap:
        ns = self.settings.netns
        name = self.new_name()
        netns.call_in(ns, _make_persistent_tap, name)
        try:
            netns.call_in(ns, _set_ipv6_off, name)
            with self._ipr_lock:
                ipr = self._rtnl()
                idx = ipr.link_lookup(ifname=name)[0]
                ipr.link("set", index=idx, address=mac, state="up")
            self._attach(idx)
            return Tap(name, idx)
        except BaseException:
            self.delete(name)
            raise

    def delete(self, name: str) -> bool:
        with self._ipr_lock:
            ipr = self._rtnl()
            idx = ipr.link_lookup(ifname=name)
            if not idx:
                return False
            try:
                ipr.link("del", index=idx[0])
            except NetlinkError as e:
                if e.code != 19:  # ENODEV: gone already
                    raise
            return True

    def list_ours(self) -> list[Tap]:
        with self._ipr_lock:
            ipr = self._rtnl()
            out: list[Tap] = []
            for link in ipr.get_links():
                name = link.get_attr("IFLA_IFNAME")
                if self.is_ours(name):
                    out.append(Tap(name, link["index"]))
            return out


class TapPool:
    """Warm taps, refilled in the background up to ``settings.pool_size``."""

    def __init__(self, factory: TapFactory, size: int):
        self.factory = factory
        self.size = size
        self._free: list[Tap] = []
        self._lock = threading.Lock()
        # Held while a tap is being created for the pool, so reconcile never mistakes a tap in
        # the making for a leftover.
        self.busy = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.fill()
        self._thread = threading.Thread(target=self._run, name="tap-pool", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=5)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.fill()
            except Exception:  # keep refilling later; Allocate falls back to a cold tap
                log.exception("tap pool refill failed")

    def fill(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                if len(self._free) >= self.size:
                    return
            with self.busy:
                tap = self.factory.create()
                with self._lock:
                    self._free.append(tap)

    def take(self) -> tuple[Tap, bool]:
        """A ready tap and whether it came warm from the pool (else it was created now)."""
        with self._lock:
            tap = self._free.pop(0) if self._free else None
        self._wake.set()
        if tap is not None:
            return tap, True
        return self.factory.create(), False

    def free(self) -> list[Tap]:
        with self._lock:
            return list(self._free)

    def drain(self) -> None:
        """Delete every warm tap (teardown)."""
        with self._lock:
            taps, self._free = self._free, []
        for t in taps:
            self.factory.delete(t.name)
