"""CubeProxy benchmark: route propagation, request latency and throughput through the proxy,
each against a baseline measured in the same run (the same stand-in guest reached directly).

Starts its own etcd, a stand-in guest (aiohttp, 127.0.0.2) and cube-proxy (real Envoy) on free
loopback ports. Progress goes to stderr; the LAST stdout line is one JSON object.

    .venv/bin/python bench/proxy_bench.py [--routes 60] [--requests 500] [--mb 300]

* propagation: etcd put of a new route → first 200 through Envoy (polling over a keep-alive
  connection), and put → `wait_routes_applied` returning (what the master waits for); `--routes`
  samples of each, on an empty table and again with `--preload` other routes present.
* latency: small GET (2-byte body), keep-alive HTTP/1.1 client; direct vs proxy (plain HTTP,
  header routing) vs proxy (HTTPS, host routing); batches interleaved.
* httpsPorts: the same small GET through the proxy (HTTPS) to a guest port it reaches over TLS,
  against its plain hop and against that TLS server reached directly.
* throughput: a streamed download with curl, direct vs proxy (plain HTTP and HTTPS).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import httpx  # noqa: E402

from bench.common import emit, machine, progress, summary  # noqa: E402
from cube_common.etcd import EtcdClient  # noqa: E402
from cube_common.keys import Keys  # noqa: E402
from cube_common.route_ack import wait_routes_applied  # noqa: E402
from testkit.etcd import EtcdServer  # noqa: E402
from testkit.proxy import Proxy, Upstream, route_json, self_signed_cert  # noqa: E402

DOMAIN = "cube.localhost"


async def propagation(proxy: Proxy, etcd_port: int, up: Upstream, n: int) -> tuple[list[float], list[float]]:
    client = EtcdClient([f"127.0.0.1:{etcd_port}"], timeout_s=10)
    keys = Keys(proxy.prefix)
    served, acked = [], []
    try:
        async with httpx.AsyncClient(base_url=proxy.http_url, timeout=10) as http:
            for i in range(2 * n):
                sid = "bench" + uuid.uuid4().hex[:12]
                headers = {"E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": str(up.port)}
                key = keys.route(sid)
                assert (await http.get("/small", headers=headers)).status_code == 502  # warm connection
                if i % 2 == 0:  # put → first successful request
                    t0 = time.perf_counter()
                    await client.put(key, route_json(sid, host=up.host))
                    while (await http.get("/small", headers=headers)).status_code != 200:
                        if time.perf_counter() - t0 > 10:
                            raise TimeoutError(f"route {sid} not served in 10 s")
                    served.append((time.perf_counter() - t0) * 1000)
                else:  # put → every proxy acked (the master's wait)
                    t0 = time.perf_counter()
                    rev = (await client.put(key, route_json(sid, host=up.host))).header.revision
                    await wait_routes_applied(client, keys, rev, timeout=10)
                    acked.append((time.perf_counter() - t0) * 1000)
                    assert (await http.get("/small", headers=headers)).status_code == 200
    finally:
        await client.close()
    return served, acked


def latency(proxy: Proxy, up: Upstream, sid: str, n: int) -> dict:
    direct = httpx.Client(base_url=f"http://{up.host}:{up.port}", timeout=10)
    via_http = httpx.Client(base_url=proxy.http_url, timeout=10,
                            headers={"E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": str(up.port)})
    name = f"{up.port}-{sid}.{DOMAIN}"
    via_https = httpx.Client(base_url=f"https://127.0.0.1:{proxy.https_port}", timeout=10,
                             verify=ssl.create_default_context(cafile=proxy.ca), headers={"Host": name})
    return _measure({"direct": (direct, {}), "proxy_http": (via_http, {}),
                     "proxy_https": (via_https, {"sni_hostname": name})}, n)


def tls_hop(proxy: Proxy, up: Upstream, sid: str, tls_up: Upstream, tls_sid: str, n: int) -> dict:
    """httpsPorts: the proxy's TLS hop to a guest server that speaks HTTPS itself, against the same
    proxy's plain hop and the TLS server reached directly (keep-alive throughout)."""
    def via(port: int, s: str) -> tuple[httpx.Client, dict]:
        name = f"{port}-{s}.{DOMAIN}"
        c = httpx.Client(base_url=f"https://127.0.0.1:{proxy.https_port}", timeout=10,
                         verify=ssl.create_default_context(cafile=proxy.ca), headers={"Host": name})
        return c, {"sni_hostname": name}

    direct = httpx.Client(base_url=f"https://{tls_up.host}:{tls_up.port}", timeout=10, verify=False)
    return _measure({"direct_tls": (direct, {}), "proxy_https_plain_hop": via(up.port, sid),
                     "proxy_https_tls_hop": via(tls_up.port, tls_sid)}, n)


def _measure(clients: dict[str, tuple[httpx.Client, dict]], n: int) -> dict:
    """Small GETs through each client, in interleaved batches of 50: a summary per client."""
    series: dict[str, list[float]] = {k: [] for k in clients}
    try:
        for c, ext in clients.values():  # connect and warm up
            for _ in range(20):
                assert c.get("/small", extensions=ext).status_code == 200
        batch = 50
        for _ in range(max(1, n // batch)):
            for name_, (c, ext) in clients.items():
                for _ in range(batch):
                    t0 = time.perf_counter()
                    r = c.get("/small", extensions=ext)
                    series[name_].append((time.perf_counter() - t0) * 1000)
                    assert r.status_code == 200
    finally:
        for c, _ in clients.values():
            c.close()
    return {k: summary(v, 3) for k, v in series.items()}


def curl_speed(url: str, extra: list[str]) -> float:
    out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{speed_download} %{size_download}", *extra, url],
                         capture_output=True, text=True, check=True, timeout=300).stdout.split()
    return float(out[0]) / 2**20


def throughput(proxy: Proxy, up: Upstream, sid: str, mb: int, rounds: int = 3) -> dict:
    name = f"{up.port}-{sid}.{DOMAIN}"
    path = f"/download?mb={mb}"
    cases = {
        "direct": (f"http://{up.host}:{up.port}{path}", []),
        "proxy_http": (proxy.http_url + path, ["-H", f"Host: {name}"]),
        "proxy_https_h1": (f"https://{name}:{proxy.https_port}{path}",
                           ["--http1.1", "--cacert", proxy.ca, "--resolve", f"{name}:{proxy.https_port}:127.0.0.1"]),
        "proxy_https_h2": (f"https://{name}:{proxy.https_port}{path}",
                           ["--http2", "--cacert", proxy.ca, "--resolve", f"{name}:{proxy.https_port}:127.0.0.1"]),
    }
    speeds: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(rounds):
        for k, (url, extra) in cases.items():
            speeds[k].append(curl_speed(url, extra))
    return {k: round(sorted(v)[len(v) // 2], 1) for k, v in speeds.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--routes", type=int, default=60)
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--mb", type=int, default=300)
    ap.add_argument("--preload", type=int, default=1000, help="routes present for the second propagation run")
    a = ap.parse_args()
    etcd = EtcdServer().start()
    up = Upstream("127.0.0.2").start()
    cert_dir = Path(tempfile.mkdtemp(prefix="cube-proxy-bench-"))
    tls_up = Upstream("127.0.0.2", tls=self_signed_cert(cert_dir)).start()  # a guest serving HTTPS
    proxy = Proxy(etcd.endpoint, prefix=f"/bench-{uuid.uuid4().hex[:6]}", node_id="bench",
                  extra=["--access-log", "errors", "--log-level", "WARNING"])
    try:
        t0 = time.monotonic()
        proxy.start()
        progress(f"proxy ready in {time.monotonic() - t0:.2f} s (state {proxy.state_dir})")
        progress(f"propagation: {a.routes} routes")
        served, acked = asyncio.run(propagation(proxy, etcd.client_port, up, a.routes))
        progress(f"propagation with {a.preload} more routes present")
        t0 = time.monotonic()
        asyncio.run(preload(etcd.client_port, proxy, up, a.preload))
        progress(f"  {a.preload} routes put and applied in {time.monotonic() - t0:.2f} s")
        served_big, acked_big = asyncio.run(propagation(proxy, etcd.client_port, up, a.routes))
        sid = "benchlat"
        asyncio.run(_put(etcd.client_port, proxy, sid, up))
        progress(f"latency: {a.requests} requests per path")
        lat = latency(proxy, up, sid, a.requests)
        tls_sid = "benchtls"
        asyncio.run(_put(etcd.client_port, proxy, tls_sid, tls_up, https_ports=(tls_up.port,)))
        progress(f"httpsPorts: {a.requests} requests per path")
        hop = tls_hop(proxy, up, sid, tls_up, tls_sid, a.requests)
        progress(f"throughput: {a.mb} MB downloads")
        thr = throughput(proxy, up, sid, a.mb)
        result = {
            "benchmark": "proxy",
            "propagation_put_to_served_ms": summary(served, 2),
            "propagation_put_to_ack_ms": summary(acked, 2),
            f"propagation_put_to_served_ms_with_{a.preload}_routes": summary(served_big, 2),
            f"propagation_put_to_ack_ms_with_{a.preload}_routes": summary(acked_big, 2),
            "latency_small_get_ms": lat,
            "latency_overhead_p50_ms": {
                "proxy_http": round(lat["proxy_http"]["p50"] - lat["direct"]["p50"], 3),
                "proxy_https": round(lat["proxy_https"]["p50"] - lat["direct"]["p50"], 3)},
            "https_ports_small_get_ms": hop,
            "https_ports_tls_hop_over_plain_hop_p50": round(
                hop["proxy_https_tls_hop"]["p50"] / hop["proxy_https_plain_hop"]["p50"], 2),
            "throughput_download_MBps": thr,
            "throughput_ratio_proxy_http_to_direct": round(thr["proxy_http"] / thr["direct"], 2),
            "machine": machine(),
        }
        emit(result)
    finally:
        proxy.destroy()
        tls_up.stop()
        up.stop()
        shutil.rmtree(cert_dir, ignore_errors=True)
        etcd.destroy()


async def preload(port: int, proxy: Proxy, up: Upstream, n: int) -> None:
    """`n` more routes in one burst (the proxy coalesces them), waited for."""
    c = EtcdClient([f"127.0.0.1:{port}"], timeout_s=10)
    keys = Keys(proxy.prefix)
    try:
        rev = 0
        for i in range(n):
            sid = f"bg{i:05d}"
            rev = (await c.put(keys.route(sid), route_json(sid, host=up.host))).header.revision
        await wait_routes_applied(c, keys, rev, timeout=60)
    finally:
        await c.close()


async def _put(port: int, proxy: Proxy, sid: str, up: Upstream, https_ports: tuple[int, ...] = ()) -> None:
    c = EtcdClient([f"127.0.0.1:{port}"], timeout_s=10)
    keys = Keys(proxy.prefix)
    try:
        rev = (await c.put(keys.route(sid), route_json(sid, host=up.host, https_ports=https_ports))).header.revision
        await wait_routes_applied(c, keys, rev, timeout=10)
    finally:
        await c.close()


if __name__ == "__main__":
    main()
