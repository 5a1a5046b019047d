"""Fixtures for the CubeProxy tests: real etcd (shared session fixture), real Envoy (through
cube-proxy), stand-in guests on 127.0.0.2/127.0.0.3, all on loopback."""

from __future__ import annotations

import os
import ssl
import uuid

import aetcd
import httpx
import pytest

from services.proxy.ack import wait_routes_applied
from tests.proxy.harness import Proxy, Upstream, route_json

DOMAIN = "cube.localhost"


@pytest.fixture(scope="session")
def upstreams():
    ups = []
    try:
        for host in ("127.0.0.2", "127.0.0.3"):
            ups.append(Upstream(host).start())
        yield ups
    finally:
        for u in ups:
            u.stop()


@pytest.fixture(scope="session")
def proxy(etcd_server):
    p = Proxy(etcd_server.endpoint, prefix=f"/t-proxy-{uuid.uuid4().hex[:8]}")
    try:
        p.start()
        yield p
    finally:
        if p.proc is not None and p.proc.poll() is not None:
            print(f"\ncube-proxy exited early; log:\n{p.log_tail()}")
        p.destroy()


@pytest.fixture
async def etcd(etcd_server):
    client = aetcd.Client(port=etcd_server.client_port, timeout=10)
    try:
        yield client
    finally:
        await client.close()


class Routes:
    """Writes routes the way the master does and waits for the proxies to serve them."""

    def __init__(self, client: aetcd.Client, prefix: str):
        self.client = client
        self.prefix = prefix

    def key(self, sid: str) -> bytes:
        return f"{self.prefix}/routes/{sid}".encode()

    async def put(self, sid: str, wait: bool = True, **kw) -> int:
        rev = (await self.client.put(self.key(sid), route_json(sid, **kw))).header.revision
        if wait:
            await wait_routes_applied(self.client, rev, timeout=10, prefix=self.prefix)
        return rev

    async def put_raw(self, sid: str, value: bytes, wait: bool = True) -> int:
        rev = (await self.client.put(self.key(sid), value)).header.revision
        if wait:
            await wait_routes_applied(self.client, rev, timeout=10, prefix=self.prefix)
        return rev

    async def delete(self, sid: str, wait: bool = True) -> int:
        res = await self.client.delete(self.key(sid))
        rev = res.header.revision if res is not None else 0
        if wait:
            await wait_routes_applied(self.client, rev, timeout=10, prefix=self.prefix)
        return rev


@pytest.fixture
async def routes(etcd, proxy):
    return Routes(etcd, proxy.prefix)


def new_id() -> str:
    return "sb" + uuid.uuid4().hex[:14]


def tls_client(proxy: Proxy, http2: bool = False, **kw) -> httpx.Client:
    ctx = ssl.create_default_context(cafile=proxy.ca)
    return httpx.Client(verify=ctx, http2=http2, timeout=30, **kw)


def https_request(client: httpx.Client, proxy: Proxy, method: str, host: str, path: str, **kw) -> httpx.Response:
    """`curl --resolve host:port:127.0.0.1`: connect to loopback, Host and SNI = `host`."""
    headers = {"Host": host, **kw.pop("headers", {})}
    return client.request(method, f"https://127.0.0.1:{proxy.https_port}{path}", headers=headers,
                          extensions={"sni_hostname": host}, **kw)


def http_request(proxy: Proxy, method: str, path: str, host: str | None = None, **kw) -> httpx.Response:
    headers = dict(kw.pop("headers", {}))
    if host:
        headers["Host"] = host
    return httpx.request(method, proxy.http_url + path, headers=headers, timeout=30, **kw)


ENVD_HOST = "127.0.0.77"


@pytest.fixture(scope="session")
def envd_agent():
    """The repo's real guest agent on this host (throwaway overlay root), like a guest: envd on
    port 49983, but on its own loopback address so it never meets another envd on 127.0.0.1."""
    if os.geteuid() != 0:
        pytest.skip("envd needs root (overlay mount and chroot)")
    import subprocess
    import sys
    import tempfile

    from services.envd.devroot import REPO, DevRoot
    from tests.proxy.harness import wait_port
    from tests.support.ports import free_port

    class Agent(DevRoot):
        host = ENVD_HOST

        def _spawn(self) -> None:
            cmd = [sys.executable, "-m", "services.envd", "--root", self.root, "--host", self.host,
                   "--envd-port", str(self.envd_port), "--interpreter-port", str(self.interpreter_port),
                   "--kernel-python", self.kernel_python, "--tmpfs-tmp", *self.extra_args]
            with open(self.log_path, "ab") as out:
                self.proc = subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
                                             stdout=out, stderr=out)

        def _wait_ready(self, timeout: float) -> None:
            wait_port(self.host, self.envd_port, timeout, proc=self.proc)

    log = tempfile.NamedTemporaryFile(prefix="proxy-envd-", suffix=".log", delete=False)
    log.close()
    dev = Agent(envd_port=49983, interpreter_port=free_port(), log_path=log.name, extra_args=["--no-interpreter"])
    # DevRoot checks 127.0.0.1/::1 for free ports; ours is another address, so skip that check.
    import services.envd.devroot as devroot
    orig = devroot._port_free
    devroot._port_free = lambda port: True
    try:
        dev.start()
        yield dev
    except RuntimeError as e:
        pytest.skip(f"cannot run envd on {ENVD_HOST}:49983: {e}")
    finally:
        devroot._port_free = orig
        dev.stop()
        if os.environ.get("CUBE_KEEP_TEST_STATE"):
            print(f"\nenvd log: {log.name}")
        else:
            os.unlink(log.name)
