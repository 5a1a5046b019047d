"""E2B's httpsPorts through a real Envoy: a sandbox's ports listed there are reached over TLS (its
server's self-signed certificate accepted), the others of the same sandbox in plain HTTP as before;
the traffic token and the Host mask apply to them alike; a route that names envd's port, or a port
that is none, is skipped. Plus the rules (cube_common/https_ports.py) and the clusters they need."""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3 import cluster_pb2

from cube_common import https_ports
from cube_common.envd import ENVD_PORT
from services.proxy import xds
from services.proxy.routes import MalformedRoute, parse_route
from testkit.proxy import Upstream, route_json, self_signed_cert
from tests.proxy.conftest import DOMAIN, http_request, https_request, new_id, tls_client

pytestmark = pytest.mark.timeout(180)

GUEST = "127.0.0.4"  # a guest address of this module's own: one HTTPS and one HTTP server on it


@pytest.fixture(scope="module")
def guest(tmp_path_factory):
    """(the HTTPS server, the HTTP server), both on GUEST."""
    servers = [Upstream(GUEST, tls=self_signed_cert(tmp_path_factory.mktemp("guest-tls"))), Upstream(GUEST)]
    try:
        yield tuple(s.start() for s in servers)
    finally:
        for s in servers:
            s.stop()


def host(port: int, sid: str) -> str:
    return f"{port}-{sid}.{DOMAIN}"


@pytest.mark.parametrize("via", ["http", "https-h1", "https-h2"])
async def test_an_https_port_is_reached_over_tls_and_the_others_in_plain_http(proxy, routes, guest, via):
    tls_up, plain_up = guest
    sid = new_id()
    await routes.put(sid, host=GUEST, https_ports=(tls_up.port,))
    for up, secure in ((tls_up, True), (plain_up, False)):
        h = host(up.port, sid)
        if via == "http":
            r = http_request(proxy, "GET", "/echo?q=1", host=h)
        else:
            with tls_client(proxy, http2=via == "https-h2") as c:
                r = https_request(c, proxy, "GET", h, "/echo?q=1")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["secure"] is secure and body["me"] == f"{GUEST}:{up.port}"
        assert body["host"] == h and body["path"] == "/echo?q=1"
    # A body goes through the TLS hop whole.
    r = http_request(proxy, "POST", "/upload", host=host(tls_up.port, sid), content=b"x" * 300_000)
    assert r.status_code == 200 and r.json()["bytes"] == 300_000


async def test_without_https_ports_a_tls_server_is_spoken_to_in_plain_http(proxy, routes, guest):
    # What httpsPorts is for: the proxy's plain request makes no sense to a TLS server, which
    # hangs up on it; Envoy answers the SDK's 502 for a guest that reset the connection.
    tls_up, _ = guest
    sid = new_id()
    await routes.put(sid, host=GUEST)
    r = http_request(proxy, "GET", "/echo", host=host(tls_up.port, sid))
    assert r.status_code == 502, r.text
    # The same route with the port listed: reached.
    await routes.put(sid, host=GUEST, https_ports=(tls_up.port,))
    r = http_request(proxy, "GET", "/echo", host=host(tls_up.port, sid))
    assert r.status_code == 200 and r.json()["secure"] is True


async def test_the_traffic_token_and_the_host_mask_apply_to_https_ports(proxy, routes, guest):
    tls_up, _ = guest
    sid = new_id()
    await routes.put(sid, host=GUEST, token="tok-h", mask="localhost:${PORT}", https_ports=(tls_up.port,))
    h = host(tls_up.port, sid)
    assert http_request(proxy, "GET", "/echo", host=h).status_code == 401
    assert http_request(proxy, "GET", "/echo", host=h, headers={"E2B-Traffic-Access-Token": "no"}).status_code == 403
    r = http_request(proxy, "GET", "/echo", host=h, headers={"E2B-Traffic-Access-Token": "tok-h"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["secure"] is True and body["host"] == f"localhost:{tls_up.port}"
    assert body["headers"]["x-forwarded-host"] == h


@pytest.mark.parametrize("bad", [(ENVD_PORT,), (0,), (70000,), tuple(range(1000, 1000 + https_ports.MAX_PORTS + 1))])
async def test_a_route_with_bad_https_ports_is_skipped(proxy, routes, guest, bad):
    sid = new_id()
    with pytest.raises(MalformedRoute):
        parse_route(f"/r/{sid}", route_json(sid, host=GUEST, https_ports=bad), "/r/", "node-a")
    await routes.put_raw(sid, route_json(sid, host=GUEST, https_ports=bad))
    r = http_request(proxy, "GET", "/echo", host=host(guest[1].port, sid))
    assert r.status_code == 502 and "was not found" in r.json()["message"]


def test_the_rules():
    assert https_ports.check([8443, 3000, 8443]) == [3000, 8443]
    assert https_ports.check([]) == []
    for bad in ([ENVD_PORT], [0], [65536], list(range(1, https_ports.MAX_PORTS + 2))):
        with pytest.raises(https_ports.InvalidHttpsPorts):
            https_ports.check(bad)


def test_every_local_cluster_has_a_tls_twin():
    from services.proxy.routes import Route, RouteState, RouteTable
    from services.proxy.settings import ProxySettings

    s = ProxySettings()
    table = RouteTable({"a": Route("a", RouteState.RUNNING, host_address="10.0.0.2", proxy_source_address="10.0.0.1",
                                   https_ports=(8443,))})
    clusters = xds.build_clusters(table, s)
    for src in ("", "10.0.0.1"):
        plain, tls = clusters[xds.local_cluster_name(src)], clusters[xds.local_cluster_name(src, tls=True)]
        assert isinstance(plain, cluster_pb2.Cluster) and isinstance(tls, cluster_pb2.Cluster)
        assert not plain.HasField("transport_socket") and tls.transport_socket.name == "envoy.transport_sockets.tls"
        assert tls.type == plain.type and tls.upstream_bind_config == plain.upstream_bind_config
