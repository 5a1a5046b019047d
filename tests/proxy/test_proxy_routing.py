"""Host and header routing, over plain HTTP/1.1 and TLS (HTTP/1.1 and h2, verified against the
generated CA), and the error answers the SDK understands."""

from __future__ import annotations

import httpx
import pytest

from sdk.gen.cube.v1 import route_pb2
from tests.proxy.conftest import DOMAIN, http_request, https_request, new_id, tls_client

pytestmark = pytest.mark.timeout(180)


def host(port: int, sid: str) -> str:
    return f"{port}-{sid}.{DOMAIN}"


async def test_host_routing_plain_http(proxy, upstreams, routes):
    up = upstreams[0]
    sid = new_id()
    await routes.put(sid, host=up.host)
    r = http_request(proxy, "GET", "/echo/a%20b?x=1&y=2", host=host(up.port, sid))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["me"] == f"{up.host}:{up.port}"
    assert body["path"] == "/echo/a%20b?x=1&y=2"  # path and query untouched
    assert body["host"] == host(up.port, sid)  # the guest sees the Host the client used
    assert "x-cube-sandbox" not in body["headers"] and "x-cube-port" not in body["headers"]


async def test_header_routing_plain_http(proxy, upstreams, routes):
    a, b = new_id(), new_id()
    await routes.put(a, host=upstreams[0].host)
    await routes.put(b, host=upstreams[1].host)
    for sid, up in ((a, upstreams[0]), (b, upstreams[1])):
        # E2B_SANDBOX_URL=http://proxy: every sandbox behind one URL, told apart by headers only.
        r = http_request(proxy, "GET", "/echo", headers={"E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": str(up.port)})
        assert r.status_code == 200, r.text
        assert r.json()["me"] == f"{up.host}:{up.port}"


async def test_headers_take_precedence_over_host(proxy, upstreams, routes):
    a, b = new_id(), new_id()
    await routes.put(a, host=upstreams[0].host)
    await routes.put(b, host=upstreams[1].host)
    r = http_request(proxy, "GET", "/echo", host=host(upstreams[0].port, a),
                     headers={"E2b-Sandbox-Id": b, "E2b-Sandbox-Port": str(upstreams[1].port)})
    assert r.json()["me"] == f"{upstreams[1].host}:{upstreams[1].port}"
    # Only one of the two headers: the Host decides.
    r = http_request(proxy, "GET", "/echo", host=host(upstreams[0].port, a), headers={"E2b-Sandbox-Id": b})
    assert r.json()["me"] == f"{upstreams[0].host}:{upstreams[0].port}"


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "h2"])
async def test_tls_host_and_header_routing(proxy, upstreams, routes, http2):
    up = upstreams[0]
    sid = new_id()
    await routes.put(sid, host=up.host)
    with tls_client(proxy, http2=http2) as c:
        r = https_request(c, proxy, "GET", host(up.port, sid), "/echo")
        assert r.status_code == 200, r.text
        assert r.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
        assert r.json()["me"] == f"{up.host}:{up.port}"
        # Header routing over TLS to the bare domain (also covered by the certificate).
        r = https_request(c, proxy, "GET", DOMAIN, "/echo",
                          headers={"E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": str(up.port)})
        assert r.status_code == 200 and r.json()["me"] == f"{up.host}:{up.port}"


async def test_tls_rejects_untrusted_and_wrong_names(proxy, upstreams, routes):
    with httpx.Client(timeout=10) as c:  # system roots only: our CA is not trusted
        with pytest.raises(httpx.ConnectError):
            https_request(c, proxy, "GET", host(1, "x"), "/")
    with tls_client(proxy) as c:
        with pytest.raises(httpx.ConnectError):  # not under *.cube.localhost
            https_request(c, proxy, "GET", "example.com", "/")


async def test_ipv6_loopback_listener(proxy, upstreams, routes):
    up = upstreams[0]
    sid = new_id()
    await routes.put(sid, host=up.host)
    import ssl
    ctx = ssl.create_default_context(cafile=proxy.ca)
    async with httpx.AsyncClient(verify=ctx, timeout=10) as c:
        name = host(up.port, sid)
        r = await c.get(f"https://[::1]:{proxy.https_port}/echo", headers={"Host": name},
                        extensions={"sni_hostname": name})
        assert r.status_code == 200 and r.json()["me"] == f"{up.host}:{up.port}"


async def test_unknown_and_deleted_sandbox_is_not_found(proxy, upstreams, routes):
    sid = new_id()
    r = http_request(proxy, "GET", "/health", host=host(49983, sid))
    assert r.status_code == 502
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"sandboxId": sid, "message": "The sandbox was not found", "code": 502}
    await routes.put(sid, host=upstreams[0].host)
    assert http_request(proxy, "GET", "/echo", host=host(upstreams[0].port, sid)).status_code == 200
    await routes.delete(sid)
    r = http_request(proxy, "GET", "/echo", host=host(upstreams[0].port, sid))
    assert r.status_code == 502 and "was not found" in r.json()["message"]
    with tls_client(proxy, http2=True) as c:  # same over h2 (the SDK's RPC transport)
        r = https_request(c, proxy, "POST", host(49983, sid), "/process.Process/List", json={})
        assert r.status_code == 502 and r.json()["sandboxId"] == sid and "was not found" in r.json()["message"]


async def test_closed_port_is_port_not_open(proxy, upstreams, routes):
    sid = new_id()
    await routes.put(sid, host="127.0.0.4")  # nothing listens anywhere on 127.0.0.4
    r = http_request(proxy, "GET", "/x", host=host(8080, sid))
    assert r.status_code == 502
    assert r.json() == {"sandboxId": sid, "message": "The sandbox is running but port is not open",
                        "port": 8080, "code": 502}


async def test_paused_sandbox(proxy, upstreams, routes):
    sid = new_id()
    await routes.put(sid, state=route_pb2.ROUTE_STATE_PAUSED)
    r = http_request(proxy, "GET", "/health", headers={"E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": "49983"})
    assert r.status_code == 502
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert "is paused" in body["message"] and "was not found" not in body["message"] and body["sandboxId"] == sid
    # Resumed: the same sandbox routes again.
    await routes.put(sid, host=upstreams[0].host)
    assert http_request(proxy, "GET", "/echo", host=host(upstreams[0].port, sid)).status_code == 200


async def test_traffic_access_token(proxy, upstreams, routes):
    up = upstreams[0]
    sid = new_id()
    await routes.put(sid, host=up.host, token="tok-123")
    h = host(up.port, sid)
    r = http_request(proxy, "GET", "/echo", host=h)
    assert r.status_code == 401 and r.json()["code"] == 401 and r.json()["sandboxId"] == sid
    r = http_request(proxy, "GET", "/echo", host=h, headers={"E2B-Traffic-Access-Token": "wrong"})
    assert r.status_code == 403 and r.json()["code"] == 403
    r = http_request(proxy, "GET", "/echo", host=h, headers={"E2B-Traffic-Access-Token": "tok-123"})
    assert r.status_code == 200 and r.json()["me"] == f"{up.host}:{up.port}"
    # envd's port is exempt (envd checks X-Access-Token itself): reaches the (closed) port.
    r = http_request(proxy, "GET", "/health", host=host(49983, sid))
    assert r.status_code == 502 and "port is not open" in r.json()["message"]


@pytest.mark.parametrize("path", ["/init", "/init?x=1", "/%69nit", "//init", "/init/", "/fsfreeze"])
async def test_envd_internal_routes_blocked(proxy, upstreams, routes, path):
    sid = new_id()
    await routes.put(sid, host=upstreams[0].host)
    r = http_request(proxy, "POST", path, host=host(49983, sid), json={"accessToken": "x"})
    assert r.status_code == 403 and r.headers["content-type"] == "application/json"
    assert r.json()["code"] == 403
    # Other ports are the user's: /init there is just a path.
    r = http_request(proxy, "POST", path.split("?")[0], host=host(upstreams[0].port, sid))
    assert r.status_code == 200


@pytest.mark.parametrize("headers,host_header", [
    ({}, "localhost"),                                          # no sandbox at all
    ({}, "abc.cube.localhost"),                                 # label without <port>-
    ({}, "99999-abc.cube.localhost"),                           # port out of range
    ({"E2b-Sandbox-Id": "a\"b", "E2b-Sandbox-Port": "49983"}, "localhost"),  # id charset
    ({"E2b-Sandbox-Id": "abc", "E2b-Sandbox-Port": "http"}, "localhost"),    # port not a number
    ({"E2b-Sandbox-Id": "abc", "E2b-Sandbox-Port": "0"}, "localhost"),
])
async def test_malformed_requests_get_400(proxy, headers, host_header):
    r = http_request(proxy, "GET", "/", host=host_header, headers=headers)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/json" and r.json()["code"] == 400


async def test_client_cannot_choose_the_upstream(proxy, upstreams, routes):
    """Internal headers sent by a client are dropped before routing."""
    sid = new_id()
    await routes.put(sid, host=upstreams[0].host)
    r = http_request(proxy, "GET", "/echo", host=host(upstreams[0].port, sid),
                     headers={"x-cube-upstream": f"{upstreams[1].host}:{upstreams[1].port}", "x-cube-sandbox": "other"})
    assert r.json()["me"] == f"{upstreams[0].host}:{upstreams[0].port}"
