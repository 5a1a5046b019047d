"""Bad input and failures get E2B-shaped errors (JSON {code, message}, the right status), and
leave nothing behind."""

from __future__ import annotations

import grpc
import httpx
import pytest
from e2b import Sandbox
from e2b.exceptions import SandboxException

from sdk.gen.cube.v1 import master_pb2 as P, network_pb2
from tests.control.cluster import code_of, rpc

pytestmark = pytest.mark.timeout(60)
H = {"X-API-KEY": "e2b_" + "0" * 40}


def call(cluster, method: str, path: str, **kw) -> httpx.Response:
    return httpx.request(method, cluster.api_url + path, headers={**H, **kw.pop("headers", {})}, timeout=30, **kw)


def assert_error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["code"] == status and isinstance(body["message"], str) and body["message"]
    return body


def assert_nothing_left(cluster) -> None:
    assert cluster.sandbox_ids() == set() and cluster.route_ids() == set()
    assert cluster.cubelets[0].ids() == set()


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b"\"str\"", b""])
def test_invalid_json_body(fresh, body):
    assert_error(call(fresh, "POST", "/v2/sandboxes", content=body, headers={"Content-Type": "application/json"}), 400)
    assert_nothing_left(fresh)


@pytest.mark.parametrize("body", [
    {"metadata": {}},                                   # no templateID
    {"templateID": 7},
    {"templateID": "base", "timeout": -1},              # negative
    {"templateID": "base", "timeout": 86401},           # over the maximum (24 h)
    {"templateID": "base", "timeout": 2**40},           # huge
    {"templateID": "base", "timeout": "60"},
    {"templateID": "base", "timeout": 1.5},
    {"templateID": "base", "metadata": {"k": 1}},
    {"templateID": "base", "metadata": {f"k{i}": "v" for i in range(65)}},   # too many entries
    {"templateID": "base", "metadata": {"k": "v" * 9000}},                     # too many bytes
    {"templateID": "base", "envVars": {"BAD NAME": "x"}},
    {"templateID": "base", "envVars": ["A=1"]},
    {"templateID": "base", "autoPause": "yes"},
    {"templateID": "base", "volumeMounts": [{"name": "v", "path": "/proc/data"}]},   # a system path
    {"templateID": "base", "volumeMounts": {"/data": "v"}},
    {"templateID": "base", "network": {"allowOut": "1.2.3.4"}},
])
def test_bad_create_input_is_400(fresh, body):
    assert_error(call(fresh, "POST", "/v2/sandboxes", json=body), 400)
    assert_nothing_left(fresh)


def test_unknown_template_is_404(fresh, sdk_env):
    assert_error(call(fresh, "POST", "/v2/sandboxes", json={"templateID": "no-such-template"}), 404)
    assert_error(call(fresh, "POST", "/v2/sandboxes", json={"templateID": "../etc/passwd"}), 404)
    with pytest.raises(SandboxException, match="404"):
        Sandbox.create(template="no-such-template")
    assert_nothing_left(fresh)


@pytest.mark.parametrize("method,path,body", [
    ("GET", "/sandboxes/{id}", None), ("DELETE", "/sandboxes/{id}", None),
    ("POST", "/sandboxes/{id}/timeout", {"timeout": 10}), ("POST", "/sandboxes/{id}/pause", {}),
    ("POST", "/v2/sandboxes/{id}/connect", {}), ("POST", "/sandboxes/{id}/connect", {"timeout": 10}),
    ("POST", "/sandboxes/{id}/resume", {}), ("POST", "/sandboxes/{id}/refreshes", {}),
    ("GET", "/sandboxes/{id}/metrics", None), ("PUT", "/sandboxes/{id}/network", {"denyOut": []}),
    ("GET", "/sandboxes/{id}/logs", None),
])
@pytest.mark.parametrize("sid", ["abcdefghij0123456789", "Not-A-Valid_ID", "x" * 300])
def test_unknown_sandbox_is_404(cluster, method, path, body, sid):
    assert_error(call(cluster, method, path.format(id=sid), json=body), 404)


def test_sdk_exceptions_for_unknown_sandbox(sdk_env):
    from e2b.exceptions import SandboxNotFoundException
    with pytest.raises(SandboxNotFoundException):
        Sandbox.get_info("abcdefghij0123456789")
    with pytest.raises(SandboxNotFoundException):
        Sandbox.connect("abcdefghij0123456789")
    with pytest.raises(SandboxNotFoundException):
        Sandbox.set_timeout("abcdefghij0123456789", 30)
    assert Sandbox.kill("abcdefghij0123456789") is False


def test_kill_twice_and_pause_paused(fresh):
    sid = call(fresh, "POST", "/v2/sandboxes", json={"templateID": "base"}).json()["sandboxID"]
    assert call(fresh, "POST", f"/sandboxes/{sid}/pause", json={}).status_code == 204
    assert_error(call(fresh, "POST", f"/sandboxes/{sid}/pause", json={}), 409)
    assert call(fresh, "DELETE", f"/sandboxes/{sid}").status_code == 204
    assert_error(call(fresh, "DELETE", f"/sandboxes/{sid}"), 404)
    assert_nothing_left(fresh)


@pytest.mark.parametrize("mask", [
    "localhost:${PORT}\r\nX-Injected: 1", "a b", "host:0", "host:65536", "host:${PORT}0", "${HOST}:80",
    "[::1]:${PORT}", "user@host", "hé.example", "a..b", "x" * 256, 8080, ["localhost"],
])
def test_bad_mask_request_host_is_400(fresh, mask):
    """network.maskRequestHost: a host[:port] (${PORT} for the port), bounded, header-safe."""
    body = assert_error(call(fresh, "POST", "/v2/sandboxes",
                             json={"templateID": "base", "network": {"maskRequestHost": mask}}), 400)
    assert "maskRequestHost" in body["message"]
    assert_nothing_left(fresh)


def test_master_refuses_a_bad_mask_request_host(fresh):
    """The master checks it too: gRPC callers do not pass through the API."""
    req = P.CreateSandboxRequest(template="base", network=network_pb2.NetworkPolicy(mask_request_host="a\r\nb"))
    assert code_of(lambda: rpc(fresh, "CreateSandbox", req)) == grpc.StatusCode.INVALID_ARGUMENT
    assert_nothing_left(fresh)


def test_mask_request_host_cannot_be_updated(fresh):
    sid = call(fresh, "POST", "/v2/sandboxes", json={"templateID": "base"}).json()["sandboxID"]
    body = assert_error(call(fresh, "PUT", f"/sandboxes/{sid}/network",
                             json={"maskRequestHost": "localhost:${PORT}"}), 400)
    assert "maskRequestHost" in body["message"]
    assert "maskRequestHost" not in call(fresh, "GET", f"/sandboxes/{sid}").json().get("network", {})


@pytest.mark.parametrize("ports", [
    [49983], [0], [65536], [-1], list(range(1, 66)), ["443"], [True], [1.5], 443, {"443": True},
])
def test_bad_https_ports_are_400(fresh, ports):
    """network.httpsPorts: at most 64 ports, each 1-65535 and not envd's."""
    body = assert_error(call(fresh, "POST", "/v2/sandboxes",
                             json={"templateID": "base", "network": {"httpsPorts": ports}}), 400)
    assert "httpsPorts" in body["message"]
    assert_nothing_left(fresh)


def test_master_refuses_bad_https_ports(fresh):
    """The master checks them too: gRPC callers do not pass through the API."""
    req = P.CreateSandboxRequest(template="base", network=network_pb2.NetworkPolicy(https_ports=[49983]))
    assert code_of(lambda: rpc(fresh, "CreateSandbox", req)) == grpc.StatusCode.INVALID_ARGUMENT
    assert_nothing_left(fresh)


def test_https_ports_cannot_be_updated(fresh):
    sid = call(fresh, "POST", "/v2/sandboxes", json={"templateID": "base"}).json()["sandboxID"]
    body = assert_error(call(fresh, "PUT", f"/sandboxes/{sid}/network", json={"httpsPorts": [8443]}), 400)
    assert "httpsPorts" in body["message"]
    assert "httpsPorts" not in call(fresh, "GET", f"/sandboxes/{sid}").json().get("network", {})


@pytest.mark.parametrize("network,word", [
    ({"rules": {"api.example.com": [{"transform": {"headers": {"Authorization": "Bearer x"}}}]}}, "rules"),
    ({"rules": ["api.example.com"]}, "rules"),
    ({"dnsServers": ["1.1.1.1"] * 11}, "dnsServers"),
    ({"dnsServers": ["2001:db8::1"]}, "dnsServers"),
    ({"dnsServers": ["01.1.1.1"]}, "dnsServers"),
    ({"dnsServers": "1.1.1.1"}, "dnsServers"),
])
def test_egress_rules_and_bad_dns_servers_are_400(fresh, network, word):
    """Per-domain transforms of outbound HTTPS are refused, never silently dropped (a caller
    counting on a credential being added must learn it is not); dnsServers are IPv4, at most 10.
    On create and on a network update alike."""
    body = assert_error(call(fresh, "POST", "/v2/sandboxes", json={"templateID": "base", "network": network}), 400)
    assert word in body["message"]
    assert_nothing_left(fresh)
    sid = call(fresh, "POST", "/v2/sandboxes", json={"templateID": "base"}).json()["sandboxID"]
    body = assert_error(call(fresh, "PUT", f"/sandboxes/{sid}/network", json=network), 400)
    assert word in body["message"]


def test_bad_timeout_bodies(fresh):
    sid = call(fresh, "POST", "/v2/sandboxes", json={"templateID": "base"}).json()["sandboxID"]
    for body in ({}, {"timeout": -5}, {"timeout": 10**6}, {"timeout": "x"}):
        assert_error(call(fresh, "POST", f"/sandboxes/{sid}/timeout", json=body), 400)
    assert_error(call(fresh, "POST", f"/sandboxes/{sid}/timeout", content=b"nope"), 400)
    assert_error(call(fresh, "POST", f"/sandboxes/{sid}/refreshes", json={"duration": 3601}), 400)
    assert_error(call(fresh, "POST", f"/v2/sandboxes/{sid}/connect", json={"timeout": -1}), 400)
    assert_error(call(fresh, "GET", f"/sandboxes/{sid}/metrics", params={"start": "soon"}), 400)


def test_missing_key_unknown_route_wrong_method_big_body(cluster):
    r = httpx.post(cluster.api_url + "/v2/sandboxes", json={"templateID": "base"})
    assert_error(r, 401)
    assert_error(call(cluster, "GET", "/no/such/route"), 404)
    assert_error(call(cluster, "PATCH", "/v2/sandboxes"), 405)
    assert_error(call(cluster, "POST", "/v2/sandboxes", content=b"{" + b" " * (2 << 20) + b"}"), 413)


def test_no_capacity_is_429_without_retry(fresh):
    node = fresh.cubelets[0]
    node.max_sandboxes = 1
    node.register(fresh.etcd, fresh.prefix)
    try:
        assert call(fresh, "POST", "/v2/sandboxes", json={"templateID": "base"}).status_code == 201
        r = call(fresh, "POST", "/v2/sandboxes", json={"templateID": "base"})
        assert_error(r, 429)
        assert r.headers["Should-Retry"] == "false"
        assert len(fresh.sandbox_ids()) == 1
    finally:
        node.max_sandboxes = 0
        node.register(fresh.etcd, fresh.prefix)


@pytest.mark.parametrize("code,status", [(grpc.StatusCode.UNAVAILABLE, 503), (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
                                         (grpc.StatusCode.INTERNAL, 503)])
def test_node_failure_on_create_is_undone(fresh, code, status):
    fresh.cubelets[0].fail_run = code
    r = call(fresh, "POST", "/v2/sandboxes", json={"templateID": "base"})
    assert_error(r, status)
    assert_nothing_left(fresh)
    # The master asked the node to kill what it may have half-made.
    assert fresh.cubelets[0].calls_of("KillSandbox") == fresh.cubelets[0].calls_of("RunSandbox")


def test_no_nodes_is_503(fresh):
    fresh.etcd.delete(f"{fresh.prefix}/nodes/node-a")
    try:
        r = call(fresh, "POST", "/v2/sandboxes", json={"templateID": "base"})
        assert_error(r, 503)
    finally:
        fresh.cubelets[0].register(fresh.etcd, fresh.prefix)
