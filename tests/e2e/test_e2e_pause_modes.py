"""Filesystem-only pause and snapshots, and reboot on resume, with the unmodified SDK
(`e2b_code_interpreter` 2.11 / `e2b` 2.63) on the node `make up` runs: `pause(mode="filesystem")`
keeps the disk (even what the guest had not written back yet) and drops the memory, and the
resume cold-boots the sandbox from its template with that disk, its code interpreter answering
again; `connect(on_resume="reboot")` does the same for a full pause; `create_snapshot(mode=
"filesystem")` makes a snapshot whose sandboxes boot on its disk, while the source runs on.
Real QEMU microVMs (TCG here: a cold boot takes tens of seconds, a restore tens of milliseconds)."""
from __future__ import annotations

import time

from e2b import SandboxState
from e2b_code_interpreter import Sandbox

from tests.e2e import cluster

TEMPLATES = cluster.STATE / "cubelet" / "templates"
# In guest memory only (tmpfs): what a memory restore keeps and a boot does not.
MEMORY_MARK = "/dev/shm/cube-mark"


def mark_memory_and_disk(sbx: Sandbox) -> None:
    assert sbx.run_code("kept = 'in the kernel'; print('ok')").logs.stdout == ["ok\n"]
    sbx.commands.run(f"echo here > {MEMORY_MARK}")
    # Through envd, not synced by anyone: the pause must have the guest write it back.
    sbx.files.write("/home/user/notes.txt", "written before the pause")


def assert_booted_with_disk(sbx: Sandbox) -> None:
    assert sbx.files.read("/home/user/notes.txt") == "written before the pause"
    assert sbx.commands.run(f"test -e {MEMORY_MARK} && echo memory || echo booted").stdout.strip() == "booted"
    r = sbx.run_code("kept")  # a fresh kernel: its variables are gone
    assert r.error is not None and r.error.name == "NameError"
    assert sbx.run_code("1 + 1").text == "2"


def test_a_filesystem_pause_keeps_the_disk_and_reboots(sandboxes, api):
    sbx = sandboxes.create({"case": "fs-pause"}, envs={"WHO": "me"}, timeout=600)
    mark_memory_and_disk(sbx)
    t0 = time.monotonic()
    assert sbx.pause(mode="filesystem") is True
    paused_s = time.monotonic() - t0
    assert sbx.get_info().state == SandboxState.PAUSED
    assert api.get(f"/sandboxes/{sbx.sandbox_id}").json()["pauseMode"] == "filesystem"
    saved = cluster.CUBELET_PAUSED / sbx.sandbox_id
    assert sorted(p.name for p in saved.iterdir()) == ["disk.qcow2", "snapshot.json"]  # no memory file

    t0 = time.monotonic()
    back = Sandbox.connect(sbx.sandbox_id, timeout=600, request_timeout=180)
    booted_s = time.monotonic() - t0
    assert back.get_info().state == SandboxState.RUNNING and "pauseMode" not in api.get(
        f"/sandboxes/{sbx.sandbox_id}").json()
    assert_booted_with_disk(back)
    # The same sandbox: its id, token and env vars, and its disk takes new writes.
    assert back.commands.run("echo $WHO").stdout.strip() == "me"
    back.files.write("/home/user/after.txt", "after the reboot")
    assert back.files.read("/home/user/after.txt") == "after the reboot"
    print(f"filesystem pause {paused_s:.2f} s, cold-boot resume {booted_s:.1f} s")


def test_a_full_pause_can_be_resumed_by_rebooting(sandboxes):
    sbx = sandboxes.create({"case": "reboot-resume"}, timeout=600)
    mark_memory_and_disk(sbx)
    sbx.commands.run("sync")  # a full pause does not write back: a reboot sees what is on disk
    assert sbx.pause() is True
    back = Sandbox.connect(sbx.sandbox_id, on_resume="reboot", timeout=600, request_timeout=180)
    assert_booted_with_disk(back)
    assert not (cluster.CUBELET_PAUSED / sbx.sandbox_id).exists()  # the dropped memory is gone


def test_a_filesystem_snapshot_boots_its_sandboxes_on_its_disk(sandboxes):
    src = sandboxes.create({"case": "fs-snapshot-src"}, timeout=600)
    mark_memory_and_disk(src)
    snap = src.create_snapshot(mode="filesystem")
    tid = snap.snapshot_id.removesuffix(":default")
    assert sorted(p.name for p in (TEMPLATES / tid).glob("builds/*/snapshot/*")) == ["disk.qcow2", "snapshot.json"]
    # The source runs on, with its memory.
    assert src.run_code("print(kept)").logs.stdout == ["in the kernel\n"]
    src.files.write("/home/user/later.txt", "after the snapshot")

    a = sandboxes.create({"case": "fs-snapshot-a"}, template=snap.snapshot_id, timeout=600, request_timeout=180)
    assert a.get_info().template_id == tid
    assert_booted_with_disk(a)
    assert not a.files.exists("/home/user/later.txt")
    a.files.write("/home/user/mine.txt", "a")
    assert not src.files.exists("/home/user/mine.txt")
    a.kill()
    assert Sandbox.delete_snapshot(snap.snapshot_id) is True
    assert not (TEMPLATES / tid).exists()
    assert src.run_code("print(kept)").logs.stdout == ["in the kernel\n"]
