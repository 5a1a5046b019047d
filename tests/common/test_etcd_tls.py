"""etcd with client-certificate auth (testkit's EtcdServer with a deploy.pki root) and the shared
etcd client over mutual TLS: who gets in, who is refused, and that refusal is EtcdUnavailable in time."""
from __future__ import annotations

import asyncio
import base64
import shutil
import ssl
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aetcd.rpc
import grpc
import httpx
import pytest

from cube_common import mtls
from cube_common.etcd import EtcdClient, EtcdUnavailable
from cube_common.mtls import Role, TlsFiles
from deploy.pki import node_dirs
from testkit.etcd import EtcdServer, gateway

TIMEOUT_S = 1.0
# EtcdClient's promise (cube_common/etcd.py): an answer or EtcdUnavailable within timeout_s + 0.5 s;
# the rest is slack for a loaded machine.
WITHIN_S = TIMEOUT_S + 1.5


@pytest.fixture(scope="module")
def etcd(pki) -> Iterator[EtcdServer]:
    server = EtcdServer(pki=pki).start()
    yield server
    server.destroy()


def tls(root: Path, role: Role) -> TlsFiles:
    return TlsFiles(node_dirs(root)[role])


def foreign(pki: Path, other_pki: Path, tmp: Path) -> TlsFiles:
    """A master certificate from another CA, in a directory that trusts our CA: the client
    accepts etcd, so only etcd's check of the client certificate can refuse it."""
    d = tmp / "foreign"
    shutil.copytree(node_dirs(other_pki)[Role.MASTER], d)
    shutil.copy(tls(pki, Role.MASTER).ca, d / "ca.crt")
    return TlsFiles(d)


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def key() -> bytes:
    return f"/t-etcd-tls-{uuid.uuid4().hex[:8]}/k".encode()


async def test_a_client_with_a_cluster_certificate_can_put_get_watch_and_lease(etcd, pki):
    client = EtcdClient([etcd.endpoint], timeout_s=TIMEOUT_S, tls=tls(pki, Role.MASTER))
    k = key()
    try:
        await client.put(k, b"1")
        assert (await client.get(k)).value == b"1"
        async with client.using() as c:
            watch = await c.watch(k)
            await client.put(k, b"2")

            async def first_event():
                async for event in watch:
                    return event
            assert (await asyncio.wait_for(first_event(), 5)).kv.value == b"2"
            await watch.cancel()
        lease = await client.lease(30)
        await client.put(k, b"3", lease=lease)
        await client.refresh_lease(lease.id)
        await client.revoke_lease(lease.id)
        assert await client.get(k) is None  # the lease took the key with it
    finally:
        await client.close()
    # The same etcd, through the JSON gateway as the operator.
    assert etcd.http("/health")["health"] == "true"


@pytest.mark.parametrize("who", ["plaintext", "another CA", "another CA's certificate, our CA trusted"])
async def test_a_client_without_a_cluster_certificate_is_refused_in_time(etcd, pki, other_pki, tmp_path, who):
    material = {"plaintext": None,
                "another CA": tls(other_pki, Role.MASTER),
                "another CA's certificate, our CA trusted": foreign(pki, other_pki, tmp_path)}[who]
    client = EtcdClient([etcd.endpoint], timeout_s=TIMEOUT_S, tls=material)
    k = key()
    try:
        for _ in range(2):  # the first failure retires the channel; the fresh one fails the same way
            t0 = time.monotonic()
            with pytest.raises(EtcdUnavailable):
                await client.put(k, b"x")
            assert time.monotonic() - t0 < WITHIN_S
    finally:
        await client.close()
    assert "kvs" not in etcd.http("/v3/kv/range", {"key": _b64(k)})


async def _fake_etcd(server_tls: TlsFiles, ranges: list[bytes]) -> tuple[grpc.aio.Server, str]:
    """A gRPC server answering etcd's Range (empty) and noting each call, with ``server_tls``."""
    async def range_(request: bytes, context) -> bytes:
        ranges.append(request)
        return aetcd.rpc.RangeResponse().SerializeToString()

    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "etcdserverpb.KV", {"Range": grpc.unary_unary_rpc_method_handler(range_)})])
    port = mtls.add_port(server, "127.0.0.1:0", server_tls)
    await server.start()
    return server, f"127.0.0.1:{port}"


@pytest.mark.parametrize("role", [Role.ETCD, Role.MASTER])
async def test_a_client_talks_only_to_a_server_proving_the_etcd_name(pki, role):
    # A server with a valid certificate of the same CA, but for another role (which also names
    # localhost): the client refuses it before sending anything.
    ranges: list[bytes] = []
    server, address = await _fake_etcd(tls(pki, role), ranges)
    client = EtcdClient([address], timeout_s=TIMEOUT_S, tls=tls(pki, Role.MASTER))
    try:
        t0 = time.monotonic()
        if role == Role.ETCD:
            assert await client.get(b"/x") is None
            assert len(ranges) == 1
        else:
            with pytest.raises(EtcdUnavailable):
                await client.get(b"/x")
            assert time.monotonic() - t0 < WITHIN_S
            assert ranges == []
    finally:
        await client.close()
        await server.stop(None)


def test_the_gateway_requires_a_client_certificate_from_the_cluster_ca(etcd, pki, other_pki, tmp_path):
    assert etcd.http("/v3/kv/range", {"key": _b64(b"/")})["header"]["revision"]
    # TLS that trusts etcd but presents no certificate.
    anonymous = ssl.create_default_context(cadata=tls(pki, Role.OPERATOR).ca.read_text())
    with pytest.raises(httpx.TransportError), httpx.Client(verify=anonymous, trust_env=False) as c:
        c.post(f"{etcd.url}/v3/kv/range", json={"key": _b64(b"/")},
               extensions={"sni_hostname": mtls.server_name(Role.ETCD)})
    # A certificate from another CA.
    with pytest.raises(httpx.TransportError):
        gateway(etcd.url, "/v3/kv/range", {"key": _b64(b"/")}, foreign(pki, other_pki, tmp_path))
    # Plain HTTP on the https port.
    with pytest.raises(httpx.TransportError):
        gateway(etcd.url.replace("https:", "http:"), "/health")


def test_the_gateway_client_checks_the_etcd_name(etcd, pki):
    # The certificate names no address: dialled as 127.0.0.1 without the name to check, it fails.
    with pytest.raises(httpx.ConnectError, match=r"127\.0\.0\.1"), \
            httpx.Client(verify=mtls.client_ssl_context(tls(pki, Role.OPERATOR)), trust_env=False) as c:
        c.get(f"{etcd.url}/health")


def test_unsafe_tls_material_fails_when_the_client_is_made(pki, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(node_dirs(pki)[Role.MASTER], d)
    (d / "tls.key").chmod(0o644)
    with pytest.raises(mtls.TlsError, match="chmod 600"):
        EtcdClient(["127.0.0.1:2379"], tls=TlsFiles(d))
