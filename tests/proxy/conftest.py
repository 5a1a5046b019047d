"""Fixtures for the CubeProxy tests: real etcd (shared session fixture), real Envoy (through
cube-proxy), stand-in guests on 127.0.0.2/127.0.0.3, all on loopback."""

from __future__ import annotations

import json
import os
import ssl
import uuid

import aetcd
import httpx
import pytest

from cube_common.etcd import EtcdClient
from cube_common.keys import Keys
from cube_common.route_ack import wait_routes_applied
from testkit.proxy import Proxy, Upstream, route_json

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
    with Proxy(etcd_server.endpoint, prefix=f"/t-proxy-{uuid.uuid4().hex[:8]}").running() as p:
        yield p


@pytest.fixture
async def etcd_client(etcd_server):
    """The shared failover client the master and the proxy use (cube_common.etcd)."""
    client = EtcdClient([etcd_server.endpoint], timeout_s=10)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def etcd(etcd_client) -> aetcd.Client:
    """That client's channel, for tests that play another etcd user (leases, raw puts)."""
    return etcd_client.client


class Routes:
    """Writes routes the way the master does and waits for the proxies to serve them."""

    def __init__(self, etcd: EtcdClient, prefix: str):
        self.etcd = etcd
        self.keys = Keys(prefix)
        self.prefix = self.keys.root

    def key(self, sid: str) -> bytes:
        return self.keys.route(sid)

    async def _wait(self, rev: int, wait: bool) -> int:
        if wait:
            await wait_routes_applied(self.etcd, self.keys, rev, timeout=10)
        return rev

    async def put(self, sid: str, wait: bool = True, **kw) -> int:
        return await self.put_raw(sid, route_json(sid, **kw), wait)

    async def put_raw(self, sid: str, value: bytes, wait: bool = True) -> int:
        res = await self.etcd.put(self.key(sid), value)
        return await self._wait(res.header.revision, wait)

    async def delete(self, sid: str, wait: bool = True) -> int:
        res = await self.etcd.delete(self.key(sid))
        return await self._wait(res.header.revision if res is not None else 0, wait)

    async def delete_all_to(self, host: str) -> None:
        """Deletes every route to `host`: tests share one real envd, and the proxy keeps the
        connections to an address while any running route still names it."""
        prefix = self.keys.routes()
        for kv in await self.etcd.get_prefix(prefix):
            try:
                record = json.loads(kv.value)
            except ValueError:
                continue  # the malformed records of other tests
            if isinstance(record, dict) and record.get("hostAddress") == host:
                await self.delete(kv.key[len(prefix):].decode())


@pytest.fixture
async def routes(etcd_client, proxy):
    return Routes(etcd_client, proxy.prefix)


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
    from testkit.ports import free_port, wait_port

    class Agent(DevRoot):
        host = ENVD_HOST

        def _spawn(self) -> None:
            cmd = [sys.executable, "-m", "services.envd", "--root", self.root, "--host", self.host,
                   "--envd-port", str(self.envd_port), "--interpreter-port", str(self.interpreter_port),
                   "--kernel-python", self.kernel_python, "--tmpfs-tmp", *self.extra_args]
            assert self.log_path is not None  # the fixture always gives one
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
