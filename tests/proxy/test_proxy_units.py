"""Unit tests: route records, settings, TLS material, resource building (no Envoy, no etcd)."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509

from services.proxy import errors, xds
from services.proxy.routes import MalformedRoute, RouteState, RouteTable, parse_route
from services.proxy.settings import Endpoint, ProxySettings
from services.proxy.tls import ensure_certificates
from tests.proxy.harness import route_json

P = "/cube/routes/"

pytestmark = pytest.mark.timeout(180)


def parse(sid: str, value: bytes, node: str = "n1"):
    return parse_route(P + sid, value, P, node)


def test_parse_local_route():
    r = parse("abc", route_json("abc", host="198.19.0.5", source="198.19.255.254", token="t"))
    assert r.is_local and r.host_address == "198.19.0.5" and r.proxy_source_address == "198.19.255.254"
    assert r.state is RouteState.RUNNING and r.traffic_access_token == "t"


def test_parse_defaults_and_states():
    assert parse("abc", b'{"hostAddress": "10.0.0.1"}').state is RouteState.RUNNING  # unset = running
    assert parse("abc", b'{"state": "ROUTE_STATE_PAUSED"}').state is RouteState.PAUSED  # no address needed
    r = parse("abc", route_json("abc", node_id="n2", node_proxy_address="10.1.2.3:3002"))
    assert not r.is_local and r.remote == Endpoint("10.1.2.3", 3002)
    r = parse("abc", route_json("abc", host="::2"))
    assert r.host_address == "::2"


@pytest.mark.parametrize("sid,value", [
    ("abc", b"{"),
    ("abc", b"\xff\xfe"),
    ("abc", b'{"sandboxId": "other", "hostAddress": "10.0.0.1"}'),
    ("a.b", b'{"hostAddress": "10.0.0.1"}'),
    ("abc", b'{"hostAddress": "example.com"}'),
    ("abc", b'{}'),
    ("abc", b'{"hostAddress": "10.0.0.1", "proxySourceAddress": "x"}'),
    ("abc", b'{"hostAddress": "10.0.0.1", "trafficAccessToken": "has space"}'),
    ("abc", b'{"nodeId": "n2", "nodeProxyAddress": "10.0.0.1"}'),
    ("abc", b'{"nodeId": "n2", "nodeProxyAddress": "bad_host!:80"}'),
    ("abc", b'{"state": 7, "hostAddress": "10.0.0.1"}'),
])
def test_malformed_routes(sid, value):
    with pytest.raises(MalformedRoute):
        parse(sid, value)


def test_settings_from_args_and_env():
    s = ProxySettings.from_args(["--https", "127.0.0.1:8443,[::1]:8443", "--http", "", "--etcd-prefix", "x/"],
                                environ={"CUBE_STATE_DIR": "/tmp/s", "CUBE_NODE_ID": "n9"})
    assert s.https_listeners == (Endpoint("127.0.0.1", 8443), Endpoint("::1", 8443))
    assert s.http_listeners == () and s.etcd_prefix == "/x" and s.routes_prefix == "/x/routes/"
    assert s.node_id == "n9" and s.proxy_id == "n9" and str(s.state_dir) == "/tmp/s"
    d = ProxySettings.from_args([], environ={})
    assert d.domain == "cube.localhost" and [e.port for e in d.https_listeners] == [443, 443]
    assert d.http_listeners == (Endpoint("127.0.0.1", 3002),)
    with pytest.raises(ValueError):
        ProxySettings(access_log="sometimes")


def test_tls_files_are_made_once_and_reissued_for_a_new_domain(tmp_path):
    f = ensure_certificates(tmp_path, "cube.localhost")
    ca1, cert1 = f.ca_cert.read_bytes(), f.cert.read_bytes()
    assert (f.key.stat().st_mode & 0o777) == 0o600 and (f.ca_key.stat().st_mode & 0o777) == 0o600
    leaf, ca_in_chain = x509.load_pem_x509_certificates(cert1)
    ca = x509.load_pem_x509_certificate(ca1)
    assert ca_in_chain == ca and leaf.issuer == ca.subject
    leaf.verify_directly_issued_by(ca)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {"*.cube.localhost", "cube.localhost"}
    assert leaf.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc) > datetime.timedelta(days=300)
    # Idempotent.
    f = ensure_certificates(tmp_path, "cube.localhost")
    assert f.ca_cert.read_bytes() == ca1 and f.cert.read_bytes() == cert1
    # A new domain: new certificate, same CA (clients keep trusting it).
    f = ensure_certificates(tmp_path, "sbx.example.com")
    assert f.ca_cert.read_bytes() == ca1 and f.cert.read_bytes() != cert1
    leaf = x509.load_pem_x509_certificates(f.cert.read_bytes())[0]
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "*.sbx.example.com" in sans.get_values_for_type(x509.DNSName)


def test_cluster_set_does_not_grow_with_sandboxes(tmp_path):
    from services.proxy.routes import Route
    s = ProxySettings()
    routes = {f"s{i}": Route(f"s{i}", RouteState.RUNNING, host_address=f"198.19.0.{i}",
                             proxy_source_address="198.19.255.254") for i in range(1, 200)}
    clusters = xds.build_clusters(RouteTable(routes, 1), s)
    assert sorted(clusters) == ["cube_local", xds.local_cluster_name("198.19.255.254")]
    rc = xds.build_route_config(RouteTable(routes, 1))
    assert rc.ByteSize() / len(routes) < 400  # bytes of route config per sandbox


def test_error_bodies():
    assert errors.dumps(errors.not_found("x")) == '{"sandboxId":"x","message":"The sandbox was not found","code":502}'
    assert "port is not open" in errors.port_not_open("x", 1)["message"]
    assert "is paused" in errors.paused("x")["message"]
    assert "was not found" in errors.ENVOY_NOT_FOUND and "port is not open" in errors.ENVOY_PORT_NOT_OPEN
