"""Loopback ports for the servers tests and benchmarks start: a free one to bind, and waiting
until something listens on one."""
from __future__ import annotations

import random
import socket
import subprocess
import time

# Servers' ports come from below the kernel's ephemeral range (ip_local_port_range, 32768-60999 by
# default): a port the kernel hands out from that range may become some client's outgoing port
# before the server binds it (seen in CI: Envoy's "cannot bind ... Address already in use").
_LOWEST = 20000
_handed: set[int] = set()  # never the same port twice to one process, bound yet or not


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now, outside the range the kernel gives outgoing
    connections, and not handed out before by this process; the caller binds it soon after."""
    top = _ephemeral_low() - 1
    for _ in range(500):
        port = random.randint(_LOWEST, top) if top > _LOWEST else 0
        if port in _handed:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            port = s.getsockname()[1]
        _handed.add(port)
        return port
    raise RuntimeError(f"no free port on {host} between {_LOWEST} and {top}")


def wait_port(host: str, port: int, timeout: float = 15.0, proc: subprocess.Popen | None = None) -> None:
    """Until a TCP connect to host:port succeeds; fails early if `proc` (the server) exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {host}:{port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port}")
