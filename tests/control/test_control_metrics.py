"""Prometheus /metrics of the real cube-api and cube-master (processes, real etcd, the fake node):
each scraped on its own listener and read with Prometheus' text parser, and its figures move when
the control plane does work: requests by route template and status, Master calls by method and
code, the leader's count of the cluster, route acks, template builds, etcd calls."""

from __future__ import annotations

import httpx
import pytest

from sdk.gen.cube.v1 import cubelet_pb2 as C, master_pb2 as P
from tests.control.cluster import Cluster, wait_until
from tests.control.templates_support import oci, wait_job
from tests.support.prometheus import Page, scrape

pytestmark = pytest.mark.timeout(120)
H = {"X-API-KEY": "k"}


@pytest.fixture(scope="module")
def metered(etcd_server):
    """One master (counting the cluster every 0.2 s), one API, the fake node; no sandbox left over
    from the previous test."""
    c = Cluster(etcd_server.endpoint)
    try:
        c.add_cubelet("node-a")
        c.start_master(CUBE_MASTER_METRICS_REFRESH_S="0.2")
        c.start_api()
        yield c
    finally:
        c.stop()


@pytest.fixture(autouse=True)
def _no_sandboxes(metered):
    metered.wipe_sandboxes()


def test_api_counts_requests_by_route_template_method_and_status(metered):
    c = metered
    api = c.api
    assert api is not None
    before = scrape(api.metrics_url)
    r = httpx.post(c.api_url + "/v2/sandboxes", headers=H, json={"templateID": "base"}, timeout=30)
    assert r.status_code == 201, r.text
    sid = r.json()["sandboxID"]
    assert httpx.get(f"{c.api_url}/sandboxes/{sid}", headers=H, timeout=10).status_code == 200
    assert httpx.get(f"{c.api_url}/sandboxes/nosuchsandbox00000000", headers=H, timeout=10).status_code == 404
    assert httpx.get(f"{c.api_url}/no/such/{sid}/path", headers=H, timeout=10).status_code == 404
    assert httpx.get(f"{c.api_url}/v2/sandboxes", timeout=10).status_code == 401  # no key

    after = scrape(api.metrics_url)
    name = "cube_api_request_duration_seconds_count"

    def moved(**labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert moved(route="/v2/sandboxes", method="POST", status="201") == 1
    assert moved(route="/sandboxes/<raw_id:str>", method="GET", status="200") == 1
    assert moved(route="/sandboxes/<raw_id:str>", method="GET", status="404") == 1
    assert moved(route="unmatched", method="GET", status="404") == 1
    assert moved(route="/v2/sandboxes", method="GET", status="401") == 1
    assert after.families["cube_api_request_duration_seconds"] == "histogram"
    # A create's latency is in a bucket, and no label ever carries a sandbox id or a raw path.
    assert after.value("cube_api_request_duration_seconds_bucket", route="/v2/sandboxes", method="POST",
                       status="201", le="+Inf") >= 1
    assert sid not in after.text and "/no/such" not in after.text
    assert after.label_values("cube_api_request_duration_seconds_count", "route") <= {
        "/v2/sandboxes", "/sandboxes/<raw_id:str>", "unmatched", "/health"}
    # The API port itself serves no figures (Prometheus brings no key).
    assert httpx.get(c.api_url + "/metrics", headers=H, timeout=10).status_code == 404


def _master(c) -> Page:
    return scrape(c.masters[0].metrics_url)


def test_master_counts_calls_the_cluster_route_acks_and_builds(metered):
    c = metered
    before = _master(c)
    assert before.value("cube_master_leader") == 1
    r = httpx.post(c.api_url + "/v2/sandboxes", headers=H, json={"templateID": "base"}, timeout=30)
    assert r.status_code == 201, r.text
    assert httpx.get(f"{c.api_url}/sandboxes/nosuchsandbox00000000", headers=H, timeout=10).status_code == 404

    def handled(page: Page, method: str, code: str) -> float:
        return page.value("cube_grpc_server_handled_total", service="cube.v1.Master", method=method, code=code)

    after = _master(c)
    assert handled(after, "CreateSandbox", "OK") - handled(before, "CreateSandbox", "OK") == 1
    assert handled(after, "GetSandbox", "NOT_FOUND") - handled(before, "GetSandbox", "NOT_FOUND") == 1
    assert after.value("cube_grpc_server_handling_seconds_count", method="CreateSandbox") >= 1
    # The create waited for the proxies' acks (none run here: at once) and wrote etcd in transactions.
    ack = "cube_master_route_ack_seconds_count"
    assert after.value(ack, result="applied") - before.value(ack, result="applied") == 1
    assert after.value("cube_etcd_request_duration_seconds_count", op="txn") > before.value(
        "cube_etcd_request_duration_seconds_count", op="txn")
    assert after.has("cube_etcd_request_duration_seconds_bucket", op="get", le="+Inf")

    # The leader's count of the cluster, every phase reported (0 too).
    page = wait_until(lambda: (p := _master(c)).value("cube_master_sandboxes", phase="running") == 1 and p,
                      what="the leader counting the running sandbox")
    assert page.label_values("cube_master_sandboxes", "phase") >= {"creating", "running", "paused", "lost"}
    assert page.value("cube_master_nodes", state="ready") == 1
    assert page.value("cube_master_nodes", state="draining") == 0

    # A template build the master runs on the node, to its verdict.
    ch, stub = c.master_stub()
    try:
        job = stub.CreateTemplateBuild(P.CreateTemplateBuildRequest(build=oci()), timeout=10)
        assert wait_job(stub, job.job_id).phase == C.READY
    finally:
        ch.close()
    page = wait_until(lambda: (p := _master(c)).value("cube_master_template_builds", phase="ready") == 1 and p,
                      what="the leader counting the finished build")
    assert page.value("cube_master_template_builds_finished_total", result="ready") == 1
    assert page.value("cube_master_template_build_seconds_count", result="ready") == 1
    # The node's phase times (the fake's PULLING 300 ms) land in their buckets.
    assert page.value("cube_master_template_build_phase_seconds_bucket", phase="pulling", le="0.5") == 1
    assert page.value("cube_master_template_build_phase_seconds_bucket", phase="pulling", le="0.1") == 0


def test_a_standby_reports_no_cluster_counts(metered):
    c = metered
    standby = c.start_master("standby", wait_leader=False)
    page = wait_until(lambda: (p := scrape(standby.metrics_url)).has("cube_master_leader") and p,
                      what="the standby's figures")
    assert page.value("cube_master_leader") == 0
    assert "cube_master_sandboxes" not in page.families and "cube_master_template_builds" not in page.families
