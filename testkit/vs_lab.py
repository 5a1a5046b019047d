"""A disposable network lab for CubeVS tests and benchmarks: namespaces, veths, servers, guests.

Topology (every namespace is created here, named ``cvt<id>-*``, and deleted on close):

    [inet 203.0.113.10] --veth-- [node] --veth-- [meta 169.254.169.254]
                                   |  \\--veth-- [lan 10.77.0.10]
                                 taps (CubeVS) -- tapbridge -- [guest netns per sandbox]

The node namespace runs the datapath; its default route points at the "internet" host, and the
metadata and LAN hosts hang off their own links. No traffic ever leaves these namespaces: every
address used here is either in a namespace created here or is the documentation range
203.0.113.0/24 that only the inet namespace owns.
`Lab.close()` also stops the echo servers and the tapbridge processes it started.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from cube_common.netns import call_in
from cube_common.procs import stop_process
from services.vs.guest import GuestNetwork
from testkit import REPO

INET_IP, NODE_INET_IP = "203.0.113.10", "203.0.113.1"
META_IP, NODE_META_IP = "169.254.169.254", "169.254.169.1"
LAN_IP, NODE_LAN_IP = "10.77.0.10", "10.77.0.1"


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, capture_output=True, text=True)


def ns_exists(name: str) -> bool:
    return os.path.exists(f"/run/netns/{name}")


def links(ns: str) -> list[str]:
    out = sh("ip", "-n", ns, "-o", "link", "show").stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]


# -- sockets inside namespaces -------------------------------------------------------------

def ns_socket(ns: str, family=socket.AF_INET, type_=socket.SOCK_STREAM) -> socket.socket:
    """A socket that lives in ``ns`` (created by a thread switched into it)."""
    return call_in(ns, socket.socket, family, type_)


def tcp_request(ns: str, host: str, port: int, payload: bytes = b"ping", timeout: float = 2.0,
                bind: str | None = None) -> bytes:
    """Connect, send, half-close, read everything. Raises OSError/TimeoutError on failure."""
    s = ns_socket(ns)
    try:
        s.settimeout(timeout)
        if bind:
            s.bind((bind, 0))
        s.connect((host, port))
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
        return b"".join(chunks)
    finally:
        s.close()


def tcp_reachable(ns: str, host: str, port: int, timeout: float = 1.0, bind: str | None = None) -> bool:
    try:
        return tcp_request(ns, host, port, b"probe", timeout=timeout, bind=bind).endswith(b"probe")
    except OSError:
        return False


def udp_request(ns: str, host: str, port: int, payload: bytes = b"ping", timeout: float = 1.0) -> bytes | None:
    s = ns_socket(ns, type_=socket.SOCK_DGRAM)
    try:
        s.settimeout(timeout)
        s.sendto(payload, (host, port))
        return s.recvfrom(65536)[0]
    except OSError:
        return None
    finally:
        s.close()


def _icmp_checksum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    s = sum(int.from_bytes(b[i:i + 2], "big") for i in range(0, len(b), 2))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def icmp_echo(ns: str, host: str, ident: int = 0x4242, timeout: float = 1.5) -> bool:
    """One ICMP echo request from ``ns`` (raw socket; there is no ping binary); True on reply."""
    s = call_in(ns, socket.socket, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    try:
        payload = b"cube-vs-echo"
        hdr = bytes([8, 0, 0, 0]) + ident.to_bytes(2, "big") + (1).to_bytes(2, "big")
        csum = _icmp_checksum(hdr + payload)
        pkt = hdr[:2] + csum.to_bytes(2, "big") + hdr[4:] + payload
        s.sendto(pkt, (host, 0))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data, peer = s.recvfrom(2048)
            except OSError:
                return False
            icmp = data[(data[0] & 0x0F) * 4:]
            if peer[0] == host and icmp[0] == 0 and int.from_bytes(icmp[4:6], "big") == ident:
                return True
        return False
    finally:
        s.close()


class Server:
    """A TCP (and UDP) echo server in a namespace. Replies ``<name>|<peer ip>:<peer port>|<data>``
    so a test can see who answered and which source address the server saw."""

    def __init__(self, ns: str, addr: str, port: int, name: str, udp: bool = True, raw_echo: bool = False):
        self.name, self.port = name, port
        self.raw_echo = raw_echo
        self.peers: list[tuple[str, int]] = []
        self.mss: list[int] = []  # TCP_MAXSEG of each accepted connection: the MSS the peer announced
        self._stop = threading.Event()
        self._tcp = ns_socket(ns)
        self._tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._tcp.bind((addr, port))
        self._tcp.listen(64)
        self._tcp.settimeout(0.2)
        self._threads = [threading.Thread(target=self._serve_tcp, daemon=True)]
        self._udp: socket.socket | None = None
        if udp:
            self._udp = ns_socket(ns, type_=socket.SOCK_DGRAM)
            self._udp.bind((addr, port))
            self._udp.settimeout(0.2)
            self._threads.append(threading.Thread(target=self._serve_udp, args=(self._udp,), daemon=True))
        for t in self._threads:
            t.start()

    def _reply(self, peer, data: bytes) -> bytes:
        if self.raw_echo:
            return data
        return f"{self.name}|{peer[0]}:{peer[1]}|".encode() + data

    def _serve_tcp(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self._tcp.accept()
            except OSError:
                continue
            self.peers.append(peer)
            self.mss.append(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG))
            threading.Thread(target=self._handle, args=(conn, peer), daemon=True).start()

    def _handle(self, conn: socket.socket, peer) -> None:
        try:
            conn.settimeout(30)
            if self.raw_echo:  # streaming echo (latency/throughput)
                while True:
                    b = conn.recv(262144)
                    if not b:
                        break
                    conn.sendall(b)
                return
            chunks = []
            while True:
                b = conn.recv(65536)
                if not b:
                    break
                chunks.append(b)
            conn.sendall(self._reply(peer, b"".join(chunks)))
        except OSError:
            pass
        finally:
            conn.close()

    def _serve_udp(self, udp: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                data, peer = udp.recvfrom(65536)
            except OSError:
                continue
            self.peers.append(peer)
            try:
                udp.sendto(self._reply(peer, data), peer)
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=2)
        self._tcp.close()
        if self._udp:
            self._udp.close()


# -- the guest side ------------------------------------------------------------------------

@dataclass
class GuestEndpoint:
    """The sandbox side of a tap: a guest netns with the guest identity, fed by a tapbridge
    process that holds the node tap's fd (what QEMU will do once VM-backed tests exist)."""

    ns: str
    tap: str
    guest: GuestNetwork
    proc: subprocess.Popen | None = None

    @property
    def ip(self) -> str:
        return self.guest.ip

    def close(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 5, reap_timeout=5)
        if ns_exists(self.ns):
            sh("ip", "netns", "del", self.ns, check=False)


def start_guest(node_ns: str, tap: str, ns: str, guest: GuestNetwork, offload: bool = True,
                timeout: float = 20.0) -> GuestEndpoint:
    sh("ip", "netns", "add", ns)
    ep = GuestEndpoint(ns=ns, tap=tap, guest=guest)
    try:
        cmd = [sys.executable, "-m", "testkit.tapbridge", "--node-ns", node_ns, "--tap", tap, "--guest-ns", ns,
               "--ip", guest.ip, "--prefix", str(guest.prefix_len), "--gateway", guest.gateway_ip, "--mac", guest.mac]
        if not offload:
            cmd.append("--no-offload")
        ep.proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        stdout = ep.proc.stdout
        assert stdout is not None  # stdout=PIPE
        deadline = time.monotonic() + timeout
        line = ""
        # readline blocks; the bridge prints promptly or dies (then readline returns "").
        while time.monotonic() < deadline:
            line = stdout.readline()
            if line.strip() == "ready" or not line:
                break
        if line.strip() != "ready":
            raise RuntimeError(f"tapbridge for {tap} did not come up (exit {ep.proc.poll()})")
        return ep
    except BaseException:
        ep.close()
        raise


# -- the lab ---------------------------------------------------------------------------------

@dataclass
class Lab:
    id: str = field(default_factory=lambda: secrets.token_hex(3))
    namespaces: list[str] = field(default_factory=list)
    servers: list[Server] = field(default_factory=list)
    guests: list[GuestEndpoint] = field(default_factory=list)

    def ns(self, role: str) -> str:
        return f"cvt{self.id}-{role}"

    @property
    def node(self) -> str:
        return self.ns("node")

    @property
    def uplinks(self) -> tuple[str, ...]:
        return ("up-inet", "up-meta", "up-lan")

    def _add_ns(self, role: str) -> str:
        name = self.ns(role)
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def _link(self, host_role: str, node_dev: str, node_ip: str, host_ip: str, prefix: int) -> str:
        host = self._add_ns(host_role)
        sh("ip", "-n", self.node, "link", "add", node_dev, "type", "veth", "peer", "name", "eth0", "netns", host)
        sh("ip", "-n", self.node, "addr", "add", f"{node_ip}/{prefix}", "dev", node_dev)
        sh("ip", "-n", self.node, "link", "set", node_dev, "up")
        sh("ip", "-n", host, "addr", "add", f"{host_ip}/{prefix}", "dev", "eth0")
        sh("ip", "-n", host, "link", "set", "eth0", "up")
        return host

    def build(self, with_hosts: bool = True) -> Lab:
        self._add_ns("node")
        if with_hosts:
            self._link("inet", "up-inet", NODE_INET_IP, INET_IP, 24)
            self._link("meta", "up-meta", NODE_META_IP, META_IP, 24)
            self._link("lan", "up-lan", NODE_LAN_IP, LAN_IP, 24)
            sh("ip", "-n", self.node, "route", "add", "default", "via", INET_IP)
        return self

    def server(self, role: str, addr: str, port: int, name: str | None = None, **kw) -> Server:
        srv = Server(self.ns(role), addr, port, name or role, **kw)
        self.servers.append(srv)
        return srv

    def guest(self, tap: str, guest: GuestNetwork | None = None, offload: bool = True) -> GuestEndpoint:
        n = len(self.guests)
        ep = start_guest(self.node, tap, self.ns(f"g{n}"), guest or GuestNetwork(), offload=offload)
        self.guests.append(ep)
        return ep

    def close_guest(self, ep: GuestEndpoint) -> None:
        ep.close()
        if ep in self.guests:
            self.guests.remove(ep)

    def close(self) -> None:
        for s in self.servers:
            s.close()
        for g in self.guests:
            g.close()
        for name in reversed(self.namespaces):
            sh("ip", "netns", "del", name, check=False)
