"""Test stand-in for a VM's NIC: hold a node tap's fd and bridge its frames into a guest netns.

    python -m testkit.tapbridge --node-ns N --tap cvsXXXXXX --guest-ns G \
        --ip 169.254.0.21 --prefix 30 --gateway 169.254.0.22 --mac 02:fc:00:00:00:15

What a VMM does with the tap (QEMU opens it by name with IFF_VNET_HDR and moves frames between
it and virtio-net), this process does with a second tap, ``eth0``, that it creates inside the
guest namespace and configures with the guest identity (address, MAC, default route via the
on-link gateway, exactly like the template's guest). Two threads copy frames fd-to-fd. Both taps
use virtio-net headers with offloads on, so TSO/checksum-offloaded frames pass as such, as they
would between a host tap and a virtio-net guest.

It prints "ready" once both ends are up and runs until killed (SIGTERM) or stdin closes.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import os
import struct
import subprocess
import sys
import threading

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN = 0x01, 0x02, 0x04, 0x08

_libc = ctypes.CDLL(None, use_errno=True)


def setns(name: str) -> None:
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(fd, 0x40000000) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name}")
    finally:
        os.close(fd)


def open_tap(name: str, offload: bool) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
    if offload:
        fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN)
    return fd


def pump(src: int, dst: int) -> None:
    while True:
        try:
            frame = os.read(src, 65536 + 64)
        except OSError:
            return
        if not frame:
            return
        try:
            os.write(dst, frame)
        except OSError:
            pass  # the other side is down: drop, like a link would


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--node-ns", required=True)
    ap.add_argument("--tap", required=True)
    ap.add_argument("--guest-ns", required=True)
    ap.add_argument("--ip", required=True)
    ap.add_argument("--prefix", type=int, required=True)
    ap.add_argument("--gateway", required=True)
    ap.add_argument("--mac", required=True)
    ap.add_argument("--no-offload", action="store_true")
    a = ap.parse_args()
    offload = not a.no_offload

    # Still single-threaded: setns switches the whole process, and the fd keeps the tap.
    setns(a.node_ns)
    host_fd = open_tap(a.tap, offload)
    setns(a.guest_ns)
    guest_fd = open_tap("eth0", offload)

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True)

    ip("link", "set", "lo", "up")
    ip("link", "set", "eth0", "address", a.mac)
    ip("addr", "add", f"{a.ip}/{a.prefix}", "dev", "eth0")
    ip("link", "set", "eth0", "up")
    ip("route", "add", "default", "via", a.gateway, "dev", "eth0")

    for src, dst in ((host_fd, guest_fd), (guest_fd, host_fd)):
        threading.Thread(target=pump, args=(src, dst), daemon=True).start()
    print("ready", flush=True)
    try:
        sys.stdin.read()  # the test closes our stdin (or kills us) to stop
    finally:
        os._exit(0)


if __name__ == "__main__":
    main()
