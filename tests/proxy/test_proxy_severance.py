"""Closing Envoy's connections to a gone guest (services/proxy/severance.py): the netlink
SOCK_DESTROY against real sockets on loopback, and which addresses become due when. The SDK's
view of it through a real Envoy and envd is in test_proxy_sdk.py."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from services.proxy.routes import Route, RouteState, RouteTable
from services.proxy.settings import Endpoint
from services.proxy.severance import GoneGuest, Severance, abort_connections

pytestmark = pytest.mark.timeout(60)

GUEST = "127.0.0.91"  # any 127/8 address is local; this one is used by nothing else here


def _listener() -> socket.socket:
    srv = socket.socket()
    srv.bind((GUEST, 0))
    srv.listen(8)
    srv.settimeout(10)
    return srv


@pytest.mark.skipif(os.geteuid() != 0, reason="SOCK_DESTROY needs CAP_NET_ADMIN")
def test_abort_closes_only_the_owners_connections_to_that_address():
    """Every port of the guest address (user services die with the VM too), only our process's."""
    srv = _listener()
    port = srv.getsockname()[1]
    other = _listener()
    mine = socket.create_connection((GUEST, port), source_address=("127.0.0.1", 0))
    mine_peer, _ = srv.accept()
    # Another process's connection to the same guest stays; all of ours to the guest go.
    child = subprocess.Popen([sys.executable, "-c", (
        "import socket,sys\n"
        f"c = socket.create_connection(({GUEST!r}, {port}))\n"
        "c.sendall(b'up\\n')\n"
        "print(c.recv(100).decode(), flush=True)\n")], stdout=subprocess.PIPE, text=True)
    child_peer, _ = srv.accept()
    assert child_peer.recv(3) == b"up\n"
    elsewhere = socket.create_connection((GUEST, other.getsockname()[1]))
    other_peer, _ = other.accept()
    try:
        assert abort_connections(GUEST, os.getpid()) == 2
        for closed in (mine, elsewhere):
            with pytest.raises(ConnectionAbortedError):
                closed.recv(10)
        mine_peer.settimeout(5)
        with pytest.raises(ConnectionResetError):  # the guest side got an RST
            mine_peer.recv(10)
        child_peer.sendall(b"still here")
        out, _ = child.communicate(timeout=10)
        assert out.strip() == "still here"
        assert abort_connections(GUEST, child.pid) == 0  # an owner that has exited holds nothing
        assert abort_connections(GUEST, os.getpid()) == 0
        assert abort_connections("2001:db8::91", os.getpid()) == 0  # the IPv6 dump works too
    finally:
        child.kill()
        for s in (srv, other, mine, mine_peer, child_peer, elsewhere, other_peer):
            s.close()


def _table(revision: int, *routes: Route) -> RouteTable:
    return RouteTable({r.sandbox_id: r for r in routes}, revision)


def test_severance_waits_for_the_ack_and_spares_addresses_routed_again():
    a = Route("a", RouteState.RUNNING, host_address="198.19.0.5")
    b = Route("b", RouteState.RUNNING, host_address="198.19.0.6")
    c = Route("c", RouteState.RUNNING, host_address="198.19.0.7")
    remote_c = Route("c", RouteState.RUNNING, remote=Endpoint("10.0.0.2", 3002), node_id="n2")
    s = Severance()
    s.routes_changed(_table(10, a, b, c))
    assert s.due(10) == []
    s.routes_changed(_table(11, b, c))  # a killed: route deleted
    s.routes_changed(_table(12, Route("b", RouteState.PAUSED, host_address="198.19.0.6"), c))  # b paused
    assert s.due(10) == []  # Envoy still serves the old routes: keep the connections
    assert s.due(11) == [GoneGuest("a", "198.19.0.5", 11)]
    assert s.due(11) == []  # once only
    # c moves to another node; then, before Envoy ACKs, b resumes on its old address.
    s.routes_changed(_table(13, Route("b", RouteState.PAUSED, host_address="198.19.0.6"),
                            remote_c))
    s.routes_changed(_table(14, b, remote_c))
    assert s.due(14) == [GoneGuest("c", "198.19.0.7", 13)]  # b's address is live again: spared
