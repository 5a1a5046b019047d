"""E2B's maskRequestHost through a real Envoy: a masked sandbox's guest sees the mask as its Host
(``${PORT}`` made the port the request targets) and the client's Host in X-Forwarded-Host, on
every port but envd's; an unmasked sandbox's guest sees the client's Host. Plus the mask rules
(cube_common/host_mask.py) and how route records and route entries carry them."""

from __future__ import annotations

import socket

import jsonschema_rs
import pytest
from google.protobuf import json_format

from cube_common import host_mask
from cube_common.envd import ENVD_PORT
from sdk.gen.cube.v1 import route_pb2
from services.proxy import xds
from services.proxy.routes import MalformedRoute, Route, RouteState, parse_route
from services.proxy.settings import Endpoint
from testkit.proxy import Upstream, route_json
from tests.proxy.conftest import DOMAIN, http_request, https_request, new_id, tls_client

pytestmark = pytest.mark.timeout(180)


def host(port: int, sid: str) -> str:
    return f"{port}-{sid}.{DOMAIN}"


# ---- through Envoy ----------------------------------------------------------------------------

@pytest.mark.parametrize("via", ["http", "https-h1", "https-h2"])
async def test_masked_host_reaches_the_guest_with_the_port(proxy, upstreams, routes, via):
    up = upstreams[0]
    sid = new_id()
    await routes.put(sid, host=up.host, mask="localhost:${PORT}")
    h = host(up.port, sid)
    if via == "http":
        r = http_request(proxy, "GET", "/echo?q=1", host=h, headers={"X-Forwarded-Host": "spoofed.example"})
    else:
        with tls_client(proxy, http2=via == "https-h2") as c:
            r = https_request(c, proxy, "GET", h, "/echo?q=1", headers={"X-Forwarded-Host": "spoofed.example"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["me"] == f"{up.host}:{up.port}" and body["path"] == "/echo?q=1"
    assert body["host"] == f"localhost:{up.port}"
    # The client's Host, replacing what the client said (E2B sets it too).
    assert body["headers"]["x-forwarded-host"] == h
    assert "x-cube-sandbox" not in body["headers"] and "x-cube-port" not in body["headers"]


async def test_unmasked_sandbox_keeps_the_client_host(proxy, upstreams, routes):
    up = upstreams[0]
    masked, plain = new_id(), new_id()
    await routes.put(masked, host=up.host, mask="localhost:${PORT}")
    await routes.put(plain, host=up.host)
    r = http_request(proxy, "GET", "/echo", host=host(up.port, plain), headers={"x-cube-host": "evil:1"})
    body = r.json()
    assert r.status_code == 200 and body["host"] == host(up.port, plain)
    # A client's copy of the internal header is dropped, like the others.
    assert "x-cube-host" not in body["headers"] and "x-forwarded-host" not in body["headers"]
    # Header routing (E2B_SANDBOX_URL): the mask applies whatever Host the client used.
    r = http_request(proxy, "GET", "/echo", host="proxy.example",
                     headers={"E2b-Sandbox-Id": masked, "E2b-Sandbox-Port": str(up.port)})
    assert r.json()["host"] == f"localhost:{up.port}" and r.json()["headers"]["x-forwarded-host"] == "proxy.example"


@pytest.mark.parametrize("mask,want", [
    ("app.internal", "app.internal"),                      # no placeholder: the mask as it is
    ("${PORT}-app.example.com", "{port}-app.example.com"),  # the SDK's documented form
    ("127.0.0.1:${PORT}", "127.0.0.1:{port}"),
    ("Dev.Local:8080", "Dev.Local:8080"),
])
async def test_mask_forms(proxy, upstreams, routes, mask, want):
    up = upstreams[1]
    sid = new_id()
    await routes.put(sid, host=up.host, mask=mask)
    r = http_request(proxy, "GET", "/echo", host=host(up.port, sid))
    assert r.status_code == 200 and r.json()["host"] == want.format(port=up.port)


async def test_mask_behind_the_traffic_token(proxy, upstreams, routes):
    up = upstreams[0]
    sid = new_id()
    await routes.put(sid, host=up.host, token="tok-9", mask="localhost:${PORT}")
    h = host(up.port, sid)
    assert http_request(proxy, "GET", "/echo", host=h).status_code == 401
    assert http_request(proxy, "GET", "/echo", host=h, headers={"E2B-Traffic-Access-Token": "no"}).status_code == 403
    r = http_request(proxy, "GET", "/echo", host=h, headers={"E2B-Traffic-Access-Token": "tok-9"})
    assert r.status_code == 200 and r.json()["host"] == f"localhost:{up.port}"


async def test_mask_follows_route_updates(proxy, upstreams, routes):
    up = upstreams[0]
    sid = new_id()
    h = host(up.port, sid)
    await routes.put(sid, host=up.host)
    assert http_request(proxy, "GET", "/echo", host=h).json()["host"] == h
    await routes.put(sid, host=up.host, mask="masked:${PORT}")
    assert http_request(proxy, "GET", "/echo", host=h).json()["host"] == f"masked:{up.port}"
    await routes.put(sid, host=up.host, state=route_pb2.ROUTE_STATE_PAUSED, mask="masked:${PORT}")
    assert "is paused" in http_request(proxy, "GET", "/echo", host=h).json()["message"]
    await routes.put(sid, host=up.host, mask="masked:${PORT}")  # resumed: masked again
    assert http_request(proxy, "GET", "/echo", host=h).json()["host"] == f"masked:{up.port}"


ENVD_STANDIN = "127.0.0.79"  # no other test listens there (the real envd of conftest is on .77)


def _free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


async def test_envd_port_is_never_masked(proxy, routes):
    if not _free(ENVD_STANDIN, ENVD_PORT):
        pytest.skip(f"{ENVD_STANDIN}:{ENVD_PORT} is taken")
    envd = Upstream(ENVD_STANDIN, ENVD_PORT).start()
    try:
        sid = new_id()
        await routes.put(sid, host=ENVD_STANDIN, mask="localhost:${PORT}", token="tok-e")
        h = host(ENVD_PORT, sid)
        r = http_request(proxy, "GET", "/echo", host=h)  # envd's port needs no traffic token either
        assert r.status_code == 200 and r.json()["host"] == h
        assert "x-forwarded-host" not in r.json()["headers"]
        await routes.delete(sid)
    finally:
        envd.stop()


async def test_malformed_mask_skips_the_route(proxy, upstreams, routes):
    sid = new_id()
    await routes.put_raw(sid, route_json(sid, host=upstreams[0].host, mask="a b:${PORT}"))
    r = http_request(proxy, "GET", "/echo", host=host(upstreams[0].port, sid))
    assert r.status_code == 502 and "was not found" in r.json()["message"]


# ---- the rules, the records and the entries (no Envoy) ----------------------------------------

GOOD = ["localhost:${PORT}", "${PORT}-myapp.example.com", "app.internal", "a", "10.0.0.5:8080", "x_y-z.Q:65535",
        "${PORT}.${PORT}:${PORT}", "h:1", "a" * 255]
BAD = ["localhost:${PORT}\r\nX-Evil: 1", "a b", "host:", ":80", "host:0", "host:65536", "host:${PORT}0",
       "host:${port}", "${HOST}", "$PORT", "a..b", ".a", "a.", "[::1]:3000", "::1", "a/b", "a@b", "a%20b",
       "user:pass@host", "hé.example", "a\tb", "a\x00b", "a" * 256, "host:08080", "host:80:80", "a\n"]
# The OpenAPI document's schema of the field, as the API fuzz test reads it.
SCHEMA = jsonschema_rs.validator_for({"type": "string", "maxLength": host_mask.MAX_LEN, "pattern": host_mask.PATTERN})


@pytest.mark.parametrize("mask", GOOD)
def test_valid_masks(mask):
    assert host_mask.check(mask) == mask
    assert SCHEMA.is_valid(mask)  # the OpenAPI document says the same


@pytest.mark.parametrize("mask", BAD)
def test_invalid_masks(mask):
    with pytest.raises(host_mask.InvalidHostMask):
        host_mask.check(mask)
    assert not SCHEMA.is_valid(mask)


def test_expand():
    assert host_mask.check("") == ""  # no mask
    assert host_mask.expand("localhost:${PORT}", 3000) == "localhost:3000"
    assert host_mask.expand("${PORT}-a.b:${PORT}", 8) == "8-a.b:8"
    assert len(host_mask.expand("${PORT}" * 36, 65535)) <= host_mask.MAX_LEN


def test_route_records_carry_the_mask():
    p = "/cube/routes/"
    r = parse_route(p + "s1", route_json("s1", host="198.19.0.2", mask="localhost:${PORT}"), p, "n1")
    assert r.mask_request_host == "localhost:${PORT}"
    assert parse_route(p + "s1", route_json("s1", host="198.19.0.2"), p, "n1").mask_request_host == ""
    with pytest.raises(MalformedRoute, match="maskRequestHost"):
        parse_route(p + "s1", route_json("s1", host="198.19.0.2", mask="a\nb"), p, "n1")


def _entry(r: Route) -> dict:
    # Through the proto, as Envoy gets it (an invalid entry fails here).
    return json_format.MessageToDict(xds._parse(xds._on_match(r), xds.matcher_pb2.Matcher.OnMatch))


def test_entries():
    local = Route("s1", RouteState.RUNNING, host_address="198.19.0.2", mask_request_host="localhost:${PORT}")
    tree = _entry(local)["matcher"]
    envd = tree["matcherTree"]["exactMatchMap"]["map"][str(ENVD_PORT)]["action"]["typedConfig"]
    user = tree["onNoMatch"]["action"]["typedConfig"]
    assert "hostRewriteHeader" not in envd["route"] and user["route"]["hostRewriteHeader"] == xds.HOST_HEADER
    added = {h["header"]["key"]: h["header"]["value"] for h in user["requestHeadersToAdd"]}
    assert added[xds.HOST_HEADER] == "localhost:%DYNAMIC_METADATA(cube:port)%"
    # Another node's sandbox: forwarded with the client's Host; that node's proxy masks it.
    remote = Route("s2", RouteState.RUNNING, remote=Endpoint("10.0.0.2", 3002), node_id="n2",
                   mask_request_host="localhost:${PORT}")
    assert "hostRewriteHeader" not in _entry(remote)["action"]["typedConfig"]["route"]
    # Unmasked and token-less: one action, as before masks existed.
    assert "action" in _entry(Route("s3", RouteState.RUNNING, host_address="198.19.0.3"))
