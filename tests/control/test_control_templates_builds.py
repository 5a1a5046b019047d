"""Template builds through the real master (gRPC), against a real etcd and the fake cubelet's
scripted BuildTemplate: job lifecycle, watch (replay + live), READY -> a usable template, FAILED
and broken streams -> nothing left but the job, ids in use, bad input, and delete refusal/force."""

from __future__ import annotations

import threading
import time
from typing import cast

import grpc
import httpx
import pytest

from sdk.gen.cube.v1 import cubelet_pb2 as C, master_pb2 as P
from services.master.builds import Builds
from services.master.nodes import NodeClients
from services.master.settings import Settings
from services.master.store import Store
from services.master.templates import Templates
from tests.control.cluster import wait_until
from tests.control.templates_support import (
    PHASES,
    UUID_RE,
    details,
    oci,
    only_the_job_left,
    reset,
    rpc_error,
    state_about,
    wait_job,
)

pytestmark = pytest.mark.timeout(90)
H = {"X-API-KEY": "k"}
SECRET = "s3cr3t-registry-password"


@pytest.fixture
def tb(cluster):
    reset(cluster)
    ch, stub = cluster.master_stub()
    yield cluster, stub, cluster.cubelets[0]
    ch.close()
    reset(cluster)


def start(stub, build=None, aliases=(), **kw) -> P.TemplateBuild:
    return stub.CreateTemplateBuild(P.CreateTemplateBuildRequest(build=build or oci(**kw), aliases=list(aliases)),
                                    timeout=10)


def watch(stub, job_id: str) -> list[C.TemplateBuildEvent]:
    return list(stub.WatchTemplateBuild(P.WatchTemplateBuildRequest(job_id=job_id), timeout=30))


def names(events) -> list[str]:
    return [C.TemplateBuildPhase.Name(e.phase) for e in events]


def test_build_ready_template_usable(tb):
    cluster, stub, node = tb
    job = start(stub, oci("registry.test:5000/app:1.0", username="bob", password=SECRET, writable_layer_mb=2048,
                          expose_ports=[49999, 49983], probe_port=49999, probe_path="/health", vcpus=2,
                          memory_mb=1024, env={"MODE": "prod"}, cmd=["/bin/app"], args=["--port", "49999"]),
                aliases=["my-app"])
    assert UUID_RE.match(job.job_id) and job.node_id == "node-a"
    assert len(job.template_id) == 20 and job.template_id.isalnum() and job.template_id == job.template_id.lower()
    tid = job.template_id
    done = wait_job(stub, job.job_id)
    assert done.phase == C.READY, done.error
    assert done.HasField("finished_at") and done.template.snapshot_bytes == 64 << 20
    # Progress events of one phase are coalesced: one event per phase, the last PULLING complete.
    assert names(done.events) == PHASES + ["READY"] and done.events_dropped == 0
    assert done.events[0].bytes_done == done.events[0].bytes_total == 30 << 20
    assert done.events[0].layers_done == 3
    # The node got everything, credentials included; etcd never saw them.
    (req,) = node.build_requests
    assert req.template_id == tid and req.oci_image.username == "bob" and req.oci_image.password == SECRET
    assert (req.writable_layer_mb, list(req.expose_ports), req.probe_port, req.probe_path) == (
        2048, [49999, 49983], 49999, "/health")
    assert dict(req.env) == {"MODE": "prod"} and list(req.cmd) == ["/bin/app"] and list(req.args) == ["--port", "49999"]
    assert all(SECRET.encode() not in v and b"bob" not in v for v in cluster.etcd.prefix(cluster.prefix + "/").values())
    assert done.registry_auth and done.spec.oci_image.reference == "registry.test:5000/app:1.0"
    # The template: READY, from the node's TemplateInfo, resolvable by id and alias, usable.
    state = state_about(cluster, tid)
    rec = state[f"templates/{tid}"]
    assert rec["status"] == "TEMPLATE_STATUS_READY" and rec["buildId"] == job.job_id
    assert (rec["vcpus"], rec["memoryMb"], rec["diskSizeMb"], rec["exposePorts"]) == (2, 1024, 2048, [49999, 49983])
    assert rec["source"] == "registry.test:5000/app:1.0"
    assert state["template-aliases/my-app"]["templateId"] == tid
    t = stub.GetTemplate(P.GetTemplateRequest(template="my-app"))
    assert t.template_id == tid and list(t.aliases) == ["my-app"] and list(t.node_ids) == ["node-a"]
    assert tid in {x.template_id for x in stub.ListTemplateRecords(P.ListTemplateRecordsRequest()).templates}
    r = httpx.post(cluster.api_url + "/v2/sandboxes", headers=H, json={"templateID": "my-app"})
    assert r.status_code == 201, r.text
    assert r.json()["templateID"] == tid and node.sandboxes[r.json()["sandboxID"]].template_id == tid
    builds = stub.ListTemplateBuilds(P.ListTemplateBuildsRequest(template_id=tid)).builds
    assert [b.job_id for b in builds] == [job.job_id]


def test_watch_replays_history_then_follows_live(tb):
    _cluster, stub, node = tb
    node.build_hold_at = C.BOOTING
    node.build_step_s = 0.02
    job = start(stub)
    assert node.build_waiting.wait(10)
    wait_job(stub, job.job_id, phases=(C.BUILDING_IMAGE,), timeout=10)
    got: list[tuple[float, C.TemplateBuildEvent]] = []
    ended = threading.Event()

    def follow():
        for ev in stub.WatchTemplateBuild(P.WatchTemplateBuildRequest(job_id=job.job_id), timeout=30):
            got.append((time.monotonic(), ev))
        ended.set()
    threading.Thread(target=follow, daemon=True).start()
    wait_until(lambda: len(got) >= 3, what="the replayed history")
    time.sleep(0.5)
    assert names(e for _, e in got) == ["PULLING", "UNPACKING", "BUILDING_IMAGE"] and not ended.is_set()
    released = time.monotonic()
    node.build_gate.set()
    assert ended.wait(15), "the watch did not end after READY"
    assert names(e for _, e in got) == PHASES + ["READY"]
    assert all(t >= released for t, _ in got[3:])  # live, after the release
    assert got[-1][1].template.template_id == job.template_id
    # A watch of a finished build replays everything and ends at once.
    assert names(watch(stub, job.job_id)) == PHASES + ["READY"]


@pytest.mark.parametrize("phase,error", [
    (C.PULLING, "manifest unknown: registry.test:5000/app:nope not found"),
    (C.PULLING, "unauthorized: authentication required for registry.test:5000"),
    (C.UNPACKING, "layer sha256:4f5e digest mismatch: got sha256:0bad (corrupt layer)"),
    (C.UNPACKING, "image platform linux/arm64 does not match this node (linux/amd64)"),
    (C.BUILDING_IMAGE, "writable layer too small: the image needs 700 MiB, the layer is 64 MiB"),
    (C.PROBING, "probe :49999/health did not answer within 120s\n--- guest console (tail) ---\n"
                "[    2.1] cube-init: starting /bin/app\n--- service output (tail) ---\n"
                "Traceback (most recent call last):\nModuleNotFoundError: No module named 'flask'"),
])
def test_failed_build_leaves_only_the_job(tb, phase, error):
    cluster, stub, node = tb
    node.build_fail = (phase, error)
    job = start(stub, aliases=["doomed"], template_id="doomed-tpl")
    done = wait_job(stub, job.job_id)
    assert done.phase == C.FAILED and done.error == error and done.failed_phase == phase
    assert done.events[-1].phase == C.FAILED and done.events[-1].error == error
    assert names(done.events)[:-1] == PHASES[:PHASES.index(C.TemplateBuildPhase.Name(phase)) + 1]
    only_the_job_left(cluster, "doomed-tpl", job.job_id)
    assert cluster.etcd.get(f"{cluster.prefix}/template-aliases/doomed") is None
    e = rpc_error(stub.GetTemplate, P.GetTemplateRequest(template="doomed-tpl"))
    assert e.code() == grpc.StatusCode.NOT_FOUND
    events = watch(stub, job.job_id)
    assert events[-1].phase == C.FAILED and events[-1].error == error
    # The id is free again.
    node.build_fail = None
    again = start(stub, template_id="doomed-tpl")
    assert wait_job(stub, again.job_id).phase == C.READY


def test_stream_cut_mid_build(tb):
    cluster, stub, node = tb
    node.build_cut_at = C.BOOTING
    job = start(stub, template_id="cut-tpl")
    done = wait_job(stub, job.job_id)
    assert done.phase == C.FAILED and done.failed_phase == C.BUILDING_IMAGE
    assert "node-a" in done.error and "connection reset" in done.error
    assert "cut-tpl" in node.calls_of("DeleteTemplate")  # whatever the node had of it goes too
    only_the_job_left(cluster, "cut-tpl", job.job_id)


def test_template_id_in_use(tb):
    cluster, stub, node = tb
    for tid, why in (("tiny", "already exists"), ("base", "alias"), ("code-interpreter", "already exists")):
        e = rpc_error(start, stub, template_id=tid)
        assert e.code() == grpc.StatusCode.ALREADY_EXISTS and why in details(e), details(e)
    e = rpc_error(start, stub, template_id="fresh-one", aliases=["code-interpreter-v1"])
    assert e.code() == grpc.StatusCode.ALREADY_EXISTS and "alias 'code-interpreter-v1'" in details(e)
    node.build_hold_at = C.BOOTING
    job = start(stub, template_id="dup")
    assert node.build_waiting.wait(10)
    rec = cluster.etcd.get_json(f"{cluster.prefix}/templates/dup")
    assert rec["status"] == "TEMPLATE_STATUS_BUILDING" and rec["buildId"] == job.job_id
    e = rpc_error(start, stub, template_id="dup")
    assert e.code() == grpc.StatusCode.ALREADY_EXISTS and f"being built (build {job.job_id})" in details(e)
    # A template being built is listed as building but cannot run sandboxes or be deleted.
    assert stub.GetTemplate(P.GetTemplateRequest(template="dup")).status == P.TEMPLATE_STATUS_BUILDING
    r = httpx.post(cluster.api_url + "/v2/sandboxes", headers=H, json={"templateID": "dup"})
    assert r.status_code == 409 and "not ready" in r.json()["message"]
    e = rpc_error(stub.DeleteTemplateRecord, P.DeleteTemplateRecordRequest(template="dup", force=True))
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "being built" in details(e)
    assert node.calls_of("BuildTemplate") == ["dup"]  # the refused ones never reached the node
    assert len(cluster.keys("template-builds/")) == 1
    node.build_gate.set()
    assert wait_job(stub, job.job_id).phase == C.READY
    e = rpc_error(start, stub, template_id="dup")
    assert e.code() == grpc.StatusCode.ALREADY_EXISTS and "already exists" in details(e)


@pytest.mark.parametrize("build,aliases,what", [
    (C.BuildTemplateRequest(template_id="x"), [], "image reference is required"),
    (oci(""), [], "invalid image reference"),
    (oci("has space:1"), [], "invalid image reference"),
    (oci(username="u"), [], "go together"),
    (oci(template_id="bad/id"), [], "invalid template id"),
    (oci(template_id="a.b"), [], "invalid template id"),
    (oci(expose_ports=[0]), [], "invalid port 0"),
    (oci(expose_ports=[70000]), [], "invalid port 70000"),
    (oci(expose_ports=[80, 80]), [], "repeated"),
    (oci(probe_port=65536), [], "invalid port"),
    (oci(probe_path="health"), [], "invalid probe path"),
    (oci(env={"BAD NAME": "1"}), [], "invalid environment variable"),
    (oci(vcpus=65), [], "cpu"),
    (oci(memory_mb=16), [], "memory"),
    (oci(), ["bad/alias"], "invalid alias"),
])
def test_bad_input(tb, build, aliases, what):
    cluster, stub, node = tb
    e = rpc_error(start, stub, build, aliases)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and what in details(e), details(e)
    assert cluster.keys("template-builds/") == [] and node.build_requests == []


def test_unknown_job(tb):
    _cluster, stub, _node = tb
    for jid in ("0b3f9c1e-8a59-4c4b-9f0e-3d2a1b0c9d8e", "nope", "../x"):
        e = rpc_error(stub.GetTemplateBuild, P.GetTemplateBuildRequest(job_id=jid))
        assert e.code() == grpc.StatusCode.NOT_FOUND
        assert rpc_error(watch, stub, jid).code() == grpc.StatusCode.NOT_FOUND


def test_delete_refusal_names_sandboxes_and_force(tb):
    cluster, stub, node = tb
    job = start(stub, template_id="in-use", aliases=["in-use-alias"])
    assert wait_job(stub, job.job_id).phase == C.READY
    ids = [httpx.post(cluster.api_url + "/v2/sandboxes", headers=H,
                      json={"templateID": "in-use-alias"}).json()["sandboxID"] for _ in range(2)]
    assert httpx.post(f"{cluster.api_url}/sandboxes/{ids[1]}/pause", headers=H).status_code == 204
    e = rpc_error(stub.DeleteTemplateRecord, P.DeleteTemplateRecordRequest(template="in-use"))
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION
    msg = details(e)
    assert f"{ids[0]} (running)" in msg and f"{ids[1]} (paused)" in msg and "force" in msg
    assert "in-use" in node.templates and cluster.sandbox_ids() == set(ids)
    assert stub.DeleteTemplateRecord(P.DeleteTemplateRecordRequest(template="in-use-alias", force=True)).deleted
    assert cluster.sandbox_ids() == set() and node.ids() == set()
    assert "in-use" in node.calls_of("DeleteTemplate") and "in-use" not in node.templates
    # What stays: the job, and the tombstones of its names (an operator's build: public ones).
    assert set(state_about(cluster, "in-use")) == {f"template-builds/{job.job_id}", "template-tombstones/in-use",
                                                   "template-tombstones/in-use-alias"}


def test_events_coalesced_and_bounded():
    # Only the event bookkeeping runs here: it reads the settings, never the store, the nodes or the templates.
    b = Builds(cast(Store, None), cast(NodeClients, None), cast(Templates, None), Settings(build_events_kept=10))
    job = P.TemplateBuild()
    for i in range(50):
        b._record_event(job, C.TemplateBuildEvent(phase=C.PULLING, message="pull", bytes_done=i))
    assert len(job.events) == 1 and job.events[0].bytes_done == 49
    for i in range(25):
        b._record_event(job, C.TemplateBuildEvent(phase=C.UNPACKING, message=f"layer {i}"))
    b._record_event(job, C.TemplateBuildEvent(phase=C.FAILED, error="boom"))
    assert len(job.events) == 10 and job.events_dropped == 17
    assert job.events[-1].phase == C.FAILED and job.events[0].message == "layer 16"
