"""CubeProxy's internal hops over mutual TLS (cube_common/mtls.py, certificates from deploy/pki.py).

Against a real Envoy, a real etcd serving the cluster CA only and the proxy started with
``--mtls-dir``/``--envoy-mtls-dir``: Envoy gets its whole configuration over the TLS ADS socket,
so the routing tests of test_proxy_routing.py, collected again here against this module's
``proxy``, pass unchanged; the ADS socket refuses a client without a certificate (handshake) and
one with another role's (PERMISSION_DENIED). The resumer reaches a stand-in master over mutual
TLS with the proxy's certificate. And the settings refuse half a configuration.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import grpc
import httpx
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from cube_common import mtls
from cube_common.etcd import EtcdClient
from cube_common.mtls import Role, TlsFiles
from cube_common.settings import SettingsError
from deploy.pki import node_dirs
from sdk.gen.cube.v1 import master_pb2, master_pb2_grpc
from services.proxy import envoy, xds
from services.proxy.resume import Resumer
from services.proxy.settings import Endpoint, ProxySettings
from testkit.etcd import EtcdServer
from testkit.ports import free_port
from testkit.proxy import Proxy

# Collected again in this module, so against the mutual-TLS `proxy` and `etcd_client` below: the
# same requests must route the same way when Envoy's configuration came over TLS.
from tests.proxy.test_proxy_routing import (  # noqa: F401
    test_header_routing_plain_http,
    test_host_routing_plain_http,
    test_tls_host_and_header_routing,
    test_traffic_access_token,
    test_unknown_and_deleted_sandbox_is_not_found,
)

pytestmark = pytest.mark.timeout(120)


def tls(pki: Path, role: Role) -> TlsFiles:
    return TlsFiles(node_dirs(pki)[role])


@pytest.fixture(scope="module")
def mtls_etcd(pki):
    server = EtcdServer(pki=pki)
    try:
        yield server.start()
    finally:
        server.destroy()


@pytest.fixture(scope="module")
def proxy(mtls_etcd, pki):
    """Overrides conftest's plaintext proxy for every test of this module."""
    with Proxy(mtls_etcd.endpoint, prefix=f"/t-proxy-mtls-{uuid.uuid4().hex[:8]}", pki=pki).running() as p:
        yield p


@pytest.fixture
async def etcd_client(mtls_etcd, pki):
    """Overrides conftest's: routes are written as the master writes them, with its certificate."""
    client = EtcdClient([mtls_etcd.endpoint], timeout_s=10, tls=tls(pki, Role.MASTER))
    try:
        yield client
    finally:
        await client.close()


def test_envoy_is_configured_over_tls_with_its_own_certificate(proxy, pki):
    cluster = json.loads((proxy.ads_socket.parent / "envoy.json").read_text())["static_resources"]["clusters"][0]
    assert cluster["name"] == envoy.XDS_CLUSTER
    ctx = cluster["transport_socket"]["typed_config"]
    assert ctx["sni"] == "proxy.cube.internal"
    assert ctx["common_tls_context"]["tls_certificates"][0]["certificate_chain"]["filename"] \
        == str(pki / "envoy" / "tls.crt")
    # The ADS server named the stream by the certificate it verified (ads.py).
    connected = [r for r in proxy.log_records() if r.get("msg") == "Envoy connected"]
    assert connected and connected[-1]["peer"] == "envoy/n1"


async def _refusal(proxy: Proxy, channel: grpc.aio.Channel) -> grpc.aio.AioRpcError:
    """What a client gets for asking the proxy's ADS server for clusters, as Envoy would."""
    async with channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(
            iter([discovery_pb2.DiscoveryRequest(type_url=xds.CLUSTER_TYPE)]), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            async for _ in call:
                pass
        return e.value


async def test_the_ads_socket_serves_only_envoy_certificates(proxy, pki):
    target = f"unix:{proxy.ads_socket}"
    # Plaintext, and TLS trusting the CA but presenting no certificate: no handshake.
    e = await _refusal(proxy, grpc.aio.insecure_channel(target))
    assert e.code() == grpc.StatusCode.UNAVAILABLE
    ca = tls(pki, Role.API).ca.read_bytes()
    e = await _refusal(proxy, grpc.aio.secure_channel(
        target, grpc.ssl_channel_credentials(root_certificates=ca),
        options=[("grpc.ssl_target_name_override", mtls.server_name(Role.PROXY))]))
    assert e.code() == grpc.StatusCode.UNAVAILABLE
    # A valid certificate of the cluster, of another role: the routes (and their tokens) stay unread.
    for role in (Role.API, Role.PROXY):
        for _ in range(5):
            e = await _refusal(proxy, mtls.aio_channel(target, tls(pki, role), Role.PROXY))
            # The client's send of its request can race the server's refusal: grpc then reports
            # the failed send (INTERNAL, "execute_batch") instead of the status; ask again.
            if e.code() != grpc.StatusCode.INTERNAL:
                break
        assert e.code() == grpc.StatusCode.PERMISSION_DENIED, role
        assert f"a {role} certificate" in (e.details() or "")


class _Master(master_pb2_grpc.MasterServicer):
    """A stand-in for the two calls the resumer makes; records who made them."""

    def __init__(self) -> None:
        self.peers: list[str] = []

    async def GetSandbox(self, request, context):
        self.peers.append(str(mtls.peer_identity(context)))
        return master_pb2.Sandbox(sandbox_id=request.sandbox_id, auto_resume=True, timeout_s=60)

    async def ConnectSandbox(self, request, context):
        self.peers.append(str(mtls.peer_identity(context)))
        return master_pb2.ConnectSandboxResponse()


async def _resume_through(resumer_tls: TlsFiles | None, master_addr: str) -> httpx.Response:
    settings = ProxySettings(master_addr=master_addr, resumer=Endpoint("127.0.0.1", free_port()))
    resumer = Resumer(settings, resumer_tls)
    await resumer.start()
    try:
        async with httpx.AsyncClient(timeout=10, trust_env=False) as c:
            return await c.get(f"http://{settings.resumer}/x", headers={xds.SANDBOX_HEADER: "sbmtls1"})
    finally:
        await resumer.stop()


async def test_the_resumer_reaches_the_master_with_the_proxy_certificate(pki):
    master = _Master()
    server = grpc.aio.server(interceptors=[mtls.RoleGate({Role.PROXY})])
    master_pb2_grpc.add_MasterServicer_to_server(master, server)
    port = mtls.add_port(server, "127.0.0.1:0", tls(pki, Role.MASTER))
    await server.start()
    try:
        r = await _resume_through(tls(pki, Role.PROXY), f"127.0.0.1:{port}")
        assert r.status_code == 307, r.text
        assert master.peers == ["proxy/n1", "proxy/n1"]
        # Without the certificate the master is not reached; the request gets the paused 502.
        r = await _resume_through(None, f"127.0.0.1:{port}")
        assert r.status_code == 502 and "could not be resumed" in r.json()["message"]
        assert len(master.peers) == 2
    finally:
        await server.stop(None)


def test_settings_want_both_directories_or_neither(pki):
    base = ProxySettings()
    assert base.mtls_dir is None and base.envoy_mtls_dir is None
    base.validate()
    with pytest.raises(SettingsError, match="envoy_mtls_dir"):
        ProxySettings(mtls_dir=pki / "proxy").validate()
    with pytest.raises(SettingsError, match="mtls_dir"):
        ProxySettings(envoy_mtls_dir=pki / "envoy").validate()
    env = {"CUBE_PROXY_MTLS_DIR": str(pki / "proxy"), "CUBE_PROXY_ENVOY_MTLS_DIR": str(pki / "envoy")}
    s = ProxySettings.from_env(env)
    assert s.mtls_dir == pki / "proxy" and s.envoy_mtls_dir == pki / "envoy"
    # The admin and resumer listeners stay plain HTTP: mutual TLS does not let them off loopback.
    with pytest.raises(SettingsError, match="resumer"):
        ProxySettings.from_env(env, resumer=Endpoint("0.0.0.0", 3003))
    # Plaintext bootstrap: no transport socket on the ADS cluster.
    cluster = envoy.bootstrap(base, Path("/x/ads.sock"))["static_resources"]["clusters"][0]
    assert "transport_socket" not in cluster


def test_a_directory_of_the_wrong_role_stops_the_start(pki):
    assert mtls.files(None, Role.PROXY) is None
    assert mtls.files(pki / "proxy", Role.PROXY) == tls(pki, Role.PROXY)
    with pytest.raises(mtls.TlsError, match=r"proxy/n1 \(role proxy\); this needs one of role envoy"):
        mtls.files(pki / "proxy", Role.ENVOY)
