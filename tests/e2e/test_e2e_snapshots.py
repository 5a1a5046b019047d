"""Snapshots with the unmodified SDK (`e2b_code_interpreter` 2.11 / `e2b` 2.63) on the node `make up`
runs: `create_snapshot()` of a running code interpreter, sandboxes created from the snapshot id
(they start where the source was: its kernel's variables and its files, each on its own
copy-on-write), `list_snapshots()`, `delete_snapshot()`; the source runs on throughout. Real
QEMU microVMs (TCG here)."""
from __future__ import annotations

import pytest
from e2b import InvalidArgumentException, SandboxException
from e2b_code_interpreter import Sandbox

from tests.e2e import cluster

TEMPLATES = cluster.STATE / "cubelet" / "templates"


def test_create_from_a_snapshot_starts_where_the_source_was(sandboxes):
    src = sandboxes.create({"case": "snapshot-src"}, envs={"WHO": "source"})
    assert src.run_code("answer = 41; print('set')").logs.stdout == ["set\n"]
    src.files.write("/home/user/mark.txt", "from the source")
    snap = src.create_snapshot()
    tid = snap.snapshot_id.removesuffix(":default")
    assert tid != "code-interpreter" and (TEMPLATES / tid / "info.json").is_file()

    # The source runs on, with its memory.
    assert src.run_code("answer").text == "41"
    src.files.write("/home/user/later.txt", "after the snapshot")

    a = sandboxes.create({"case": "snapshot-a"}, template=snap.snapshot_id, envs={"WHO": "fork-a"})
    b = sandboxes.create({"case": "snapshot-b"}, template=snap.snapshot_id)
    assert len({src.sandbox_id, a.sandbox_id, b.sandbox_id}) == 3
    assert a.get_info().template_id == tid
    # The kernel's memory came along: the variable is there, no cell re-ran.
    assert a.run_code("answer + 1").text == "42"
    assert a.files.read("/home/user/mark.txt") == "from the source"
    assert not a.files.exists("/home/user/later.txt")  # written by the source after
    # Each is a sandbox of its own: its own identity, env and writes.
    assert a.commands.run("echo $WHO").stdout.strip() == "fork-a"
    a.files.write("/home/user/mine.txt", "a")
    assert not b.files.exists("/home/user/mine.txt") and not src.files.exists("/home/user/mine.txt")
    rand = "import random; print(random.random())"
    assert a.run_code(rand).logs.stdout != b.run_code(rand).logs.stdout

    listed = Sandbox.list_snapshots(sandbox_id=src.sandbox_id).next_items()
    assert [s.snapshot_id for s in listed] == [snap.snapshot_id]

    # In use: refused, and nothing changes; once its sandboxes are gone it is deleted.
    with pytest.raises(SandboxException):
        Sandbox.delete_snapshot(snap.snapshot_id)
    assert a.run_code("answer").text == "41"
    a.kill()
    b.kill()
    assert Sandbox.delete_snapshot(snap.snapshot_id) is True
    assert not (TEMPLATES / tid).exists()
    assert Sandbox.delete_snapshot(snap.snapshot_id) is False
    assert src.run_code("answer").text == "41"


def test_snapshot_refusals(sandboxes, api):
    sbx = sandboxes.create({"case": "snapshot-refusals"})
    r = api.post(f"/sandboxes/{sbx.sandbox_id}/snapshots", json={"memory": "no"})
    assert r.status_code == 400 and r.json()["code"] == 400 and "memory" in r.json()["message"]
    before = {p.name for p in TEMPLATES.iterdir()}
    sbx.pause()
    with pytest.raises(SandboxException):
        Sandbox.create_snapshot(sbx.sandbox_id)
    assert {p.name for p in TEMPLATES.iterdir()} == before
    assert not list(TEMPLATES.glob(".*"))  # no half-made template left


def test_fork_gives_running_copies_and_the_source_runs_on(sandboxes):
    src = sandboxes.create({"case": "fork-src"}, envs={"WHO": "source"})
    assert src.run_code("state = ['src']; print(len(state))").logs.stdout == ["1\n"]
    forks = src.fork(count=2, timeout=120)
    assert all(isinstance(f, Sandbox) for f in forks), forks
    for f in forks:
        sandboxes.track(f.sandbox_id)
    a, b = forks
    assert len({src.sandbox_id, a.sandbox_id, b.sandbox_id}) == 3
    # Where the source was: its kernel's state, its env, its metadata; then each goes its own way.
    assert a.run_code("state.append('a'); state").text == "['src', 'a']"
    assert b.run_code("state").text == "['src']"
    assert b.commands.run("echo $WHO").stdout.strip() == "source"
    assert a.get_info().metadata == src.get_info().metadata
    assert src.run_code("state").text == "['src']"
    # The fork's snapshot is not one of the team's snapshots.
    assert Sandbox.list_snapshots(sandbox_id=src.sandbox_id).next_items() == []
    # A bad count is refused by the SDK itself (the API's refusal: tests/control/test_control_snapshots.py).
    with pytest.raises(InvalidArgumentException):
        src.fork(count=0)
