"""Filesystem-only pauses and snapshots, and reboot on resume, as the unmodified E2B SDK asks for
them (`pause(mode="filesystem")`, `lifecycle={"on_timeout": {"action": "pause", "mode":
"filesystem"}}`, `connect(on_resume="reboot")`, `create_snapshot(mode="filesystem")`): real master
and API, the fake cubelet (TEST DOUBLE) as the node, which records what it was asked. What reaches
the node, what the record and route say (a filesystem-only pause is never auto-resumed by traffic),
and the refusals. The VMs' side is tests/e2e/test_e2e_pause_modes.py and tests/vmm/test_cold_boots.py."""

from __future__ import annotations

import httpx
import pytest
from e2b import Sandbox, SandboxState
from e2b.exceptions import InvalidArgumentException, SandboxException

from tests.control.cluster import wait_until

pytestmark = pytest.mark.timeout(60)


def node_pauses(fresh, sid: str) -> list[bool]:
    return [r.filesystem_only for r in fresh.cubelets[0].pauses if r.sandbox_id == sid]


def node_reboots(fresh, sid: str) -> list[bool]:
    return [r.reboot for r in fresh.cubelets[0].resumes if r.sandbox_id == sid]


def route(fresh, sid: str) -> dict:
    return fresh.etcd.get_json(f"{fresh.prefix}/routes/{sid}")


def detail(fresh, sid: str) -> dict:
    r = httpx.get(f"{fresh.api_url}/sandboxes/{sid}", headers={"X-API-KEY": "e2b_" + "0" * 40})
    assert r.status_code == 200, r.text
    return r.json()


def test_a_filesystem_pause_reaches_the_node_and_its_resume_reboots(sdk_env, fresh):
    sbx = Sandbox.create(lifecycle={"on_timeout": "pause", "auto_resume": True})
    sid = sbx.sandbox_id
    assert route(fresh, sid)["state"] == "ROUTE_STATE_RUNNING"
    sbx.pause(mode="filesystem")
    assert node_pauses(fresh, sid) == [True]
    assert fresh.record(sid)["pausedFilesystemOnly"] is True
    assert detail(fresh, sid)["pauseMode"] == "filesystem"
    # Created with auto-resume, but a filesystem-only pause cold-boots: traffic must not wake it.
    assert route(fresh, sid)["state"] == "ROUTE_STATE_PAUSED" and not route(fresh, sid).get("autoResume")
    # A plain connect (on_resume left to the API) reboots it all the same: there is no memory.
    Sandbox.connect(sid)
    assert node_reboots(fresh, sid) == [True] and sbx.get_info().state == SandboxState.RUNNING
    assert "pausedFilesystemOnly" not in fresh.record(sid) and "pauseMode" not in detail(fresh, sid)

    # A full pause keeps its memory, and traffic may resume it again.
    sbx.pause()
    assert node_pauses(fresh, sid) == [True, False] and detail(fresh, sid)["pauseMode"] == "full"
    assert route(fresh, sid)["autoResume"] is True
    Sandbox.connect(sid)
    assert node_reboots(fresh, sid) == [True, False]
    # ... unless the caller asks to reboot (the rescue path for a memory image that wedges).
    sbx.pause()
    Sandbox.connect(sid, on_resume="reboot")
    assert node_reboots(fresh, sid) == [True, False, True]
    sbx.kill()


def test_a_timeout_pause_can_keep_the_filesystem_only(sdk_env, fresh):
    sbx = Sandbox.create(timeout=1, lifecycle={"on_timeout": {"action": "pause", "mode": "filesystem"}})
    sid = sbx.sandbox_id
    assert fresh.record(sid)["autoPauseFilesystemOnly"] is True
    wait_until(lambda: (fresh.record(sid) or {}).get("phase") == "SANDBOX_PHASE_PAUSED", timeout=8,
               what="auto-pause")
    assert node_pauses(fresh, sid) == [True] and detail(fresh, sid)["pauseMode"] == "filesystem"
    sbx.kill()

    # The SDK refuses auto-resume with it itself; the API does too, for clients that do not.
    with pytest.raises(InvalidArgumentException):
        Sandbox.create(lifecycle={"on_timeout": {"action": "pause", "mode": "filesystem"}, "auto_resume": True})
    r = httpx.post(f"{fresh.api_url}/sandboxes", headers={"X-API-KEY": "e2b_" + "0" * 40},
                   json={"templateID": "base", "autoPause": True, "autoPauseMemory": False,
                         "autoResume": {"enabled": True}})
    assert r.status_code == 400 and "autoResume" in r.json()["message"], r.text
    assert r.json()["code"] == 400
    r = httpx.post(f"{fresh.api_url}/sandboxes/{sid}/pause", headers={"X-API-KEY": "e2b_" + "0" * 40},
                   json={"memory": "no"})
    assert r.status_code == 400 and "memory" in r.json()["message"], r.text
    assert fresh.sandbox_ids() == set()


def test_a_filesystem_snapshot_is_asked_of_the_node(sdk_env, fresh):
    sbx = Sandbox.create()
    snap = sbx.create_snapshot(mode="filesystem")
    reqs = [c for c in fresh.cubelets[0].calls if c[0] == "SnapshotSandbox"]
    assert len(reqs) == 1
    tid = snap.snapshot_id.removesuffix(":default")
    assert fresh.etcd.get_json(f"{fresh.prefix}/templates/{tid}")["filesystemOnly"] is True
    # A full one is not.
    full = sbx.create_snapshot()
    assert not fresh.etcd.get_json(f"{fresh.prefix}/templates/{full.snapshot_id.removesuffix(':default')}") \
        .get("filesystemOnly")
    for s in (snap, full):
        Sandbox.delete_snapshot(s.snapshot_id)
    sbx.kill()
    with pytest.raises(SandboxException):
        sbx.create_snapshot(mode="filesystem")  # of a killed sandbox: the SDK's error, nothing made
