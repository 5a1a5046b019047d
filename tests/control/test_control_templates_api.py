"""Template builds through the real API (E2B-shaped REST): POST /templates, build status, the
template while and after it is built, errors as {code, message}, DELETE refusal and force."""

from __future__ import annotations

import time

import httpx
import pytest

from sdk.gen.cube.v1 import cubelet_pb2 as C
from tests.control.templates_support import UUID_RE, only_the_job_left, reset

pytestmark = pytest.mark.timeout(90)
H = {"X-API-KEY": "e2b_" + "0" * 40}


@pytest.fixture
def ta(cluster):
    reset(cluster)
    yield cluster, cluster.cubelets[0]
    reset(cluster)


def api(c, method: str, path: str, **kw) -> httpx.Response:
    return httpx.request(method, c.api_url + path, headers={**H, **kw.pop("headers", {})}, timeout=30, **kw)


def assert_error(r: httpx.Response, status: int, text: str = "") -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"code", "message"} and body["code"] == status and isinstance(body["message"], str)
    assert text in body["message"], body["message"]
    return body["message"]


def wait_status(c, tid: str, bid: str, want=("ready", "error"), timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        r = api(c, "GET", f"/templates/{tid}/builds/{bid}/status")
        assert r.status_code == 200, r.text
        if r.json()["status"] in want:
            return r.json()
        assert time.monotonic() < deadline, r.json()
        time.sleep(0.05)


def test_post_templates_then_ready(ta):
    c, node = ta
    r = api(c, "POST", "/templates", json={
        "image": "registry.test:5000/web:2", "aliases": ["web"], "registryUsername": "u", "registryPassword": "pw",
        "cpuCount": 2, "memoryMB": 1024, "writableLayerSize": "512M", "exposePorts": [8080, 49983],
        "probePort": 8080, "probePath": "/health", "envVars": {"A": "1"}, "cmd": ["/srv"], "args": ["-p", "8080"]})
    assert r.status_code == 202, r.text
    assert set(r.json()) == {"templateID", "buildID"}
    tid, bid = r.json()["templateID"], r.json()["buildID"]
    assert UUID_RE.match(bid) and len(tid) == 20
    st = wait_status(c, tid, bid)
    assert st["status"] == "ready" and st["phase"] == "ready" and "reason" not in st
    assert (st["templateID"], st["buildID"], st["nodeID"], st["image"]) == (
        tid, bid, "node-a", "registry.test:5000/web:2")
    assert [e["step"] for e in st["logEntries"]] == ["pulling", "unpacking", "building_image", "booting", "probing",
                                                    "snapshotting", "ready"]
    assert all(isinstance(line, str) for line in st["logs"]) and "layers 3/3" in st["logs"][0]
    assert st["finishedAt"] and st["createdAt"]
    assert len(api(c, "GET", f"/templates/{tid}/builds/{bid}/status?logsOffset=5").json()["logEntries"]) == 2
    # The alias works in the path too.
    assert api(c, "GET", f"/templates/web/builds/{bid}/status").json()["buildID"] == bid
    (req,) = node.build_requests
    assert (req.writable_layer_mb, req.vcpus, req.memory_mb, list(req.expose_ports)) == (512, 2, 1024, [8080, 49983])
    assert (req.probe_port, req.probe_path, dict(req.env), list(req.cmd), list(req.args)) == (
        8080, "/health", {"A": "1"}, ["/srv"], ["-p", "8080"])
    assert (req.oci_image.username, req.oci_image.password) == ("u", "pw")
    t = api(c, "GET", f"/templates/{tid}").json()
    assert t["buildID"] == bid and t["buildStatus"] == "ready" and t["aliases"] == ["web"]
    assert t["builds"][0]["buildID"] == bid and t["builds"][0]["status"] == "ready" and t["diskSizeMB"] == 512
    listed = {x["templateID"]: x for x in api(c, "GET", "/templates").json()}
    assert listed[tid]["buildStatus"] == "ready" and listed[tid]["buildID"] == bid
    assert api(c, "GET", "/templates/aliases/web").json()["templateID"] == tid
    r = api(c, "POST", "/v2/sandboxes", json={"templateID": "web"})
    assert r.status_code == 201 and r.json()["templateID"] == tid


def test_template_being_built_shows_its_build(ta):
    c, node = ta
    node.build_hold_at = C.BOOTING
    r = api(c, "POST", "/templates", json={"image": "app:1", "templateID": "slow-one"})
    assert r.status_code == 202
    bid = r.json()["buildID"]
    assert node.build_waiting.wait(10)
    st = wait_status(c, "slow-one", bid, want=("building",))
    assert st["phase"] in ("pulling", "unpacking", "building_image") and st["finishedAt"] is None
    st = wait_status(c, "slow-one", bid, want=("building",))
    t = api(c, "GET", "/templates/slow-one").json()
    assert t["buildStatus"] == "building" and t["buildID"] == bid
    assert t["builds"][0]["status"] == "building" and t["builds"][0]["progress"]["layersTotal"] in (0, 3)
    assert_error(api(c, "POST", "/templates", json={"image": "app:1", "templateID": "slow-one"}), 409, "being built")
    assert_error(api(c, "DELETE", "/templates/slow-one?force=true"), 409, "being built")
    node.build_gate.set()
    assert wait_status(c, "slow-one", bid)["status"] == "ready"


def test_failed_build_status_has_the_reason(ta):
    c, node = ta
    tail = ("probe :8080/health did not answer within 60s\n--- guest console (tail) ---\n[ 3.2] init: /srv exited 1\n"
            "--- service output (tail) ---\nerror: cannot bind 0.0.0.0:8080")
    node.build_fail = (C.PROBING, tail)
    r = api(c, "POST", "/templates", json={"image": "app:broken", "templateID": "broken", "aliases": ["broken-alias"]})
    assert r.status_code == 202
    bid = r.json()["buildID"]
    st = wait_status(c, "broken", bid)
    assert st["status"] == "error" and st["reason"]["message"] == tail and st["reason"]["step"] == "probing"
    assert st["logEntries"][-1]["level"] == "error" and "cannot bind" in st["logEntries"][-1]["message"]
    assert st["reason"]["logEntries"] == [st["logEntries"][-1]]
    assert_error(api(c, "GET", "/templates/broken"), 404)
    assert_error(api(c, "GET", "/templates/aliases/broken-alias"), 404)
    only_the_job_left(c, "broken", bid)


@pytest.mark.parametrize("body,text", [
    ({}, "'image' is required"),
    ({"image": 7}, "'image' is required"),
    ({"image": "  "}, "'image' is required"),
    ({"dockerfile": "FROM python:3"}, "E2B template definitions go to POST /v3/templates"),
    ({"image": "a:1", "fromImage": "b"}, "takes a container image reference"),
    ({"image": "a:1", "writableLayerSize": "lots"}, "writableLayerSize"),
    ({"image": "a:1", "writableLayerSize": True}, "writableLayerSize"),
    ({"image": "a:1", "exposePorts": "80"}, "exposePorts"),
    ({"image": "a:1", "exposePorts": [0]}, "exposePorts"),
    ({"image": "a:1", "cpuCount": "2"}, "cpuCount"),
    ({"image": "a:1", "memoryMB": 10}, "memoryMB"),
    ({"image": "a:1", "registryUsername": "u"}, "go together"),
    ({"image": "a:1", "envVars": ["A=1"]}, "envVars"),
    ({"image": "a:1", "envVars": {"1BAD": "x"}}, "invalid environment variable"),
    ({"image": "a:1", "templateID": "bad/id"}, "invalid template id"),
    ({"image": "a:1", "probePath": "no-slash"}, "invalid probe path"),
    ({"image": "a:1", "cmd": "/bin/sh"}, "'cmd'"),
    # Beyond the operator's maximums (services/master/settings.py: 16 vCPUs, 32 GiB, 100 GiB).
    ({"image": "a:1", "cpuCount": 17}, "between 1 and 16"),
    ({"image": "a:1", "memoryMB": 40000}, "between 64 and 32768"),
    ({"image": "a:1", "writableLayerSize": "200G"}, "at most 102400"),
    # A team names registry images only: files on the node are the operator's (cubemastercli).
    ({"image": "oci-archive:/etc/shadow"}, "local image paths"),
    ({"image": "docker-archive:/var/lib/cube/x.tar"}, "local image paths"),
    ({"image": "oci:/var/lib/cube:latest"}, "local image paths"),
])
def test_bad_bodies_are_400(ta, body, text):
    c, node = ta
    assert_error(api(c, "POST", "/templates", json=body), 400, text)
    assert c.keys("template-builds/") == [] and node.build_requests == []


def test_invalid_json_and_ids_in_use(ta):
    c, node = ta
    assert_error(api(c, "POST", "/templates", content=b"{nope", headers={"Content-Type": "application/json"}), 400)
    assert_error(api(c, "POST", "/templates", json={"image": "a:1", "templateID": "tiny"}), 409, "already exists")
    assert_error(api(c, "POST", "/templates", json={"image": "a:1", "templateID": "base"}), 409, "alias")
    assert_error(api(c, "POST", "/templates", json={"image": "a:1", "aliases": ["base"]}), 409, "alias 'base'")
    assert c.keys("template-builds/") == [] and node.build_requests == []


def test_unknown_build_is_404(ta):
    c, _node = ta
    bid = api(c, "POST", "/templates", json={"image": "a:1", "templateID": "known"}).json()["buildID"]
    wait_status(c, "known", bid)
    assert_error(api(c, "GET", "/templates/known/builds/0b3f9c1e-8a59-4c4b-9f0e-3d2a1b0c9d8e/status"), 404)
    assert_error(api(c, "GET", "/templates/known/builds/not-a-uuid/status"), 404)
    assert_error(api(c, "GET", f"/templates/tiny/builds/{bid}/status"), 404)
    assert_error(api(c, "GET", f"/templates/known/builds/{bid}/status?logsOffset=-1"), 400)


def test_delete_409_names_sandboxes_then_force(ta):
    c, node = ta
    bid = api(c, "POST", "/templates", json={"image": "a:1", "templateID": "busy"}).json()["buildID"]
    wait_status(c, "busy", bid)
    sid = api(c, "POST", "/v2/sandboxes", json={"templateID": "busy"}).json()["sandboxID"]
    msg = assert_error(api(c, "DELETE", "/templates/busy"), 409, f"{sid} (running)")
    assert "force" in msg
    assert_error(api(c, "DELETE", "/templates/busy?force=maybe"), 400)
    assert api(c, "DELETE", "/templates/busy?force=true").status_code == 204
    assert_error(api(c, "GET", f"/sandboxes/{sid}"), 404)
    assert_error(api(c, "GET", "/templates/busy"), 404)
    assert "busy" in node.calls_of("DeleteTemplate") and "busy" not in node.templates
    # The build's history stays readable.
    assert wait_status(c, "busy", bid)["status"] == "ready"


def test_openapi_documents_template_builds(cluster):
    doc = httpx.get(cluster.api_url + "/openapi.json").json()
    assert "/v3/templates" in doc["info"]["description"]
    assert {"/v3/templates", "/v2/templates/{templateID}/builds/{buildID}"} <= set(doc["paths"])
    post = doc["paths"]["/templates"]["post"]
    assert "202" in post["responses"] and "409" in post["responses"]
    schema = doc["components"]["schemas"]["NewTemplateBuild"]
    assert "template definitions" in schema["description"]
    assert {"image", "writableLayerSize", "exposePorts", "probePort", "registryPassword"} <= set(schema["properties"])
    assert "/templates/{templateID}/builds/{buildID}/status" in doc["paths"]
    assert any(p["name"] == "force" for p in doc["paths"]["/templates/{templateID}"]["delete"]["parameters"])
