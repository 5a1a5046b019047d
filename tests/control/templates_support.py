"""Helpers for the template-build tests (test_control_templates_*.py): requests, waiting for a
job, what etcd holds about a template, and a fixture state reset."""

from __future__ import annotations

import json
import re
import time

import grpc

from sdk.gen.cube.v1 import cubelet_pb2 as C, master_pb2 as P

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
PHASES = ["PULLING", "UNPACKING", "BUILDING_IMAGE", "BOOTING", "PROBING", "SNAPSHOTTING"]
BASE_TEMPLATES = ("code-interpreter", "tiny")


def oci(ref: str = "registry.test:5000/app:1.0", **kw) -> C.BuildTemplateRequest:
    user, password = kw.pop("username", ""), kw.pop("password", "")
    return C.BuildTemplateRequest(oci_image=C.OciImageSource(reference=ref, username=user, password=password), **kw)


def wait_job(stub, job_id: str, timeout: float = 20.0, phases=(C.READY, C.FAILED)) -> P.TemplateBuild:
    deadline = time.monotonic() + timeout
    while True:
        job = stub.GetTemplateBuild(P.GetTemplateBuildRequest(job_id=job_id), timeout=5)
        if job.phase in phases:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {C.TemplateBuildPhase.Name(job.phase)} after {timeout}s")
        time.sleep(0.05)


def rpc_error(fn, *args, **kw) -> grpc.RpcError:
    try:
        fn(*args, **kw)
    except grpc.RpcError as e:
        return e
    raise AssertionError("expected a gRPC error")


def details(e: grpc.RpcError) -> str:
    """The error's message (grpc types it optional); one without a message fails here, not as a TypeError."""
    d = e.details()
    assert d is not None, f"{e.code()} came without details"
    return d


def state_about(cluster, tid: str) -> dict[str, dict]:
    """Every etcd key (under the cluster's prefix) whose value names the template, with its JSON."""
    out = {}
    for k, v in cluster.etcd.prefix(cluster.prefix + "/").items():
        if k.endswith("/" + tid) or tid.encode() in v:
            try:
                out[k[len(cluster.prefix) + 1:]] = json.loads(v)
            except ValueError:
                out[k[len(cluster.prefix) + 1:]] = {}
    return out


def only_the_job_left(cluster, tid: str, job_id: str) -> None:
    left = state_about(cluster, tid)
    assert set(left) == {f"template-builds/{job_id}"}, left
    assert all(tid not in n.templates for n in cluster.cubelets)


def reset(cluster) -> None:
    """Back to the module's starting point: no sandboxes, builds or built templates."""
    cluster.wipe_sandboxes()
    cluster.etcd.delete_prefix(f"{cluster.prefix}/template-builds/")
    for k in cluster.keys("templates/"):
        if k.rsplit("/", 1)[1] not in BASE_TEMPLATES:
            cluster.etcd.delete(k)
    for space in ("template-aliases", "team-aliases"):
        for k, v in cluster.etcd.prefix(f"{cluster.prefix}/{space}/").items():
            if json.loads(v)["templateId"] not in BASE_TEMPLATES:
                cluster.etcd.delete(k)
    for c in cluster.cubelets:
        c.reset_builds()
        c.build_gate.set()  # a build left waiting by a failed test ends
        c.templates = BASE_TEMPLATES
        c.register(cluster.etcd, cluster.prefix)
    time.sleep(0.15)
    for c in cluster.cubelets:
        c.build_gate.clear()


# ---- E2B's two-phase builds (test_control_templates_deferred.py) ----

FILES_HASH = "ab" * 32


def step(kind: str, *args: str, files_hash: str = "") -> C.BuildStep:
    """One instruction of a template definition, as the SDK sends it (COPY gets a hash by default)."""
    if kind == "COPY" and not files_hash:
        files_hash = FILES_HASH
    return C.BuildStep(type=kind, args=list(args), files_hash=files_hash)


def reserve(stub, template_id: str = "", aliases=(), move_aliases: bool = False, metadata=(), tags=(),
            **build) -> P.TemplateBuild:
    """A deferred create (E2B's POST /v3/templates): the id, the aliases and the job, no build yet."""
    req = P.CreateTemplateBuildRequest(build=C.BuildTemplateRequest(template_id=template_id, **build),
                                       aliases=list(aliases), deferred=True, move_aliases=move_aliases,
                                       tags=list(tags))
    return stub.CreateTemplateBuild(req, metadata=metadata, timeout=10)


def start_deferred(stub, job_id: str, build: C.BuildTemplateRequest | None = None, metadata=()) -> P.TemplateBuild:
    """StartTemplateBuild (E2B's POST /v2/templates/{id}/builds/{buildID}); by default an image and two steps."""
    if build is None:
        build = oci(steps=[step("RUN", "echo hello"), step("COPY", "app.py", "/app/")])
    return stub.StartTemplateBuild(P.StartTemplateBuildRequest(job_id=job_id, build=build), metadata=metadata,
                                   timeout=10)
