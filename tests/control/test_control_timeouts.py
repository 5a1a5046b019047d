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
