"""Every sandbox endpoint's happy path and status code, driven by the unmodified E2B SDK where
its control-plane calls reach the endpoint, and by raw HTTP for what the SDK hides (status codes,
headers, the older SDKs' v1 paths)."""

from __future__ import annotations

import re
import time

import httpx
import pytest
from e2b import Sandbox, SandboxQuery, SandboxState
from e2b_code_interpreter import Sandbox as CodeSandbox

pytestmark = pytest.mark.timeout(60)
H = {"X-API-KEY": "e2b_" + "0" * 40}


def api(cluster, method: str, path: str, **kw) -> httpx.Response:
    return httpx.request(method, cluster.api_url + path, headers={**H, **kw.pop("headers", {})}, timeout=30, **kw)


def test_create_answers_201_with_the_sandbox_body(fresh):
    r = api(fresh, "POST", "/v2/sandboxes", json={"templateID": "base", "metadata": {}, "envVars": {"A": "1"}})
    assert r.status_code == 201, r.text
    body = r.json()
    assert re.fullmatch(r"[a-z0-9]{20}", body["sandboxID"])
    assert body["templateID"] == "code-interpreter" and body["alias"] == "base"
    assert body["domain"] == "cube.localhost"
    assert body["envdVersion"] == "0.6.13"
    assert len(body["envdAccessToken"]) >= 32 and body["clientID"]
    sid = body["sandboxID"]
    # The record is RUNNING and its route points at the node's proxy and the VM's address.
    rec = fresh.record(sid)
    assert rec["phase"] == "SANDBOX_PHASE_RUNNING" and rec["nodeId"] == "node-a"
    route = fresh.etcd.get_json(f"{fresh.prefix}/routes/{sid}")
    node = fresh.cubelets[0]
    assert route["nodeProxyAddress"] == node.proxy_address and route["state"] == "ROUTE_STATE_RUNNING"
    assert route["hostAddress"] == node.sandboxes[sid].host_address
    # The guest got the token and env the API returned.
    assert node.calls_of("RunSandbox") == [sid]


def test_sdk_create_info_list_kill(sdk_env, fresh):
    sbx = Sandbox.create(metadata={"user": "alice"}, timeout=120)
    info = sbx.get_info()
    assert info.sandbox_id == sbx.sandbox_id and info.state == SandboxState.RUNNING
    assert info.metadata == {"user": "alice"} and info.template_id == "code-interpreter" and info.name == "base"
    assert 110 <= (info.end_at - info.started_at).total_seconds() <= 121
    assert info.cpu_count == 1 and info.memory_mb == 512 and info.envd_version == "0.6.13"
    listed = Sandbox.list(query=SandboxQuery(metadata={"user": "alice"})).next_items()
    assert [s.sandbox_id for s in listed] == [sbx.sandbox_id]
    assert sbx.kill() is True
    assert sbx.kill() is False  # 404 -> False
    assert fresh.sandbox_ids() == set() and fresh.route_ids() == set()
    assert fresh.cubelets[0].ids() == set()


def test_code_interpreter_default_template_resolves(sdk_env, fresh):
    sbx = CodeSandbox.create()
    try:
        assert sbx.get_info().template_id == "code-interpreter"
        assert fresh.record(sbx.sandbox_id)["alias"] == "code-interpreter-v1"
    finally:
        sbx.kill()


def test_sdk_set_timeout_moves_end_time_both_ways(sdk_env, fresh):
    sbx = Sandbox.create(timeout=60)
    sbx.set_timeout(600)
    left = (sbx.get_info().end_at.timestamp() - time.time())
    assert 590 <= left <= 601
    sbx.set_timeout(30)  # may shorten
    left = (sbx.get_info().end_at.timestamp() - time.time())
    assert 20 <= left <= 31
    r = api(fresh, "POST", f"/sandboxes/{sbx.sandbox_id}/timeout", json={"timeout": 40})
    assert r.status_code == 204 and r.content == b""
    sbx.kill()


def test_sdk_pause_then_connect_resumes(sdk_env, fresh):
    sbx = Sandbox.create(timeout=120)
    sid = sbx.sandbox_id
    assert sbx.pause() is True
    assert sbx.pause() is False  # already paused: 409 -> False
    assert sbx.get_info().state == SandboxState.PAUSED
    assert fresh.etcd.get_json(f"{fresh.prefix}/routes/{sid}")["state"] == "ROUTE_STATE_PAUSED"
    paused = Sandbox.list(query=SandboxQuery(state=[SandboxState.PAUSED])).next_items()
    assert [s.sandbox_id for s in paused] == [sid]
    assert Sandbox.list(query=SandboxQuery(state=[SandboxState.RUNNING])).next_items() == []

    again = Sandbox.connect(sid)  # resumes
    assert again.sandbox_id == sid and again.get_info().state == SandboxState.RUNNING
    assert fresh.etcd.get_json(f"{fresh.prefix}/routes/{sid}")["state"] == "ROUTE_STATE_RUNNING"
    node = fresh.cubelets[0]
    assert node.calls_of("PauseSandbox") == [sid] and node.calls_of("ResumeSandbox") == [sid]
    sbx.kill()


def test_connect_status_codes_and_ttl_only_extended(fresh):
    sid = api(fresh, "POST", "/v2/sandboxes", json={"templateID": "base", "timeout": 300}).json()["sandboxID"]
    end0 = fresh.record(sid)["endAt"]
    r = api(fresh, "POST", f"/v2/sandboxes/{sid}/connect", json={"timeout": 10})
    assert r.status_code == 200, r.text  # running: 200
    assert r.json()["envdAccessToken"] and r.json()["domain"] == "cube.localhost"
    assert fresh.record(sid)["endAt"] == end0  # a shorter timeout does not shorten it
    r = api(fresh, "POST", f"/v2/sandboxes/{sid}/connect", json={"timeout": 900})
    assert r.status_code == 200 and fresh.record(sid)["endAt"] > end0
    assert api(fresh, "POST", f"/sandboxes/{sid}/pause", json={}).status_code == 204
    r = api(fresh, "POST", f"/v2/sandboxes/{sid}/connect", content=b"")  # no body at all is fine too
    assert r.status_code == 201, r.text  # resumed: 201
    assert api(fresh, "DELETE", f"/sandboxes/{sid}").status_code == 204


def test_sdk_metrics(sdk_env, fresh):
    sbx = Sandbox.create()
    metrics = sbx.get_metrics()
    assert len(metrics) == 2 and metrics[0].cpu_count == 1 and metrics[0].mem_total == 512 << 20
    r = api(fresh, "GET", f"/sandboxes/{sbx.sandbox_id}/metrics", params={"start": int(time.time()) - 2})
    assert r.status_code == 200 and len(r.json()) == 1
    assert set(r.json()[0]) == {"timestamp", "timestampUnix", "cpuCount", "cpuUsedPct", "memUsed", "memTotal",
                                "memCache", "diskUsed", "diskTotal"}
    r = api(fresh, "GET", "/sandboxes/metrics", params={"sandbox_ids": f"{sbx.sandbox_id},nosuchsandbox"})
    assert r.status_code == 200 and list(r.json()["sandboxes"]) == [sbx.sandbox_id]
    sbx.kill()


def test_v1_paths_of_older_sdks(fresh):
    r = api(fresh, "POST", "/sandboxes", json={"templateID": "base", "timeout": 300, "secure": True,
                                                "allow_internet_access": True, "metadata": {"v": "1"}, "envVars": {}})
    assert r.status_code == 201, r.text
    sid = r.json()["sandboxID"]
    listed = api(fresh, "GET", "/sandboxes").json()
    assert [s["sandboxID"] for s in listed] == [sid]
    detail = api(fresh, "GET", f"/sandboxes/{sid}").json()  # SDK 1.3.1-2.5 connect through this
    assert detail["envdAccessToken"] == r.json()["envdAccessToken"] and detail["domain"] == "cube.localhost"
    # SDK <= 1.5.6 address it as <sandboxID>-<clientID>.
    assert api(fresh, "GET", f"/sandboxes/{sid}-{r.json()['clientID']}").status_code == 200
    assert api(fresh, "POST", f"/sandboxes/{sid}/resume", json={"timeout": 300}).status_code == 409  # running
    assert api(fresh, "POST", f"/sandboxes/{sid}/connect", json={"timeout": 300}).status_code == 200
    assert api(fresh, "POST", f"/sandboxes/{sid}/pause", json={"memory": True}).status_code == 204
    assert api(fresh, "GET", "/sandboxes").json() == []  # v1 lists running ones
    r = api(fresh, "POST", f"/sandboxes/{sid}/resume", json={"autoPause": False, "timeout": 300})
    assert r.status_code == 201 and r.json()["sandboxID"] == sid
    end0 = fresh.record(sid)["endAt"]
    assert api(fresh, "POST", f"/sandboxes/{sid}/refreshes", json={"duration": 5}).status_code == 204
    assert fresh.record(sid)["endAt"] == end0  # refreshes never shorten
    assert api(fresh, "POST", f"/sandboxes/{sid}/refreshes", json={"duration": 3600}).status_code == 204
    assert fresh.record(sid)["endAt"] > end0
    assert api(fresh, "DELETE", f"/sandboxes/{sid}").status_code == 204


def test_logs_v1_and_v2(fresh):
    sid = api(fresh, "POST", "/v2/sandboxes", json={"templateID": "base"}).json()["sandboxID"]
    r = api(fresh, "GET", f"/sandboxes/{sid}/logs", params={"start": 0, "limit": 10})
    assert r.status_code == 200
    assert [entry["line"] for entry in r.json()["logs"]] == ["booted", "envd ready"]
    assert r.json()["logEntries"][0]["level"] == "info"
    r = api(fresh, "GET", f"/v2/sandboxes/{sid}/logs", params={"direction": "backward"})
    assert r.status_code == 200 and [entry["message"] for entry in r.json()["logs"]] == ["envd ready", "booted"]
    assert api(fresh, "GET", "/sandboxes/nosuchsandbox/logs").status_code == 404


def test_update_network(fresh):
    sid = api(fresh, "POST", "/v2/sandboxes", json={"templateID": "base", "allow_internet_access": False,
                                                     "network": {"allowOut": ["10.1.0.0/16"]}}).json()["sandboxID"]
    node = fresh.cubelets[0]
    assert node.sandboxes[sid].network.allow_internet_access is False
    assert list(node.sandboxes[sid].network.allow_out) == ["10.1.0.0/16"]
    r = api(fresh, "PUT", f"/sandboxes/{sid}/network", json={"denyOut": ["8.8.8.8/32"], "allow_internet_access": True})
    assert r.status_code == 204, r.text
    assert list(node.sandboxes[sid].network.deny_out) == ["8.8.8.8/32"]
    detail = api(fresh, "GET", f"/sandboxes/{sid}").json()
    assert detail["network"]["denyOut"] == ["8.8.8.8/32"] and detail["allowInternetAccess"] is True


def test_private_traffic_mints_a_token_the_route_carries(fresh):
    """allowPublicTraffic false: the create answers a trafficAccessToken and the route the proxies
    read carries it (the proxy's check is tested with real Envoy in tests/proxy); a network
    update cannot drop the rule; public sandboxes have no token."""
    body = {"templateID": "base", "network": {"allowPublicTraffic": False}}
    r = api(fresh, "POST", "/v2/sandboxes", json=body)
    assert r.status_code == 201, r.text
    sid, token = r.json()["sandboxID"], r.json()["trafficAccessToken"]
    assert token and len(token) == 32
    route = fresh.etcd.get_json(f"{fresh.prefix}/routes/{sid}")
    assert route["trafficAccessToken"] == token
    r = api(fresh, "PUT", f"/sandboxes/{sid}/network", json={"allowPublicTraffic": True, "denyOut": ["8.8.8.8/32"]})
    assert r.status_code == 204, r.text
    assert fresh.record(sid)["network"]["requireTrafficToken"] is True
    assert fresh.etcd.get_json(f"{fresh.prefix}/routes/{sid}")["trafficAccessToken"] == token
    other = api(fresh, "POST", "/v2/sandboxes", json={"templateID": "base"}).json()
    assert other["trafficAccessToken"] is None
    assert "trafficAccessToken" not in fresh.etcd.get_json(f"{fresh.prefix}/routes/{other['sandboxID']}")


def test_mask_request_host_travels_to_the_route_and_stays(sdk_env, fresh):
    """network.maskRequestHost from the unmodified SDK: on the record, on the route the proxies
    read (the proxy's rewrite is tested with real Envoy in tests/proxy), on GET; a network update,
    a pause and a resume keep it; an empty one is none."""
    sbx = Sandbox.create(network={"mask_request_host": "localhost:${PORT}"})
    sid = sbx.sandbox_id
    route = lambda: fresh.etcd.get_json(f"{fresh.prefix}/routes/{sid}")  # noqa: E731
    assert fresh.record(sid)["network"]["maskRequestHost"] == "localhost:${PORT}"
    assert route()["maskRequestHost"] == "localhost:${PORT}"
    assert (sbx.get_info().network or {}).get("mask_request_host") == "localhost:${PORT}"
    sbx.update_network({"deny_out": ["8.8.8.8/32"]})  # E2B's update replaces every egress rule
    assert fresh.record(sid)["network"]["maskRequestHost"] == "localhost:${PORT}"
    assert route()["maskRequestHost"] == "localhost:${PORT}"
    assert sbx.pause() is True
    assert route()["state"] == "ROUTE_STATE_PAUSED" and route()["maskRequestHost"] == "localhost:${PORT}"
    Sandbox.connect(sid)
    assert route()["state"] == "ROUTE_STATE_RUNNING" and route()["maskRequestHost"] == "localhost:${PORT}"
    assert (Sandbox.get_info(sid).network or {}).get("mask_request_host") == "localhost:${PORT}"
    sbx.kill()
    other = api(fresh, "POST", "/v2/sandboxes", json={"templateID": "base", "network": {"maskRequestHost": ""}})
    assert other.status_code == 201, other.text
    assert "maskRequestHost" not in fresh.etcd.get_json(f"{fresh.prefix}/routes/{other.json()['sandboxID']}")


def test_https_ports_travel_to_the_route_and_stay(sdk_env, fresh):
    """network.httpsPorts from the unmodified SDK: sorted and unique on the record and on the route
    the proxies read (the TLS hop is tested with real Envoy in tests/proxy), on GET; a network
    update, a pause and a resume keep them; none is no key."""
    sbx = Sandbox.create(network={"https_ports": [8443, 3000, 8443]})
    sid = sbx.sandbox_id
    route = lambda: fresh.etcd.get_json(f"{fresh.prefix}/routes/{sid}")  # noqa: E731
    assert fresh.record(sid)["network"]["httpsPorts"] == [3000, 8443]
    assert route()["httpsPorts"] == [3000, 8443]
    assert (sbx.get_info().network or {}).get("https_ports") == [3000, 8443]
    sbx.update_network({"deny_out": ["8.8.8.8/32"]})
    assert fresh.record(sid)["network"]["httpsPorts"] == [3000, 8443]
    assert sbx.pause() is True
    assert route()["state"] == "ROUTE_STATE_PAUSED" and route()["httpsPorts"] == [3000, 8443]
    Sandbox.connect(sid)
    assert route()["state"] == "ROUTE_STATE_RUNNING" and route()["httpsPorts"] == [3000, 8443]
    sbx.kill()
    other = api(fresh, "POST", "/v2/sandboxes", json={"templateID": "base", "network": {"httpsPorts": []}})
    assert other.status_code == 201, other.text
    assert "httpsPorts" not in fresh.etcd.get_json(f"{fresh.prefix}/routes/{other.json()['sandboxID']}")
    assert "httpsPorts" not in api(fresh, "GET", f"/sandboxes/{other.json()['sandboxID']}").json()["network"]


def test_dns_servers_are_checked_and_empty_rules_are_none(sdk_env, fresh):
    """network.dnsServers as the SDK sends them: accepted (they only matter with domains in
    allowOut, which this server refuses); an empty `rules` object is no rule."""
    sbx = Sandbox.create(network={"dns_servers": ["1.1.1.1", "9.9.9.9"], "rules": {}})
    sbx.update_network({"dns_servers": [], "deny_out": ["8.8.8.8/32"]})
    assert fresh.record(sbx.sandbox_id)["network"]["denyOut"] == ["8.8.8.8/32"]
    sbx.kill()


def test_auto_pause_lifecycle_reported(sdk_env, fresh):
    sbx = Sandbox.create(lifecycle={"on_timeout": "pause"})
    info = sbx.get_info()
    assert info.lifecycle is not None and info.lifecycle["on_timeout"] == "pause"
    assert fresh.record(sbx.sandbox_id)["autoPause"] is True
    sbx.kill()


def test_templates_list_get_alias_delete(fresh):
    r = api(fresh, "GET", "/templates")
    assert r.status_code == 200
    by_id = {t["templateID"]: t for t in r.json()}
    assert sorted(by_id["code-interpreter"]["aliases"]) == ["base", "code-interpreter-v1"]
    assert by_id["tiny"]["buildStatus"] == "ready" and by_id["tiny"]["envdVersion"] == "0.6.13"
    r = api(fresh, "GET", "/templates/base")
    assert r.status_code == 200 and r.json()["templateID"] == "code-interpreter" and len(r.json()["builds"]) == 1
    r = api(fresh, "GET", "/templates/aliases/code-interpreter-v1")
    assert r.status_code == 200 and r.json() == {"templateID": "code-interpreter", "public": True}
    assert api(fresh, "GET", "/templates/aliases/nope").status_code == 404
    # In use: 409; after its sandbox is gone: 204, then 404.
    sid = api(fresh, "POST", "/v2/sandboxes", json={"templateID": "tiny"}).json()["sandboxID"]
    r = api(fresh, "DELETE", "/templates/tiny")
    assert r.status_code == 409 and r.json()["code"] == 409
    api(fresh, "DELETE", f"/sandboxes/{sid}")
    assert api(fresh, "DELETE", "/templates/tiny").status_code == 204
    assert "tiny" not in fresh.cubelets[0].templates
    assert api(fresh, "GET", "/templates/tiny").status_code == 404
    assert api(fresh, "DELETE", "/templates/tiny").status_code == 404
    fresh.cubelets[0].templates = ("code-interpreter", "tiny")  # give it back for later tests


def test_openapi_describes_every_route(cluster):
    from services.api.app import create_app
    from services.api.settings import Settings

    r = httpx.get(cluster.api_url + "/openapi.json")  # no key needed
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.") and "ApiKeyAuth" in doc["components"]["securitySchemes"]
    documented = {(m.upper(), re.sub(r"\{[^}]+\}", "{}", p)) for p, ops in doc["paths"].items() for m in ops}
    from services.api.routes.console import is_public as console_path

    app = create_app(Settings())
    served = set()
    for route in app.router.routes:
        if console_path("/" + route.path.lstrip("/")):
            continue  # the web console's HTML and assets: no API
        path = "/" + re.sub(r"<[^>]+>", "{}", route.path).lstrip("/")
        for m in route.methods:
            if m not in ("HEAD", "OPTIONS"):
                served.add((m, path))
    assert served == documented
    # Every operation names its error body.
    for ops in doc["paths"].values():
        for op in ops.values():
            for code, resp in op["responses"].items():
                if int(code) >= 400:
                    assert resp["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
