"""CubeVS benchmark: sandbox network setup from the warm pool, and the datapath's cost on TCP.

    python bench/vs_bench.py [--setup-n 40] [--rr-n 2000] [--bulk-seconds 3] [--rounds 3]

Everything runs inside namespaces this script creates (testkit/vs_lab.py) and removes:
- setup_ms: gRPC Allocate round trip (unix socket) with a warm pool: tap taken, address, route,
  neighbour entry, policy maps and binding written. When it returns the sandbox is reachable
  as soon as its NIC is up (checked once at the end with a guest on a tap).
- rr_latency_us / throughput_mbit_s: the same guest stand-in (tapbridge) and the same TCP
  traffic to the "internet" host, once through a CubeVS tap (policy lookups, ARP responder,
  1:1 NAT on the tap, NAPT on the uplink) and once through a plain tap with no programs
  (the node has an address on it and plainly routes the guest's own subnet). Rounds alternate.

Progress goes to stderr; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from sdk.gen.cube.v1 import network_pb2, vs_pb2, vs_pb2_grpc  # noqa: E402
from services.vs.guest import GuestNetwork  # noqa: E402
from services.vs.network import NodeNetwork  # noqa: E402
from services.vs.server import serve  # noqa: E402
from services.vs.settings import Settings  # noqa: E402
from testkit.vs_lab import INET_IP, NODE_INET_IP, Lab, ns_socket, sh, tcp_reachable  # noqa: E402

PLAIN_GUEST = GuestNetwork(ip="100.100.0.2", prefix_len=30, gateway_ip="100.100.0.1", mac="02:fc:00:00:01:02",
                           gateway_mac="02:fc:00:00:01:01")


def say(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


class BulkServer:
    """Port 7001: sink (counts bytes until EOF, replies the count). Port 7002: source (sends
    for the number of seconds the client asks, then closes). Port 7000: streaming echo."""

    def __init__(self, ns: str):
        self.socks = []
        for port, fn in ((7000, self._echo), (7001, self._sink), (7002, self._source)):
            s = ns_socket(ns)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", port))
            s.listen(16)
            self.socks.append(s)
            threading.Thread(target=self._accept, args=(s, fn), daemon=True).start()

    def _accept(self, s, fn) -> None:
        while True:
            try:
                c, _ = s.accept()
            except OSError:
                return
            threading.Thread(target=fn, args=(c,), daemon=True).start()

    @staticmethod
    def _echo(c) -> None:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with c:
            while b := c.recv(65536):
                c.sendall(b)

    @staticmethod
    def _sink(c) -> None:
        n = 0
        with c:
            while b := c.recv(1 << 20):
                n += len(b)
            c.sendall(str(n).encode())

    @staticmethod
    def _source(c) -> None:
        buf = b"\0" * (1 << 18)
        with c:
            secs = float(c.recv(64).decode())
            end = time.monotonic() + secs
            try:
                while time.monotonic() < end:
                    c.sendall(buf)
            except OSError:
                pass

    def close(self) -> None:
        for s in self.socks:
            s.close()


def rr_latency(ns: str, n: int, warmup: int = 10) -> list[float]:
    s = ns_socket(ns)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.settimeout(5)
    s.connect((INET_IP, 7000))
    msg = b"x" * 64
    out = []
    try:
        for i in range(n + warmup):
            t0 = time.perf_counter()
            s.sendall(msg)
            got = 0
            while got < len(msg):
                got += len(s.recv(4096))
            if i >= warmup:
                out.append((time.perf_counter() - t0) * 1e6)
    finally:
        s.close()
    return out


def upload_mbit(ns: str, seconds: float) -> float:
    s = ns_socket(ns)
    s.settimeout(30)
    s.connect((INET_IP, 7001))
    buf = b"\0" * (1 << 18)
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        s.sendall(buf)
    s.shutdown(socket.SHUT_WR)
    n = int(s.recv(64).decode())
    elapsed = time.monotonic() - t0
    s.close()
    return n * 8 / elapsed / 1e6


def download_mbit(ns: str, seconds: float) -> float:
    s = ns_socket(ns)
    s.settimeout(30)
    s.connect((INET_IP, 7002))
    s.sendall(str(seconds).encode())
    n = 0
    t0 = time.monotonic()
    while b := s.recv(1 << 20):
        n += len(b)
    elapsed = time.monotonic() - t0
    s.close()
    return n * 8 / elapsed / 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--setup-n", type=int, default=40)
    ap.add_argument("--rr-n", type=int, default=2000)
    ap.add_argument("--bulk-seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("vs_bench needs root (network namespaces, eBPF)")

    lab = Lab().build()
    node: NodeNetwork | None = None
    server: grpc.Server | None = None
    channel: grpc.Channel | None = None
    tmp = tempfile.TemporaryDirectory()
    try:
        settings = Settings(state_dir=Path(tmp.name), pin_subdir=f"cube-bench-{lab.id}/vs", netns=lab.node,
                            uplinks=lab.uplinks, pool_size=4).validate()
        node = NodeNetwork(settings)
        node.start()
        sock = f"unix://{tmp.name}/vs.sock"
        server = serve(node, sock, max_workers=4)
        channel = grpc.insecure_channel(sock)
        stub = vs_pb2_grpc.CubeVSStub(channel)
        policy = network_pb2.NetworkPolicy(deny_out=["198.51.100.0/24"], exposed_ports=[49983, 49999])

        # -- setup latency from a warm pool -------------------------------------------------
        say(f"setup: {args.setup_n} Allocate calls from a warm pool")
        setup = []
        for i in range(args.setup_n):
            deadline = time.monotonic() + 30
            while len(node.pool.free()) < settings.pool_size and time.monotonic() < deadline:
                time.sleep(0.01)  # let the background refill finish: measure the warm path
            t0 = time.perf_counter()
            r = stub.Allocate(vs_pb2.AllocateRequest(sandbox_id=f"bench-{i}", policy=policy), timeout=30)
            setup.append((time.perf_counter() - t0) * 1e3)
            if not r.warm:
                say("  warning: allocation was not from the warm pool")
            if i < args.setup_n - 1:
                stub.Release(vs_pb2.ReleaseRequest(sandbox_id=f"bench-{i}"), timeout=30)
        last = node.get(f"bench-{args.setup_n - 1}")

        # -- traffic: datapath tap vs plain tap ----------------------------------------------
        bulk = BulkServer(lab.ns("inet"))
        dp_guest = lab.guest(last.tap, last.guest)
        assert tcp_reachable(dp_guest.ns, INET_IP, 7000), "datapath guest cannot reach the internet host"

        sh("ip", "-n", lab.node, "tuntap", "add", "dev", "plain0", "mode", "tap")
        sh("ip", "-n", lab.node, "addr", "add", f"{PLAIN_GUEST.gateway_ip}/30", "dev", "plain0")
        sh("ip", "-n", lab.node, "link", "set", "plain0", "address", PLAIN_GUEST.gateway_mac, "up")
        sh("ip", "-n", lab.ns("inet"), "route", "add", "100.100.0.0/30", "via", NODE_INET_IP)
        plain_guest = lab.guest("plain0", PLAIN_GUEST)
        assert tcp_reachable(plain_guest.ns, INET_IP, 7000), "plain guest cannot reach the internet host"

        rr: dict[str, list[float]] = {"datapath": [], "plain_tap": []}
        up: dict[str, list[float]] = {"datapath": [], "plain_tap": []}
        down: dict[str, list[float]] = {"datapath": [], "plain_tap": []}
        paths = {"datapath": dp_guest.ns, "plain_tap": plain_guest.ns}
        # Latency: small alternating batches, so machine noise (QEMU beside us) hits both alike.
        for batch in range(max(1, args.rr_n // 100)):
            order = ("datapath", "plain_tap") if batch % 2 == 0 else ("plain_tap", "datapath")
            for name in order:
                rr[name] += rr_latency(paths[name], 100)
        say(f"rr: datapath p50 {pct(rr['datapath'], 50):.0f} us, plain tap p50 {pct(rr['plain_tap'], 50):.0f} us")
        for rnd in range(args.rounds):
            order = ("datapath", "plain_tap") if rnd % 2 == 0 else ("plain_tap", "datapath")
            for name in order:
                ns = paths[name]
                up[name].append(upload_mbit(ns, args.bulk_seconds))
                down[name].append(download_mbit(ns, args.bulk_seconds))
                say(f"round {rnd + 1} {name}: up {up[name][-1]:.0f} Mbit/s, down {down[name][-1]:.0f} Mbit/s")
        bulk.close()
        stats = dict(node.stats([last.sandbox_id]))[last.sandbox_id]

        def lat(name):
            return {"p50": round(pct(rr[name], 50), 1), "p99": round(pct(rr[name], 99), 1), "n": len(rr[name])}

        def tput(name):
            return {"upload": round(statistics.median(up[name]), 1),
                    "download": round(statistics.median(down[name]), 1)}

        result = {
            "setup_ms": {"p50": round(pct(setup, 50), 2), "p99": round(pct(setup, 99), 2), "n": len(setup)},
            "rr_latency_us": {
                "datapath": lat("datapath"), "plain_tap": lat("plain_tap"),
                "ratio_p50": round(pct(rr["datapath"], 50) / pct(rr["plain_tap"], 50), 3),
                "ratio_p99": round(pct(rr["datapath"], 99) / pct(rr["plain_tap"], 99), 3),
            },
            "throughput_mbit_s": {
                "datapath": tput("datapath"), "plain_tap": tput("plain_tap"),
                "ratio_upload": round(statistics.median(up["datapath"]) / statistics.median(up["plain_tap"]), 3),
                "ratio_download": round(statistics.median(down["datapath"]) / statistics.median(down["plain_tap"]), 3),
            },
            "datapath_drops": stats.drops,
            "notes": "guest side is a netns behind a userspace frame copier (testkit/tapbridge.py), "
                     "the same for both paths",
            "machine": {"cpus": os.cpu_count(), "kernel": platform.release()},
        }
        print(json.dumps(result), flush=True)
    finally:
        if channel:
            channel.close()
        if server:
            server.stop(grace=1).wait()
        if node:
            node.teardown()
        lab.close()
        tmp.cleanup()


if __name__ == "__main__":
    main()
