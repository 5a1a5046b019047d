"""Ending Envoy's connections to a guest that is gone, the way E2B's orchestrator drops a
sandbox's proxy connections when it removes the sandbox.

Why: a killed, paused or moved sandbox's VM disappears without a FIN or RST, so an upstream
connection to it stays ESTABLISHED until an idle timeout of an hour, and a client in the middle
of a stream (a running `commands.run`, a watch) waits for its own timeout. Closing Envoy's
sockets to the old address makes Envoy reset the client's stream at once; the SDK treats a reset
as a transport failure, probes `/health`, gets the proxy's `502 ... was not found` (the route is
already gone) and raises `SandboxNotRunningException` ("... killed or reached its end of life
while the request was in flight").

Invariants:

* A sandbox's address is released only after Envoy has ACKed a route configuration without it
  (``Severance.due``), so the client's health probe meets the new routes, never the old guest.
* Only sockets of our own Envoy process are closed (matched by inode through /proc/<pid>/fd),
  never another program's connection to the same address.
* An address that a running local route names again by then (a resume on the same address, or a
  test pointing several sandboxes at one host) is left alone: its connections may be live.
* The closing is SOCK_DESTROY over sock_diag netlink (as `ss -K` does): it needs CAP_NET_ADMIN
  and a kernel with CONFIG_INET_DIAG_DESTROY. Without them connections end as before (idle
  timeout); that is logged once.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import struct
from dataclasses import dataclass, field

from .routes import RouteState, RouteTable

log = logging.getLogger("cube.proxy.severance")

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
SOCK_DESTROY = 21
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLMSG_ERROR = 0x2
NLMSG_DONE = 0x3

_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_REQ = struct.Struct("=BBBxI")  # inet_diag_req_v2 head: family, protocol, extensions, states
_SOCKID_LEN = 48  # inet_diag_sockid: sport, dport, src[16], dst[16], interface, cookie[8]
_DST = struct.Struct("!16s")
_DST_OFFSET = 4 + 4 + 16  # in inet_diag_msg: family/state/timer/retrans, ports, src
_INODE = struct.Struct("=I")
_INODE_OFFSET = 4 + _SOCKID_LEN + 16  # after expires, rqueue, wqueue, uid
_TCP_LISTEN, _TCP_TIME_WAIT, _TCP_CLOSE = 10, 6, 7
# Every TCP state with a process's socket behind it, except listeners.
_CONNECTED_STATES = ((1 << 12) - 1) & ~((1 << _TCP_LISTEN) | (1 << _TCP_TIME_WAIT) | (1 << _TCP_CLOSE))


def _socket_inodes(pid: int) -> set[int]:
    """The sockets process `pid` holds (none once it has exited: its connections went with it)."""
    inodes: set[int] = set()
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except FileNotFoundError:
        return inodes
    for name in names:
        try:
            target = os.readlink(f"{fd_dir}/{name}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _messages(nl: socket.socket, seq: int):
    """(type, payload) of the answers to request `seq`, until the dump ends or an error/ack."""
    while True:
        data = nl.recv(1 << 16)
        off = 0
        while off + _NLMSGHDR.size <= len(data):
            length, mtype, _flags, mseq, _pid = _NLMSGHDR.unpack_from(data, off)
            payload = data[off + _NLMSGHDR.size: off + length]
            off += (length + 3) & ~3
            if mseq != seq:
                continue
            yield mtype, payload
            if mtype in (NLMSG_DONE, NLMSG_ERROR):
                return


def _request(nl: socket.socket, seq: int, mtype: int, flags: int, family: int, states: int, sockid: bytes) -> None:
    body = _REQ.pack(family, socket.IPPROTO_TCP, 0, states) + sockid
    nl.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(body), mtype, flags, seq, 0) + body)


def abort_connections(address: str, owner_pid: int) -> int:
    """Closes the TCP connections of process `owner_pid` to `address` (any port) with
    ECONNABORTED; the peer gets an RST where it can still be reached. Returns how many were
    closed. Raises OSError when the kernel refuses (EPERM, EOPNOTSUPP). Blocking."""
    ip = ipaddress.ip_address(address)
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    dst = _DST.pack(ip.packed)
    owned = _socket_inodes(owner_pid)
    if not owned:
        return 0
    closed = 0
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG) as nl:
        _request(nl, 1, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, family, _CONNECTED_STATES,
                 bytes(_SOCKID_LEN))
        victims = []
        for mtype, payload in _messages(nl, 1):
            if mtype == NLMSG_ERROR:
                err = -struct.unpack_from("=i", payload)[0]
                raise OSError(err, f"sock_diag dump: {os.strerror(err)}")
            if mtype != SOCK_DIAG_BY_FAMILY or len(payload) < _INODE_OFFSET + _INODE.size:
                continue
            if payload[_DST_OFFSET:_DST_OFFSET + 16] != dst:
                continue
            if _INODE.unpack_from(payload, _INODE_OFFSET)[0] in owned:
                victims.append(payload[4:4 + _SOCKID_LEN])  # the exact id, cookie included
        for seq, sockid in enumerate(victims, start=2):
            _request(nl, seq, SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, family, 0xFFFFFFFF, sockid)
            for mtype, payload in _messages(nl, seq):
                if mtype == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", payload)[0]
                    if err == 0:
                        closed += 1
                    elif err != errno.ENOENT:  # ENOENT: it closed by itself meanwhile
                        raise OSError(err, f"SOCK_DESTROY: {os.strerror(err)}")
    return closed


@dataclass(frozen=True)
class GoneGuest:
    sandbox_id: str
    address: str
    revision: int  # the route table revision that no longer routes to it


@dataclass
class Severance:
    """Which guest addresses stopped being routed, and when their connections may be closed."""

    _live: dict[str, str] = field(default_factory=dict)  # address -> sandbox id
    _pending: list[GoneGuest] = field(default_factory=list)

    @staticmethod
    def _routed(table: RouteTable) -> dict[str, str]:
        return {r.host_address: r.sandbox_id for r in table.routes.values()
                if r.is_local and r.state is RouteState.RUNNING and r.host_address}

    def routes_changed(self, table: RouteTable) -> None:
        """Notes the addresses this table no longer routes to (deleted, paused, moved)."""
        live = self._routed(table)
        for address, sid in self._live.items():
            if address not in live:
                self._pending.append(GoneGuest(sid, address, table.revision))
        self._live = live

    def due(self, applied_revision: int) -> list[GoneGuest]:
        """The gone guests whose removal Envoy now serves, minus addresses routed again."""
        ready = [g for g in self._pending if g.revision <= applied_revision]
        if not ready:
            return []
        self._pending = [g for g in self._pending if g.revision > applied_revision]
        return [g for g in ready if g.address not in self._live]
