"""Unit tests: route records, settings, TLS material, resource building (no Envoy, no etcd)."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509

from services.proxy import errors, xds
from services.proxy.routes import MalformedRoute, RouteState, RouteTable, parse_route
from services.proxy.settings import Endpoint, ProxySettings
from services.proxy.tls import ensure_certificates
from testkit.proxy import route_json

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
    s = ProxySettings.load(["--https", "127.0.0.1:8443,[::1]:8443", "--http", "", "--etcd-prefix", "x/"],
                           env={"CUBE_STATE_DIR": "/tmp/s", "CUBE_NODE_ID": "n9"})
    assert s.https_listeners == (Endpoint("127.0.0.1", 8443), Endpoint("::1", 8443))
    assert s.http_listeners == () and s.etcd_prefix == "/x" and s.keys.routes() == b"/x/routes/"
    assert s.node_id == "n9" and s.proxy_id == "n9" and str(s.state_dir) == "/tmp/s"
    d = ProxySettings.load([], env={})
    assert d.domain == "cube.localhost" and [e.port for e in d.https_listeners] == [443, 443]
    assert d.http_listeners == (Endpoint("127.0.0.1", 3002),)
    assert d.api_upstream == "127.0.0.1:3000" and d.api_endpoint == Endpoint("127.0.0.1", 3000)
    assert ProxySettings.load([], env={"CUBE_PROXY_API_UPSTREAM": "cube-api.ns.svc:3000"}).api_endpoint \
        == Endpoint("cube-api.ns.svc", 3000)
    assert ProxySettings.load(["--api-upstream", ""], env={}).api_endpoint is None  # the route off
    with pytest.raises(ValueError):
        ProxySettings.from_env({"CUBE_PROXY_API_UPSTREAM": "cube-api"})  # no port
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
    assert leaf.not_valid_after_utc - datetime.datetime.now(datetime.UTC) > datetime.timedelta(days=300)
    # Idempotent.
    f = ensure_certificates(tmp_path, "cube.localhost")
    assert f.ca_cert.read_bytes() == ca1 and f.cert.read_bytes() == cert1
    # The CA clients trust vouches for the proxy domain only.
    nc = ca.extensions.get_extension_for_class(x509.NameConstraints)
    assert nc.critical and nc.value.permitted_subtrees == [x509.DNSName("cube.localhost")]
    assert {str(n.value) for n in nc.value.excluded_subtrees or ()} == {"0.0.0.0/0", "::/0"}
    # A new domain: a new CA (the old one may not vouch for it) at the same path, and certificate.
    f = ensure_certificates(tmp_path, "sbx.example.com")
    assert f.ca_cert.read_bytes() != ca1 and f.cert.read_bytes() != cert1
    leaf = x509.load_pem_x509_certificates(f.cert.read_bytes())[0]
    leaf.verify_directly_issued_by(x509.load_pem_x509_certificate(f.ca_cert.read_bytes()))
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "*.sbx.example.com" in sans.get_values_for_type(x509.DNSName)


def test_the_proxy_ca_cannot_vouch_for_another_site(tmp_path):
    """Its key leaking would not let anyone impersonate another site to the SDK's clients: a real
    verifier (OpenSSL, as httpx and Node use) rejects what it signs outside the domain."""
    import ipaddress
    import socket
    import ssl
    import threading

    from cube_common import certs

    f = ensure_certificates(tmp_path, "cube.localhost")
    ca = certs.Authority.load(f.ca_cert, f.ca_key)
    client = ssl.create_default_context(cafile=str(f.ca_cert))

    def handshake(dns, ips, name):
        key, leaf = ca.issue("x", days=1, dns=dns, ips=ips, server=True)
        certs.write_key(tmp_path / "k", key)
        (tmp_path / "c").write_bytes(certs.cert_pem(leaf))
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.load_cert_chain(str(tmp_path / "c"), str(tmp_path / "k"))
        a, b = socket.socketpair()
        t = threading.Thread(target=lambda: _serve_once(server, a))
        t.start()
        try:
            with client.wrap_socket(b, server_hostname=name):
                pass
        finally:
            b.close()
            t.join(5)

    handshake(["8000-abc.cube.localhost"], [], "8000-abc.cube.localhost")
    for dns, ips, name in ((["bank.example"], [], "bank.example"),
                           ([], [ipaddress.ip_address("192.0.2.1")], "192.0.2.1")):
        with pytest.raises(ssl.SSLCertVerificationError):
            handshake(dns, ips, name)


def _serve_once(ctx, sock):
    try:
        with ctx.wrap_socket(sock, server_side=True) as s:
            s.recv(1)
    except (OSError, ValueError):
        pass


def test_cluster_set_does_not_grow_with_sandboxes(tmp_path):
    from services.proxy.routes import Route
    s = ProxySettings()
    routes = {f"s{i}": Route(f"s{i}", RouteState.RUNNING, host_address=f"198.19.0.{i}",
                             proxy_source_address="198.19.255.254") for i in range(1, 200)}
    clusters = xds.build_clusters(RouteTable(routes, 1), s)
    # Each local cluster and its TLS twin (httpsPorts), whatever the number of sandboxes.
    assert sorted(clusters) == sorted(["cube_local", "cube_local_tls", xds.RESUMER_CLUSTER, xds.API_CLUSTER,
                                       xds.local_cluster_name("198.19.255.254"),
                                       xds.local_cluster_name("198.19.255.254", tls=True)])
    rc = xds.build_route_config(RouteTable(routes, 1))
    assert rc.ByteSize() / len(routes) < 400  # bytes of route config per sandbox


def test_error_bodies():
    assert errors.dumps(errors.not_found("x")) == '{"sandboxId":"x","message":"The sandbox was not found","code":502}'
    assert "port is not open" in errors.port_not_open("x", 1)["message"]
    assert "is paused" in errors.paused("x")["message"]
    assert "was not found" in errors.ENVOY_NOT_FOUND and "port is not open" in errors.ENVOY_PORT_NOT_OPEN


def test_paused_autoresume_route_goes_to_the_resumer_with_internal_redirects():
    from google.protobuf import json_format

    from services.proxy.routes import Route
    paused = Route("sbxa", RouteState.PAUSED, auto_resume=True)
    plain = Route("sbxb", RouteState.PAUSED)
    guarded = Route("sbxc", RouteState.PAUSED, auto_resume=True, traffic_access_token="tok")
    on = ProxySettings(master_addr="127.0.0.1:50051")
    off = ProxySettings(master_addr="")

    entry = json_format.MessageToDict(
        xds._parse(xds._on_match(paused, on), xds.matcher_pb2.Matcher.OnMatch))
    route = entry["action"]["typedConfig"]
    assert route["route"]["cluster"] == xds.RESUMER_CLUSTER
    assert route["route"]["internalRedirectPolicy"]["redirectResponseCodes"] == [307]
    assert "requestHeadersToAdd" not in route and "requestHeadersToRemove" not in route  # see xds._resume
    # Without a master (auto-resume off), or without autoResume: the paused 502.
    for r, s in ((paused, off), (plain, on)):
        direct = xds._on_match(r, s)["action"]["typed_config"]["direct_response"]
        assert direct["status"] == 502 and "is paused" in direct["body"]["inline_string"]
    # A traffic access token guards the resume of ports other than envd's, as it guards traffic.
    tree = xds._on_match(guarded, on)["matcher"]
    assert tree["matcher_tree"]["exact_match_map"]["map"]["49983"]["action"]["typed_config"]["route"]["cluster"] \
        == xds.RESUMER_CLUSTER
    assert tree["on_no_match"]["matcher"]["on_no_match"]["action"]["typed_config"]["direct_response"]["status"] == 401
    assert xds.RESUMER_CLUSTER not in xds.build_clusters(RouteTable({}, 1), off)


def test_route_records_carry_auto_resume_only_when_paused():
    from sdk.gen.cube.v1 import route_pb2
    rec = lambda state: json_format_dumps(route_pb2.SandboxRoute(  # noqa: E731
        sandbox_id="sbx1", node_id="node-a", state=state, auto_resume=True, host_address="198.19.0.2"))
    paused = parse_route("/cube/routes/sbx1", rec(route_pb2.ROUTE_STATE_PAUSED), "/cube/routes/", "node-a")
    running = parse_route("/cube/routes/sbx1", rec(route_pb2.ROUTE_STATE_RUNNING), "/cube/routes/", "node-a")
    assert paused.auto_resume is True and running.auto_resume is False


def json_format_dumps(msg) -> bytes:
    from google.protobuf import json_format
    return json_format.MessageToJson(msg).encode()


def test_the_local_source_cluster_outlives_its_last_running_sandbox():
    """When the node's last sandbox pauses, its source-address cluster stays: Envoy may apply a
    cluster removal before the route change, and a request in between would find no cluster."""
    from services.proxy.routes import Route
    s = ProxySettings()
    cache: dict = {}
    running = {"a": Route("a", RouteState.RUNNING, host_address="198.19.0.2", proxy_source_address="198.19.255.254")}
    name = xds.local_cluster_name("198.19.255.254")
    assert name in xds.build_clusters(RouteTable(running, 1), s, cache)
    paused = {"a": Route("a", RouteState.PAUSED)}
    assert name in xds.build_clusters(RouteTable(paused, 2), s, cache)
    endpoint = xds.Endpoint("10.0.0.9", 3002)
    remote = {"b": Route("b", RouteState.RUNNING, remote=endpoint, node_id="n2")}
    remote_name = xds.remote_cluster_name(endpoint)
    assert remote_name in xds.build_clusters(RouteTable(remote, 3), s, cache)
    assert remote_name not in xds.build_clusters(RouteTable({}, 4), s, cache)  # other nodes' go


def test_the_api_route_and_cluster():
    """api.<domain>'s volume content calls: one cluster from the settings (STATIC for an IP, DNS
    for a name), one map entry no sandbox id can take, no route timeout; both stay as sandboxes
    come and go, and neither exists with the setting empty."""
    from google.protobuf import json_format

    from services.proxy.routes import SANDBOX_ID_RE, Route
    assert not SANDBOX_ID_RE.match(xds.API_ROUTE_KEY)
    ip, name, off = (ProxySettings(api_upstream=a)
                     for a in ("127.0.0.1:3000", "cube-api.ns.svc.cluster.local:3000", ""))

    def api_cluster(s: ProxySettings) -> xds.cluster_pb2.Cluster:
        cluster = xds.build_clusters(RouteTable({}, 1), s)[xds.API_CLUSTER]
        assert isinstance(cluster, xds.cluster_pb2.Cluster)
        return cluster

    assert api_cluster(ip).type == xds.cluster_pb2.Cluster.STATIC
    dns = api_cluster(name)
    assert dns.type == xds.cluster_pb2.Cluster.STRICT_DNS
    assert dns.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address \
        == "cube-api.ns.svc.cluster.local"
    assert xds.API_CLUSTER not in xds.build_clusters(RouteTable({}, 1), off)

    def api_entry(builder: xds.ResourceBuilder, table: RouteTable) -> dict | None:
        rc = builder.build(table).routes[xds.ROUTE_CONFIG_NAME]
        assert isinstance(rc, xds.route_pb2.RouteConfiguration)
        entries = rc.virtual_hosts[0].matcher.matcher_tree.exact_match_map.map
        if xds.API_ROUTE_KEY not in entries:
            return None
        return json_format.MessageToDict(entries[xds.API_ROUTE_KEY])["action"]["typedConfig"]

    b = xds.ResourceBuilder(ip, None, [], [])
    entry = api_entry(b, RouteTable({}, 1))
    assert entry is not None
    assert entry["route"] == {"cluster": xds.API_CLUSTER, "timeout": "0s", "idleTimeout": f"{xds.API_IDLE_TIMEOUT_S}s"}
    assert entry["requestHeadersToRemove"] == [xds.SANDBOX_HEADER, xds.PORT_HEADER]
    cluster = b.build(RouteTable({}, 1)).clusters[xds.API_CLUSTER]
    running = {"a": Route("a", RouteState.RUNNING, host_address="198.19.0.2")}
    for table in (RouteTable(running, 2), RouteTable({}, 3), RouteTable(running, 4)):
        assert api_entry(b, table) == entry
        assert b.build(table).clusters[xds.API_CLUSTER] is cluster  # built once: CDS never churns
    b = xds.ResourceBuilder(off, None, [], [])
    assert api_entry(b, RouteTable(running, 1)) is None
    rc = b.build(RouteTable({}, 2)).routes[xds.ROUTE_CONFIG_NAME]
    assert isinstance(rc, xds.route_pb2.RouteConfiguration) and not rc.virtual_hosts[0].HasField("matcher")


def test_the_lua_filter_knows_the_api_host():
    on = xds.lua_source(ProxySettings(domain="Sbx.Example.COM."))
    assert 'local API_HOST = "api.sbx.example.com"' in on and "local API_ON = true" in on
    assert "local API_ON = false" in xds.lua_source(ProxySettings(api_upstream=""))
    assert f'"{xds.API_ROUTE_KEY}"' in on and xds.API_PATH_PREFIX in on
    # Whatever the domain, it stays one Lua string.
    assert xds._lua_string('a"b\\c\né') == '"a\\034b\\092c\\010\\195\\169"'
