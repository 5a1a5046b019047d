"""Network namespaces by name (``/run/netns/<name>``, as ``ip netns add`` makes them).

vmm_core starts QEMU inside a sandbox's namespace and checks its tap there; CubeVS manages the
namespace it is told to (tests and benchmarks run a whole node datapath inside one they created);
tests reach guests from inside the namespace they live in. All of them do it through here.

Invariants:
- The namespace is a per-thread attribute in Linux, so :func:`call_in` never switches the calling
  thread: it runs the function on a short-lived helper thread that entered the namespace, and the
  caller's own namespace never changes.
- What that thread creates keeps the namespace it was created in after the thread ends: sockets,
  tap fds, /proc/sys files opened there, and children forked from it.
- ``None`` means "the namespace we are in": the function runs right here, on the calling thread.
- A namespace that does not exist raises :class:`NamespaceNotFound` (a ``FileNotFoundError``)
  before the function runs; any error of the function itself is re-raised in the caller.
- Standard library only.
"""
from __future__ import annotations

import ctypes
import os
import socket
import threading
from collections.abc import Callable
from typing import Any, TypeVar

NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


class NamespaceNotFound(FileNotFoundError):
    """No network namespace of that name (nothing under /run/netns)."""


def netns_path(name: str) -> str:
    return os.path.join(NETNS_RUN_DIR, name)


def call_in(netns: str | None, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn(*args, **kwargs)`` in ``netns`` and return its result or raise its error."""
    if netns is None:
        return fn(*args, **kwargs)
    return call_on_own_thread(netns, fn, *args, **kwargs)


def call_on_own_thread(netns: str | None, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` on a short-lived thread of its own (in ``netns`` when given) and return its
    result or raise its error. ``fn`` may change what Linux keeps per thread (its namespaces, its
    v1 cgroups, its filesystem context after ``unshare(CLONE_FS)``): the thread ends with ``fn``
    and what it forked keeps those."""
    fd = None
    if netns is not None:
        # Opened here rather than in the thread, so that a missing namespace is the caller's error
        # before any thread exists.
        try:
            fd = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NamespaceNotFound(f"network namespace {netns!r} does not exist") from None
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            if fd is not None:
                try:
                    rc = _libc.setns(fd, CLONE_NEWNET)
                    err = ctypes.get_errno()
                finally:
                    os.close(fd)  # entered or not, nothing needs it any more
                if rc != 0:
                    raise OSError(err, f"setns({netns}): {os.strerror(err)}")
            box["value"] = fn(*args, **kwargs)
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e

    # The thread ends right after fn: a thread whose namespaces changed is never reused for
    # anything else. Daemon, so that a fn stuck in the kernel cannot keep the interpreter alive.
    t = threading.Thread(target=run, name=f"netns-{netns or 'own'}", daemon=True)
    try:
        t.start()
    except BaseException:
        if fd is not None:
            os.close(fd)
        raise
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def socket_in(netns: str | None, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM,
              proto: int = 0) -> socket.socket:
    """A socket created in ``netns``: it connects and binds there, whichever thread uses it."""
    return call_in(netns, socket.socket, family, kind, proto)


def interface_exists(netns: str | None, ifname: str) -> bool:
    """Whether a network interface of that name exists in ``netns``."""
    def check() -> bool:
        try:
            socket.if_nametoindex(ifname)
            return True
        except OSError:
            return False

    return call_in(netns, check)


def write_sysctl(netns: str | None, key: str, value: str) -> None:
    """Write a sysctl (``net.ipv4.ip_forward``) as ``netns`` sees it: /proc/sys/net is per namespace."""
    path = "/proc/sys/" + key.replace(".", "/")

    def write() -> None:
        with open(path, "w") as f:
            f.write(value)

    call_in(netns, write)
