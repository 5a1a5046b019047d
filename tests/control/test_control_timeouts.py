"""End times are enforced by the leader: kill at the end, or pause with auto-pause; set_timeout
and connect move the end time."""

from __future__ import annotations

import time

import pytest
from e2b import Sandbox, SandboxState

from tests.control.cluster import wait_until

pytestmark = pytest.mark.timeout(60)


def test_timeout_kills(sdk_env, fresh):
    sbx = Sandbox.create(timeout=1)
    sid = sbx.sandbox_id
    assert fresh.cubelets[0].ids() == {sid}
    wait_until(lambda: sid not in fresh.sandbox_ids(), timeout=6, what="expiry")
    assert fresh.route_ids() == set() and fresh.cubelets[0].ids() == set()
    assert fresh.cubelets[0].calls_of("KillSandbox") == [sid]
    assert sbx.kill() is False


def test_timeout_pauses_with_auto_pause_then_connect_resumes(sdk_env, fresh):
    sbx = Sandbox.create(timeout=1, lifecycle={"on_timeout": "pause"})
    sid = sbx.sandbox_id
    wait_until(lambda: (fresh.record(sid) or {}).get("phase") == "SANDBOX_PHASE_PAUSED", timeout=6, what="auto-pause")
    assert sbx.get_info().state == SandboxState.PAUSED
    assert fresh.etcd.get_json(f"{fresh.prefix}/routes/{sid}")["state"] == "ROUTE_STATE_PAUSED"
    assert fresh.cubelets[0].calls_of("PauseSandbox") == [sid]
    time.sleep(1)  # a paused sandbox is not "expired" again
    assert fresh.cubelets[0].calls_of("PauseSandbox") == [sid] and sid in fresh.sandbox_ids()
    Sandbox.connect(sid, timeout=60)
    assert sbx.get_info().state == SandboxState.RUNNING
    assert 50 <= sbx.get_info().end_at.timestamp() - time.time() <= 61
    sbx.kill()


def test_set_timeout_extends_and_shortens(sdk_env, fresh):
    keep = Sandbox.create(timeout=1)
    keep.set_timeout(60)
    short = Sandbox.create(timeout=300)
    short.set_timeout(1)
    wait_until(lambda: short.sandbox_id not in fresh.sandbox_ids(), timeout=6, what="shortened expiry")
    assert keep.sandbox_id in fresh.sandbox_ids()
    keep.kill()


def test_connect_extends_a_running_sandbox(sdk_env, fresh):
    sbx = Sandbox.create(timeout=2)
    Sandbox.connect(sbx.sandbox_id, timeout=60)
    time.sleep(3)
    assert sbx.get_info().state == SandboxState.RUNNING
    sbx.kill()


def test_a_paused_sandbox_is_deleted_after_the_retention(own_cluster, monkeypatch):
    own_cluster.add_cubelet("node-a")
    own_cluster.start_master(CUBE_MASTER_PAUSED_RETENTION_S="2")
    own_cluster.start_api()
    monkeypatch.setenv("E2B_API_URL", own_cluster.api_url)
    monkeypatch.setenv("E2B_API_KEY", "e2b_" + "0" * 40)
    kept = Sandbox.create(timeout=60)  # running: no retention applies
    sbx = Sandbox.create(timeout=60)
    sid = sbx.sandbox_id
    sbx.pause()
    assert (own_cluster.record(sid) or {}).get("phase") == "SANDBOX_PHASE_PAUSED"
    wait_until(lambda: sid not in own_cluster.sandbox_ids(), timeout=10, what="paused retention")
    assert sid not in own_cluster.cubelets[0].ids() and own_cluster.route_ids() == {kept.sandbox_id}
    assert kept.sandbox_id in own_cluster.sandbox_ids()
    kept.kill()
