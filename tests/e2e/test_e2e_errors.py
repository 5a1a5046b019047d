"""Bad input against the real node: every answer is an E2B error body `{"code": <status>,
"message": <text>}` with the right status, the SDK turns it into the right exception, and nothing is
created or left behind by a refused request."""
from __future__ import annotations

import pytest
from e2b import SandboxException, SandboxNotFoundException
from e2b_code_interpreter import Sandbox

from tests.e2e import cluster
from tests.e2e.run import tag

UNKNOWN = "nosuchsandbox0000000"


def assert_error(r, status: int, *words: str) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert isinstance(body, dict) and body.get("code") == status and isinstance(body.get("message"), str), body
    assert body["message"], body
    for w in words:
        assert w.lower() in body["message"].lower(), (w, body)
    return body


def etcd_ids() -> set[str]:
    return set(cluster.etcd_sandboxes())


@pytest.mark.parametrize("body, status, words", [
    (b"{not json", 400, ("json",)),
    (b"[1, 2]", 400, ("object",)),
    (b'{"templateID": 7}', 400, ("templateID",)),
    (b'{"metadata": {}}', 400, ("templateID",)),
    (b'{"templateID": "no-such-template-xyz", "metadata": {}, "envVars": {}}', 404, ("no-such-template-xyz",)),
    (b'{"templateID": "base", "timeout": -5}', 400, ("timeout",)),
    (b'{"templateID": "base", "timeout": 86401}', 400, ("timeout",)),
    (b'{"templateID": "base", "timeout": 1099511627776}', 400, ("timeout",)),
    (b'{"templateID": "base", "timeout": "60"}', 400, ("timeout",)),
    (b'{"templateID": "base", "timeout": 1.5}', 400, ("timeout",)),
    (b'{"templateID": "base", "metadata": {"k": 1}}', 400, ("metadata",)),
    (b'{"templateID": "base", "envVars": ["A=1"]}', 400, ("envVars",)),
], ids=["invalid-json", "not-object", "template-type", "no-template", "unknown-template", "negative-timeout",
        "timeout-over-max", "huge-timeout", "string-timeout", "float-timeout", "metadata-type", "envvars-type"])
def test_create_bad_input(api, body, status, words):
    before = etcd_ids()
    r = api.post("/v2/sandboxes", content=body, headers={"Content-Type": "application/json"})
    assert_error(r, status, *words)
    assert etcd_ids() <= before, "a refused create left a record"


def test_create_oversized_metadata_and_body(api):
    before = etcd_ids()
    assert_error(api.post("/v2/sandboxes", json={"templateID": "base", "metadata": {"k": "x" * 9000}}), 400,
                 "metadata")
    assert_error(api.post("/v2/sandboxes", json={"templateID": "base",
                                                 "metadata": {f"k{i}": "v" for i in range(65)}}), 400, "metadata")
    assert_error(api.post("/v2/sandboxes", json={"templateID": "base", "envVars": {"BIG": "x" * 70000}}), 400)
    assert_error(api.post("/v2/sandboxes", content=b"{" + b" " * (2 << 20) + b"}"), 413)
    assert etcd_ids() <= before


def test_create_errors_through_the_sdk():
    with pytest.raises(SandboxException) as ei:
        Sandbox.create(template="no-such-template-xyz", metadata=tag())
    assert "404" in str(ei.value) and "no-such-template-xyz" in str(ei.value)
    with pytest.raises(SandboxException) as ei:
        Sandbox.create(timeout=10**6, metadata=tag())
    assert "400" in str(ei.value)
    with pytest.raises(SandboxException) as ei:
        Sandbox.create(metadata=tag({f"k{i}": "v" for i in range(70)}))
    assert "400" in str(ei.value) and "metadata" in str(ei.value)


@pytest.mark.parametrize("method, path, body", [
    ("GET", f"/sandboxes/{UNKNOWN}", None),
    ("DELETE", f"/sandboxes/{UNKNOWN}", None),
    ("POST", f"/sandboxes/{UNKNOWN}/pause", {}),
    ("POST", f"/sandboxes/{UNKNOWN}/timeout", {"timeout": 30}),
    ("POST", f"/v2/sandboxes/{UNKNOWN}/connect", {}),
    ("GET", f"/sandboxes/{UNKNOWN}/metrics", None),
], ids=["get", "kill", "pause", "timeout", "connect", "metrics"])
def test_unknown_sandbox_is_404(api, method, path, body):
    assert_error(api.request(method, path, json=body), 404, UNKNOWN)


def test_list_bad_query(api):
    assert_error(api.get("/v2/sandboxes", params={"state": "sleeping"}), 400, "state")
    assert_error(api.get("/v2/sandboxes", params={"limit": "0"}), 400, "limit")
    assert_error(api.get("/v2/sandboxes", params={"limit": "many"}), 400, "limit")
    assert_error(api.get("/v2/sandboxes", params={"order": "sideways"}), 400, "order")
    assert_error(api.get("/v2/sandboxes", params={"metadata": "novalue"}), 400, "metadata")


def test_missing_key_is_401(api):
    import httpx

    r = httpx.post(f"{cluster.API_URL}/v2/sandboxes", json={"templateID": "base"}, timeout=30)
    assert_error(r, 401)
    r = httpx.get(f"{cluster.API_URL}/v2/sandboxes", headers={"X-API-KEY": ""}, timeout=30)
    assert_error(r, 401)


def test_kill_twice_pause_twice_and_bad_timeouts(api, sandboxes):
    sbx = sandboxes.create({"case": "errors"})
    sid = sbx.sandbox_id
    assert_error(api.post(f"/sandboxes/{sid}/timeout", json={"timeout": -1}), 400, "timeout")
    assert_error(api.post(f"/sandboxes/{sid}/timeout", json={"timeout": 10**9}), 400, "timeout")
    assert_error(api.post(f"/sandboxes/{sid}/timeout", content=b"nope"), 400)
    assert_error(api.post(f"/sandboxes/{sid}/timeout", json={}), 400, "timeout")
    assert sbx.is_running()

    r = api.post(f"/sandboxes/{sid}/pause", json={})
    assert r.status_code == 204, r.text
    assert_error(api.post(f"/sandboxes/{sid}/pause", json={}), 409)  # pause a paused sandbox
    assert Sandbox.pause(sid) is False                                   # the SDK's view of that 409
    r = api.get(f"/sandboxes/{sid}")
    assert r.status_code == 200 and r.json()["state"] == "paused"

    r = api.delete(f"/sandboxes/{sid}")
    assert r.status_code == 204, r.text
    assert_error(api.delete(f"/sandboxes/{sid}"), 404, sid)             # kill twice
    assert Sandbox.kill(sid) is False
    assert_error(api.post(f"/sandboxes/{sid}/pause", json={}), 404)
    assert_error(api.post(f"/v2/sandboxes/{sid}/connect", json={}), 404)
    with pytest.raises(SandboxNotFoundException):
        Sandbox.connect(sid)
    cluster.wait_until(lambda: not cluster.traces_of(sid), 30, what=f"{sid} gone everywhere")
