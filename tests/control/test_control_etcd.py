"""etcd unavailable: the API answers 503 promptly with an E2B body, nothing is half-written, and
everything works again once etcd is back (a create cut in the middle is undone)."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest

from testkit.etcd import EtcdServer
from tests.control.cluster import Cluster, wait_until

pytestmark = pytest.mark.timeout(120)
H = {"X-API-KEY": "k"}


@pytest.fixture
def outage_cluster():
    etcd = EtcdServer().start()
    c = Cluster(etcd.endpoint)
    try:
        c.add_cubelet("node-a")
        c.start_master(CUBE_MASTER_NODE_OP_TIMEOUT_S="4")
        c.start_api()
        yield c, etcd
    finally:
        if etcd.proc is None:
            etcd.start()
        c.stop()
        etcd.destroy()


def _consistent(c: Cluster) -> bool:
    recs = {sid: c.record(sid) for sid in c.sandbox_ids()}
    return (all(r is not None and r["phase"] == "SANDBOX_PHASE_RUNNING" for r in recs.values())
            and set(recs) == c.route_ids() == c.cubelets[0].ids())


def test_etcd_down_answers_503_promptly(outage_cluster):
    c, etcd = outage_cluster
    r = httpx.post(c.api_url + "/v2/sandboxes", headers=H, json={"templateID": "base"})
    assert r.status_code == 201
    sid = r.json()["sandboxID"]
    runs_before = len(c.cubelets[0].calls_of("RunSandbox"))

    etcd.stop()
    for method, path, body in [("POST", "/v2/sandboxes", {"templateID": "base"}), ("GET", f"/sandboxes/{sid}", None),
                               ("GET", "/v2/sandboxes", None), ("DELETE", f"/sandboxes/{sid}", None),
                               ("POST", f"/sandboxes/{sid}/timeout", {"timeout": 30}), ("GET", "/templates", None)]:
        t0 = time.monotonic()
        r = httpx.request(method, c.api_url + path, headers=H, json=body, timeout=30)
        elapsed = time.monotonic() - t0
        assert r.status_code == 503, (path, r.text)
        assert r.json()["code"] == 503 and r.json()["message"]
        assert elapsed < 5, (path, elapsed)
    assert len(c.cubelets[0].calls_of("RunSandbox")) == runs_before  # no VM was started blind

    etcd.start()
    wait_until(lambda: httpx.post(c.api_url + "/v2/sandboxes", headers=H,
                                  json={"templateID": "base"}).status_code == 201, timeout=20, what="recovery")
    assert httpx.get(c.api_url + f"/sandboxes/{sid}", headers=H).status_code == 200  # survived the outage
    assert len(c.sandbox_ids()) == 2
    assert _consistent(c)


def test_etcd_lost_in_the_middle_of_a_create_is_undone(outage_cluster):
    c, etcd = outage_cluster
    node = c.cubelets[0]
    node.run_delay_s = 1.5
    result: dict[str, httpx.Response] = {}
    t = threading.Thread(target=lambda: result.setdefault("r", httpx.post(
        c.api_url + "/v2/sandboxes", headers=H, json={"templateID": "base"}, timeout=60)))
    t.start()
    assert node.run_started.wait(10)
    etcd.stop()  # the CREATING record is written; the VM comes up; the RUNNING write fails
    t.join(30)
    assert result["r"].status_code == 503, result["r"].text
    node.run_delay_s = 0
    etcd.start()
    # The master killed the VM at once; the CREATING record it could not delete is removed
    # by the reconciler after its deadline.
    wait_until(lambda: node.ids() == set(), timeout=10, what="vm killed")
    wait_until(lambda: c.sandbox_ids() == set() and c.route_ids() == set(), timeout=20, what="record undone")
    assert httpx.post(c.api_url + "/v2/sandboxes", headers=H, json={"templateID": "base"}).status_code == 201
    assert _consistent(c)


def test_etcd_frozen_concurrent_calls_answer_503_and_a_leader_returns(outage_cluster):
    """etcd frozen (SIGSTOP: connections stay open and nothing answers) while several calls are in
    flight. The first call to time out gives the master a fresh etcd channel; the calls still on the
    old channel must get their own prompt 503 rather than be cut off with it (they once hung the
    client and killed the election loop, leaving the cluster without a leader for good)."""
    c, etcd = outage_cluster
    r = httpx.post(c.api_url + "/v2/sandboxes", headers=H, json={"templateID": "base"})
    assert r.status_code == 201, r.text
    sid = r.json()["sandboxID"]
    calls = [("POST", "/v2/sandboxes", {"templateID": "base"}), ("GET", "/v2/sandboxes", None),
             ("GET", f"/sandboxes/{sid}", None), ("GET", "/sandboxes/nosuchsandbox00000000", None),
             ("POST", f"/sandboxes/{sid}/timeout", {"timeout": 30})]
    results: dict[int, tuple[int, float]] = {}

    def call(i: int) -> None:
        method, path, body = calls[i]
        t0 = time.monotonic()
        try:
            resp = httpx.request(method, c.api_url + path, headers=H, json=body, timeout=15)
            ok = resp.status_code == 503 and resp.json().get("code") == 503
            results[i] = (resp.status_code if ok else -resp.status_code, time.monotonic() - t0)
        except httpx.HTTPError:
            results[i] = (0, time.monotonic() - t0)

    os.kill(etcd.proc.pid, signal.SIGSTOP)
    try:
        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(calls))]
        for t in threads:
            t.start()
            time.sleep(0.3)  # staggered, so some calls start on the channel the first failure retires
        for t in threads:
            t.join(20)
    finally:
        os.kill(etcd.proc.pid, signal.SIGCONT)
    report = {f"{calls[i][0]} {calls[i][1]}": (st, round(secs, 1)) for i, (st, secs) in sorted(results.items())}
    assert len(results) == len(calls), report
    assert all(st == 503 and secs < 6 for st, secs in results.values()), report

    # The master leads again (a leader-less cluster never expires or reconciles anything) and serves.
    wait_until(lambda: c.leader() is not None, timeout=20, what="a leader after the outage")
    wait_until(lambda: httpx.post(c.api_url + "/v2/sandboxes", headers=H,
                                  json={"templateID": "base"}).status_code == 201, timeout=20, what="recovery")
    assert c.masters[0].alive()
    assert "election round failed" not in c.masters[0].output()
    wait_until(lambda: _consistent(c), timeout=20, what="a consistent state")
