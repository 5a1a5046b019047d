"""Network-namespace plumbing: run a function in a named netns, open netlink there.

CubeVS normally manages the namespace it runs in (``netns=None``). Tests and benchmarks run a
whole node datapath inside a namespace they created, so every kernel-side operation goes
through here. A netns is a per-thread attribute in Linux, so :func:`call_in` switches a
short-lived thread rather than the calling one: sockets, tap fds and /proc/sys/net files opened
there stay bound to that namespace after the thread ends.
"""

from __future__ import annotations

import ctypes
import os
import threading
from typing import Callable, TypeVar

from pyroute2 import IPRoute

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"

_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def _setns(name: str) -> None:
    fd = os.open(os.path.join(NETNS_RUN_DIR, name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


def call_in(netns: str | None, fn: Callable[..., T], *args, **kwargs) -> T:
    """Run ``fn`` in ``netns`` (None: right here) and return its result or raise its error."""
    if netns is None:
        return fn(*args, **kwargs)
    box: dict = {}

    def run() -> None:
        try:
            _setns(netns)
            box["value"] = fn(*args, **kwargs)
        except BaseException as e:  # re-raised in the caller
            box["error"] = e

    t = threading.Thread(target=run, name=f"netns-{netns}", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def iproute(netns: str | None) -> IPRoute:
    """A netlink (rtnl) socket bound to ``netns``."""
    return IPRoute(netns=netns) if netns else IPRoute()


def write_sysctl(netns: str | None, key: str, value: str) -> None:
    """Write /proc/sys/<key with dots as slashes> as seen from ``netns``."""
    path = "/proc/sys/" + key.replace(".", "/")

    def write() -> None:
        with open(path, "w") as f:
            f.write(value)

    call_in(netns, write)


def read_sysctl(netns: str | None, key: str) -> str:
    path = "/proc/sys/" + key.replace(".", "/")

    def read() -> str:
        with open(path) as f:
            return f.read().strip()

    return call_in(netns, read)
