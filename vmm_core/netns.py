"""Network namespaces by name (/run/netns/<name>, as `ip netns` makes them).

QEMU joins a namespace before exec; host-side code that must reach a guest inside one opens its
socket from a short-lived thread that entered the namespace (setns affects only that thread, and a
socket keeps the namespace it was created in).
"""
from __future__ import annotations

import ctypes
import os
import socket
import threading
from collections.abc import Callable
from typing import TypeVar

from .errors import InvalidSpecError

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def netns_path(name: str) -> str:
    return f"/run/netns/{name}"


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"setns: {os.strerror(e)}")


def enter_in_child(name: str) -> Callable[[], None]:
    """A preexec_fn that moves a child process into the namespace before it execs."""
    path = netns_path(name)

    def enter() -> None:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        _setns(fd)
        os.close(fd)

    return enter


def run_in(name: str | None, fn: Callable[[], T]) -> T:
    """Run fn in the named namespace (in a helper thread) and return its result."""
    if name is None:
        return fn()
    try:
        fd = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InvalidSpecError(f"network namespace {name!r} does not exist") from None
    box: dict[str, object] = {}

    def body() -> None:
        try:
            _setns(fd)
            box["value"] = fn()
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e

    t = threading.Thread(target=body, name=f"netns-{name}")
    t.start()
    t.join()
    os.close(fd)
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def socket_in(name: str | None, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
    return run_in(name, lambda: socket.socket(family, kind))


def interface_exists(name: str | None, ifname: str) -> bool:
    def check() -> bool:
        try:
            socket.if_nametoindex(ifname)
            return True
        except OSError:
            return False

    return run_in(name, check)
