"""E2B's two-phase template build through the real master (gRPC), against a real etcd and the fake
cubelet: a deferred create reserves the id, the aliases and the job and starts nothing; a start
brings the definition (steps), is checked (INVALID_ARGUMENT naming the step, NOT_FOUND for another
team's job or an unknown base, FAILED_PRECONDITION once started), and runs the build; a failing
step leaves only the job, which names the step; ``move_aliases`` re-points a team's alias at READY;
a build never started fails after build_start_timeout_s and frees its names."""

from __future__ import annotations

import json
import time
from typing import cast

import grpc
import pytest

from sdk.gen.cube.v1 import cubelet_pb2 as C, master_pb2 as P
from services.master.builds import MAX_EVENT_MESSAGE_BYTES, Builds
from services.master.nodes import NodeClients
from services.master.settings import Settings
from services.master.store import Store
from services.master.templates import Templates
from tests.control.cluster import wait_until
from tests.control.teams_support import as_caller
from tests.control.templates_support import (
    FILES_HASH,
    details,
    oci,
    only_the_job_left,
    reserve,
    reset,
    rpc_error,
    start_deferred,
    state_about,
    step,
    wait_job,
)

pytestmark = pytest.mark.timeout(90)
A = as_caller("team-a", "user")
B = as_caller("team-b", "user")


@pytest.fixture
def tb(cluster):
    reset(cluster)
    ch, stub = cluster.master_stub()
    yield cluster, stub, cluster.cubelets[0]
    ch.close()
    reset(cluster)


def get(stub, job_id: str, metadata=A) -> P.TemplateBuild:
    return stub.GetTemplateBuild(P.GetTemplateBuildRequest(job_id=job_id), metadata=metadata, timeout=5)


def team_alias(cluster, team: str, alias: str) -> str | None:
    v = cluster.etcd.get(f"{cluster.prefix}/team-aliases/{team}/{alias}")
    return json.loads(v)["templateId"] if v is not None else None


def log_lines(job: P.TemplateBuild) -> list[tuple[str, str]]:
    return [(e.step, e.message) for e in job.events if e.phase == C.RUNNING_STEPS]


def test_deferred_create_then_start(tb):
    cluster, stub, node = tb
    job = reserve(stub, "def-a", aliases=["def-alias"], metadata=A, vcpus=2, memory_mb=1024, writable_layer_mb=2048)
    assert job.deferred and job.node_id == "" and job.phase == C.TEMPLATE_BUILD_PHASE_UNSPECIFIED
    assert job.team_id == "team-a" and list(job.aliases) == ["def-alias"]
    rec = cluster.etcd.get_json(f"{cluster.prefix}/templates/def-a")
    assert rec["status"] == "TEMPLATE_STATUS_BUILDING" and rec["buildId"] == job.job_id and rec["teamId"] == "team-a"
    time.sleep(1.2)  # a few reconciler rounds: a job waiting for its start is left alone
    assert get(stub, job.job_id).deferred and node.build_requests == [] and node.calls_of("BuildTemplate") == []

    definition = oci(steps=[step("RUN", "echo hello"), step("RUN", "echo hello"), step("ENV", "A", "1"),
                            step("COPY", "app.py", "/app/", "", "0644"), step("WORKDIR", "/app"),
                            step("USER", "root")],
                     start_cmd="python app.py", ready_cmd="curl -sf localhost:8000", env={"MODE": "prod"},
                     vcpus=8, memory_mb=4096)
    started = start_deferred(stub, job.job_id, definition, metadata=A)
    assert not started.deferred and started.node_id == "node-a"
    done = wait_job(stub, job.job_id)
    assert done.phase == C.READY, done.error
    (req,) = node.build_requests
    assert req.template_id == "def-a" and req.files_team == "team-a" and len(req.steps) == 6
    assert req.steps[3].files_hash == FILES_HASH and list(req.steps[3].args) == ["app.py", "/app/", "", "0644"]
    assert (req.start_cmd, req.ready_cmd) == ("python app.py", "curl -sf localhost:8000")
    assert dict(req.env) == {"MODE": "prod"}
    # The resources are the create's: the start brings only the definition.
    assert (req.vcpus, req.memory_mb, req.writable_layer_mb) == (2, 1024, 2048)
    # Every output line is an event of its own, labelled with its step, even two equal lines.
    lines = log_lines(done)
    assert ("1", "hello") in lines and ("2", "hello") in lines
    assert lines[0][0] == "base" and lines[-1][0] == "finalize"
    assert done.spec.files_team == "team-a" and len(done.spec.steps) == 6
    rec = cluster.etcd.get_json(f"{cluster.prefix}/templates/def-a")
    assert rec["status"] == "TEMPLATE_STATUS_READY" and rec["teamId"] == "team-a"
    assert team_alias(cluster, "team-a", "def-alias") == "def-a"
    e = rpc_error(start_deferred, stub, job.job_id, metadata=A)
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "already finished (READY)" in details(e)


def test_start_twice_and_by_another_team(tb):
    _cluster, stub, node = tb
    job = reserve(stub, "def-b", metadata=A)
    for jid, md in ((job.job_id, B), ("0b3f9c1e-8a59-4c4b-9f0e-3d2a1b0c9d8e", A), ("nope", A)):
        e = rpc_error(start_deferred, stub, jid, metadata=md)
        assert e.code() == grpc.StatusCode.NOT_FOUND and "not found" in details(e)
    assert rpc_error(get, stub, job.job_id, B).code() == grpc.StatusCode.NOT_FOUND
    assert get(stub, job.job_id).deferred and node.build_requests == []
    node.build_hold_at = C.BOOTING
    start_deferred(stub, job.job_id, metadata=A)
    assert node.build_waiting.wait(10)
    e = rpc_error(start_deferred, stub, job.job_id, metadata=A)
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "already started" in details(e)
    node.build_gate.set()
    assert wait_job(stub, job.job_id).phase == C.READY
    assert len(node.build_requests) == 1


def test_deferred_create_checks_what_a_create_checks(tb):
    _cluster, stub, node = tb
    e = rpc_error(reserve, stub, "tiny", metadata=A)
    assert e.code() == grpc.StatusCode.PERMISSION_DENIED and "public" in details(e)
    first = reserve(stub, "def-d", metadata=A)
    e = rpc_error(reserve, stub, "def-d", metadata=A)
    assert e.code() == grpc.StatusCode.ALREADY_EXISTS and f"being built (build {first.job_id})" in details(e)
    e = rpc_error(reserve, stub, "def-c", metadata=A, vcpus=65)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "cpu" in details(e)
    e = rpc_error(reserve, stub, "def-c", aliases=["bad/alias"], metadata=A)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    req = P.CreateTemplateBuildRequest(build=C.BuildTemplateRequest(template_id="def-c"), deferred=True,
                                       node_id="node-a")
    e = rpc_error(stub.CreateTemplateBuild, req, metadata=A)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "cannot name a node" in details(e)
    e = rpc_error(reserve, stub, "def-c", metadata=A,
                  oci_image=C.OciImageSource(reference="registry.test:5000/app:1", username="u", password="p"))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "credentials of a deferred build" in details(e)
    # A create that is not deferred still needs its image, and its steps are checked too.
    e = rpc_error(stub.CreateTemplateBuild, P.CreateTemplateBuildRequest(build=oci(steps=[step("ENV", "A")])),
                  metadata=A)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "step 1 (ENV)" in details(e)
    e = rpc_error(stub.CreateTemplateBuild, P.CreateTemplateBuildRequest(build=C.BuildTemplateRequest()), metadata=A)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "image reference is required" in details(e)
    assert node.build_requests == []


LONG = "x" * 65537


@pytest.mark.parametrize("build,what", [
    (C.BuildTemplateRequest(steps=[step("RUN", "true")]), "has no base"),
    (oci(steps=[step("RUN", "true"), step("FOO", "x")]), "step 2: unknown instruction type 'FOO'"),
    (oci(steps=[step("run", "true")]), "step 1: unknown instruction type 'run'"),
    (oci(steps=[step("RUN")]), "step 1 (RUN): want a command"),
    (oci(steps=[step("RUN", "true", "root", "x")]), "step 1 (RUN): want a command"),
    (oci(steps=[step("RUN", "true", "Bad User")]), "step 1 (RUN): invalid user name"),
    (oci(steps=[step("RUN", "  ")]), "step 1 (RUN): the command is empty"),
    (oci(steps=[step("COPY", "a", "/b", files_hash="-")]), "step 1 (COPY): the files hash"),
    (oci(steps=[C.BuildStep(type="COPY", args=["a", "/b"])]), "step 1 (COPY): the files hash"),
    (oci(steps=[step("COPY", "a", files_hash="ab" * 32)]), "step 1 (COPY): want a source"),
    (oci(steps=[step("COPY", "a", "/b", "", "9z")]), "step 1 (COPY): invalid mode"),
    (oci(steps=[step("ENV", "A", "1", "B")]), "step 1 (ENV): want name and value pairs, got 3"),
    (oci(steps=[step("ENV")]), "step 1 (ENV): want name and value pairs, got 0"),
    (oci(steps=[step("ENV", "BAD NAME", "1")]), "step 1 (ENV): invalid environment variable name"),
    (oci(steps=[step("WORKDIR", "/a", "/b")]), "step 1 (WORKDIR): want exactly one"),
    (oci(steps=[step("USER", "")]), "step 1 (USER): want exactly one"),
    (oci(steps=[step("USER", "Root!")]), "step 1 (USER): invalid user name"),
    (oci(steps=[step("RUN", LONG)]), "step 1 (RUN): an argument is 65537 bytes"),
    (oci(steps=[step("RUN", "true")] * 257), "257 steps; at most 256"),
    (oci(start_cmd=LONG), "the start command is 65537 bytes"),
    (oci(ready_cmd=LONG), "the ready command is 65537 bytes"),
    (oci(steps=[step("RUN", "y" * 60000)] * 20), "at most 1048576"),
    (oci(username="u"), "go together"),
])
def test_bad_definition_leaves_the_job_deferred(tb, build, what):
    _cluster, stub, node = tb
    job = reserve(stub, metadata=A)
    e = rpc_error(start_deferred, stub, job.job_id, build, metadata=A)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and what in details(e), details(e)
    assert get(stub, job.job_id).deferred and node.build_requests == []


def test_build_on_a_template(tb):
    cluster, stub, node = tb
    now = "2026-01-01T00:00:00Z"
    for tid, extra in (("snap-x", {"baseTemplateId": "tiny"}), ("ghost", {})):
        cluster.etcd.put(f"{cluster.prefix}/templates/{tid}", json.dumps(
            {"templateId": tid, "status": "TEMPLATE_STATUS_READY", "createdAt": now, "updatedAt": now, **extra}))
    other = reserve(stub, "def-pending", metadata=A)
    job = reserve(stub, "def-on", metadata=A)

    def on(base: str) -> grpc.RpcError:
        return rpc_error(start_deferred, stub, job.job_id,
                         C.BuildTemplateRequest(from_template=C.TemplateSource(template_id=base),
                                                steps=[step("RUN", "echo on top")]), metadata=A)

    e = on("nope")
    assert e.code() == grpc.StatusCode.NOT_FOUND and details(e) == "base template 'nope' not found"
    e = on("snap-x")
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "cannot build on a snapshot" in details(e)
    e = on("def-pending")
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "not ready (BUILDING)" in details(e)
    e = on("def-on")
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "cannot be built on itself" in details(e)
    e = on("ghost")
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "on no node" in details(e)
    # Another team's own template is not found either.
    b_job = reserve(stub, "def-b-only", metadata=B)
    start_deferred(stub, b_job.job_id, metadata=B)
    assert wait_job(stub, b_job.job_id).phase == C.READY
    e = on("def-b-only")
    assert e.code() == grpc.StatusCode.NOT_FOUND
    assert get(stub, job.job_id).deferred and [r.template_id for r in node.build_requests] == ["def-b-only"]

    # By alias: the node is asked for the template the alias names.
    start_deferred(stub, job.job_id, C.BuildTemplateRequest(from_template=C.TemplateSource(template_id="base"),
                                                            steps=[step("RUN", "echo on top")]), metadata=A)
    done = wait_job(stub, job.job_id)
    assert done.phase == C.READY, done.error
    req = node.build_requests[-1]
    assert req.WhichOneof("source") == "from_template" and req.from_template.template_id == "code-interpreter"
    assert done.spec.from_template.template_id == "code-interpreter"
    assert cluster.etcd.get_json(f"{cluster.prefix}/templates/def-on")["source"] == "template:code-interpreter"
    assert get(stub, other.job_id).deferred


def test_failing_step_leaves_only_the_job(tb):
    cluster, stub, _node = tb
    job = reserve(stub, "def-fail", aliases=["def-fail-alias"], metadata=A)
    definition = oci(steps=[step("RUN", "echo same"), step("RUN", "echo same"), step("RUN", "exit 3"),
                            step("RUN", "echo never")])
    start_deferred(stub, job.job_id, definition, metadata=A)
    done = wait_job(stub, job.job_id)
    assert done.phase == C.FAILED and done.failed_step == "3" and done.failed_phase == C.RUNNING_STEPS
    assert "step 3" in done.error and "status 3" in done.error
    lines = log_lines(done)
    assert ("1", "same") in lines and ("2", "same") in lines and ("4", "echo never") not in lines
    (err,) = [e for e in done.events if e.stderr]
    assert err.step == "3" and err.phase == C.RUNNING_STEPS
    assert done.events[-1].phase == C.FAILED and done.events[-1].step == "3"
    only_the_job_left(cluster, "def-fail", job.job_id)
    assert team_alias(cluster, "team-a", "def-fail-alias") is None


def test_move_aliases(tb):
    cluster, stub, node = tb

    def build(tid: str, md=A, move: bool = True, definition=None) -> P.TemplateBuild:
        job = reserve(stub, tid, aliases=["name"], move_aliases=move, metadata=md)
        start_deferred(stub, job.job_id, definition, metadata=md)
        return wait_job(stub, job.job_id)

    assert build("name-1", move=False).phase == C.READY
    assert team_alias(cluster, "team-a", "name") == "name-1"
    # Without move_aliases the team's alias is taken, as ever.
    e = rpc_error(reserve, stub, "name-x", aliases=["name"], metadata=A)
    assert e.code() == grpc.StatusCode.ALREADY_EXISTS and "alias 'name' is already taken" in details(e)
    # With it, the alias stays on the old template until the new one is READY.
    node.build_hold_at = C.BOOTING
    job = reserve(stub, "name-2", aliases=["name"], move_aliases=True, metadata=A)
    assert job.move_aliases
    start_deferred(stub, job.job_id, metadata=A)
    assert node.build_waiting.wait(10)
    assert team_alias(cluster, "team-a", "name") == "name-1"
    node.build_gate.set()
    assert wait_job(stub, job.job_id).phase == C.READY
    assert team_alias(cluster, "team-a", "name") == "name-2"
    assert stub.GetTemplate(P.GetTemplateRequest(template="name"), metadata=A).template_id == "name-2"
    # The template the name left is deleted (nothing uses it): on its node and in etcd.
    wait_until(lambda: cluster.etcd.get_json(f"{cluster.prefix}/templates/name-1") is None, 10)
    assert "name-1" in node.calls_of("DeleteTemplate")
    node.build_hold_at = None
    # A failed build leaves the alias where it was.
    failed = build("name-3", definition=oci(steps=[step("RUN", "exit 1")]))
    assert failed.phase == C.FAILED and failed.failed_step == "1"
    assert team_alias(cluster, "team-a", "name") == "name-2"
    # Another team's "name" is its own: team-a's stays.
    assert build("name-b", md=B).phase == C.READY
    assert team_alias(cluster, "team-b", "name") == "name-b" and team_alias(cluster, "team-a", "name") == "name-2"
    # Public aliases, and a team alias naming a public template, do not move.
    e = rpc_error(reserve, stub, "name-y", aliases=["base"], move_aliases=True, metadata=A)
    assert e.code() == grpc.StatusCode.ALREADY_EXISTS and "alias 'base'" in details(e)
    stub.SetTemplateAlias(P.TemplateAlias(alias="mine", template_id="tiny"), metadata=A)
    e = rpc_error(reserve, stub, "name-y", aliases=["mine"], move_aliases=True, metadata=A)
    assert e.code() == grpc.StatusCode.ALREADY_EXISTS and "alias 'mine'" in details(e)
    cluster.etcd.delete(f"{cluster.prefix}/team-aliases/team-a/mine")  # reset() keeps aliases of the base templates
    # A name that is a template's id is never an alias to move.
    e = rpc_error(reserve, stub, "name-y", aliases=["name-b"], move_aliases=True, metadata=A)
    assert e.code() == grpc.StatusCode.ALREADY_EXISTS


def test_never_started_build_fails_and_frees_its_names(own_cluster):
    c = own_cluster
    c.add_cubelet("node-a")
    c.start_master("m1", CUBE_MASTER_BUILD_START_TIMEOUT_S="3", CUBE_MASTER_BUILD_HEARTBEAT_S="0.2",
                   CUBE_MASTER_BUILD_STALE_S="0.5")
    ch, stub = c.master_stub()
    with ch:
        job = reserve(stub, "tardy", aliases=["tardy-alias"], metadata=A)
        time.sleep(1.5)  # its heartbeat is long stale: a deferred job is not "abandoned" for that
        assert get(stub, job.job_id).deferred
        assert c.etcd.get_json(f"{c.prefix}/templates/tardy")["status"] == "TEMPLATE_STATUS_BUILDING"
        done = wait_job(stub, job.job_id, timeout=10)
        assert done.phase == C.FAILED and done.error == "the build was not started within 3s" and not done.deferred
        assert time.time() - done.created_at.ToSeconds() >= 3
        wait_until(lambda: set(state_about(c, "tardy")) == {f"template-builds/{job.job_id}"}, what="the record gone")
        only_the_job_left(c, "tardy", job.job_id)
        e = rpc_error(start_deferred, stub, job.job_id, metadata=A)
        assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "already finished (FAILED)" in details(e)
        again = reserve(stub, "tardy", aliases=["tardy-alias"], metadata=A)
        start_deferred(stub, again.job_id, metadata=A)
        assert wait_job(stub, again.job_id).phase == C.READY


def test_step_output_events_kept_apart_and_bounded():
    # Only the event bookkeeping runs here: it reads the settings, never the store, the nodes or the templates.
    b = Builds(cast(Store, None), cast(NodeClients, None), cast(Templates, None),
               Settings(build_events_kept=10, build_log_events_kept=30))
    job = P.TemplateBuild()
    job.spec.steps.append(step("RUN", "true"))
    for _ in range(5):
        b._record_event(job, C.TemplateBuildEvent(phase=C.RUNNING_STEPS, message="same", step="1"))
    assert len(job.events) == 5  # equal lines are not merged
    b._record_event(job, C.TemplateBuildEvent(phase=C.RUNNING_STEPS, message="é" * 5000, step="1"))
    clipped = job.events[-1].message
    assert len(clipped.encode()) <= MAX_EVENT_MESSAGE_BYTES and clipped.endswith("[... truncated]")
    for i in range(40):
        b._record_event(job, C.TemplateBuildEvent(phase=C.RUNNING_STEPS, message=str(i), step="1"))
    assert len(job.events) == 30 and job.events_dropped == 16 and job.events[-1].message == "39"
    # The kept text is bounded whatever the count: long lines push old ones out sooner.
    big = Builds(cast(Store, None), cast(NodeClients, None), cast(Templates, None), Settings())
    job = P.TemplateBuild()
    job.spec.start_cmd = "serve"
    for _ in range(1000):
        big._record_event(job, C.TemplateBuildEvent(phase=C.RUNNING_STEPS, message="z" * 5000, step="finalize"))
    assert 50 <= len(job.events) < 100 and job.events_dropped == 1000 - len(job.events)
    # A build without a definition keeps build_events_kept.
    job = P.TemplateBuild()
    for i in range(20):
        b._record_event(job, C.TemplateBuildEvent(phase=C.UNPACKING, message=f"layer {i}"))
    assert len(job.events) == 10


def test_build_tags_are_assigned_when_ready(tb):
    _, stub, _ = tb
    job = reserve(stub, "tagged-1", aliases=["tagged"], move_aliases=True, tags=["V1", "stable"], metadata=A)
    assert list(job.tags) == ["stable", "v1"]
    start_deferred(stub, job.job_id, metadata=A)
    assert wait_job(stub, job.job_id).phase == C.READY
    tags = stub.ListTemplateTags(P.ListTemplateTagsRequest(template="tagged"), metadata=A)
    assert [t.tag for t in tags.tags] == ["default", "stable", "v1"]
    assert stub.GetTemplate(P.GetTemplateRequest(template="tagged:v1"), metadata=A).template_id == "tagged-1"
    e = rpc_error(reserve, stub, "tagged-2", aliases=["tagged"], move_aliases=True, tags=["default"], metadata=A)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_name_is_rebuilt_on_the_node_that_built_it(own_cluster):
    """A definition's cached step layers are on the node that ran its steps: the next build of the
    same name goes there, even when another node is less loaded; a new name goes to the least loaded."""
    c = own_cluster
    node_a, node_b = c.add_cubelet("node-a"), c.add_cubelet("node-b")
    c.start_master("m1")

    def load(node, n: int) -> None:
        node.sandboxes = {f"busy-{i}": C.SandboxStatus(sandbox_id=f"busy-{i}", state=C.SANDBOX_STATE_RUNNING)
                          for i in range(n)}
        node.register(c.etcd, c.prefix)

    def build_on(name: str) -> str:
        job = reserve(stub, aliases=[name], move_aliases=True, metadata=A)
        start_deferred(stub, job.job_id, C.BuildTemplateRequest(oci_image=C.OciImageSource(reference="r.test/a:1"),
                                                                steps=[step("RUN", "echo hi")]), metadata=A)
        done = wait_job(stub, job.job_id)
        assert done.phase == C.READY, done.error
        return done.node_id

    ch, stub = c.master_stub()
    with ch:
        load(node_a, 3)
        assert build_on("cached-name") == "node-b"
        load(node_a, 0)
        load(node_b, 3)
        assert build_on("cached-name") == "node-b"  # where its layers are, though node-a is idle
        assert build_on("other-name") == "node-a"
        # Another team's name of the same spelling says nothing about this team's builds.
        job = reserve(stub, aliases=["cached-name"], move_aliases=True, metadata=B)
        start_deferred(stub, job.job_id, C.BuildTemplateRequest(oci_image=C.OciImageSource(reference="r.test/a:1"),
                                                                steps=[step("RUN", "echo hi")]), metadata=B)
        assert wait_job(stub, job.job_id).node_id == "node-a"
