"""cube_common.netns: running code in a named network namespace without moving the caller."""
from __future__ import annotations

import os
import secrets
import socket
import subprocess
import threading

import pytest

from cube_common import netns


def _current() -> str:
    return os.readlink("/proc/thread-self/ns/net")


@pytest.fixture
def ns():
    if os.geteuid() != 0:
        pytest.skip("creating a network namespace needs root")
    name = f"cube-t-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    yield name
    subprocess.run(["ip", "netns", "del", name], check=False)


def test_none_runs_right_here():
    assert netns.call_in(None, threading.get_ident) == threading.get_ident()


def test_a_missing_namespace_is_reported_before_anything_runs():
    ran: list[int] = []
    with pytest.raises(netns.NamespaceNotFound, match="does not exist") as e:
        netns.call_in("cube-no-such-ns", ran.append, 1)
    assert isinstance(e.value, FileNotFoundError) and ran == []


def test_runs_inside_and_leaves_the_caller_where_it_was(ns):
    before = _current()
    inside = netns.call_in(ns, _current)
    assert inside != before and _current() == before
    assert netns.call_in(ns, _current) == inside  # the same namespace every time


def test_errors_come_back_to_the_caller(ns):
    def fail() -> None:
        raise ValueError("from inside")

    with pytest.raises(ValueError, match="from inside"):
        netns.call_in(ns, fail)


def test_a_socket_keeps_its_namespace(ns):
    # Only the namespace's own loopback exists (down): connecting from there is refused, while the
    # same address works here.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    try:
        s = netns.socket_in(ns)
        with s, pytest.raises(OSError):
            s.settimeout(2)
            s.connect(listener.getsockname())
        with socket.create_connection(listener.getsockname(), timeout=2):
            pass
    finally:
        listener.close()


def test_interfaces_and_sysctls_are_the_namespaces(ns):
    assert netns.interface_exists(ns, "lo")
    assert not netns.interface_exists(ns, "cube-nosuch0")
    netns.write_sysctl(ns, "net.ipv4.ip_forward", "1")

    def read() -> str:
        with open("/proc/sys/net/ipv4/ip_forward") as f:
            return f.read().strip()

    assert netns.call_in(ns, read) == "1"
