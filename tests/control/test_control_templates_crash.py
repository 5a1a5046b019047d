"""Template builds across master failures: a master that stops (SIGTERM) fails its builds itself;
one killed with SIGKILL leaves them to the next leader's reconciler ("master restarted"). Either
way the node's build stream is cancelled and nothing but the job is left. Without nodes a build
is refused before anything is written."""

from __future__ import annotations

import grpc
import pytest

from sdk.gen.cube.v1 import cubelet_pb2 as C, master_pb2 as P
from tests.control.cluster import wait_until
from tests.control.templates_support import details, oci, only_the_job_left, rpc_error, wait_job

pytestmark = pytest.mark.timeout(120)
FAST_BUILDS = {"CUBE_MASTER_BUILD_HEARTBEAT_S": "0.3", "CUBE_MASTER_BUILD_STALE_S": "1.5"}


def start(stub, tid: str) -> P.TemplateBuild:
    build = oci(template_id=tid, username="u", password="p")
    return stub.CreateTemplateBuild(P.CreateTemplateBuildRequest(build=build), timeout=10)


def test_no_node_is_unavailable_and_writes_nothing(own_cluster):
    c = own_cluster
    c.start_master("m1", **FAST_BUILDS)
    ch, stub = c.master_stub()
    with ch:
        e = rpc_error(start, stub, "lonely")
        assert e.code() == grpc.StatusCode.UNAVAILABLE and "no nodes" in details(e)
        assert c.keys("template-builds/") == [] and c.keys("templates/") == []


def test_master_stop_and_crash_mid_build(own_cluster):
    c = own_cluster
    node = c.add_cubelet("node-a")
    node.build_hold_at = C.PROBING
    m1 = c.start_master("m1", **FAST_BUILDS)

    # SIGTERM: the stopping master fails its build at once.
    ch, stub = c.master_stub(m1)
    with ch:
        job = start(stub, "tpl-stop")
        assert node.build_waiting.wait(10)
        wait_job(stub, job.job_id, phases=(C.BOOTING,))
    m1.stop()
    wait_until(lambda: "tpl-stop" in node.build_cancelled, what="the node's build cancelled")
    m2 = c.start_master("m2", port=m1.port, **FAST_BUILDS)
    ch, stub = c.master_stub(m2)
    with ch:
        done = stub.GetTemplateBuild(P.GetTemplateBuildRequest(job_id=job.job_id))
        assert done.phase == C.FAILED and "master restarted" in done.error and "(m1) stopped" in done.error
        assert done.failed_phase == C.BOOTING
        only_the_job_left(c, "tpl-stop", job.job_id)

        # SIGKILL: the job is left running; the next leader fails it once its heartbeat is stale.
        node.build_waiting.clear()
        job2 = start(stub, "tpl-crash")
        assert node.build_waiting.wait(10)
        wait_job(stub, job2.job_id, phases=(C.BOOTING,))
    m2.kill9()
    wait_until(lambda: "tpl-crash" in node.build_cancelled, what="the node's build cancelled")
    rec = c.etcd.get_json(f"{c.prefix}/template-builds/{job2.job_id}")
    assert rec["phase"] == "BOOTING"
    assert c.etcd.get_json(f"{c.prefix}/templates/tpl-crash")["status"] == "TEMPLATE_STATUS_BUILDING"
    m3 = c.start_master("m3", port=m1.port, **FAST_BUILDS)
    ch, stub = c.master_stub(m3)
    with ch:
        done = wait_job(stub, job2.job_id, timeout=20)
        assert done.phase == C.FAILED and "master restarted" in done.error and "(m2)" in done.error
        events = list(stub.WatchTemplateBuild(P.WatchTemplateBuildRequest(job_id=job2.job_id), timeout=10))
        assert events[-1].phase == C.FAILED
        only_the_job_left(c, "tpl-crash", job2.job_id)
        # The id can be built again, and this time it finishes.
        node.build_hold_at = None
        again = start(stub, "tpl-crash")
        assert wait_job(stub, again.job_id).phase == C.READY
