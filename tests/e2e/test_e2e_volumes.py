"""Volumes with the unmodified SDKs (`e2b` 2.63, `e2b-code-interpreter` 2.11) on the node `make up`
runs, with only E2B_API_URL, E2B_API_KEY and SSL_CERT_FILE set: `Volume.create`, content calls
(which the SDK sends to `https://api.<domain>` with the volume's token: the node's proxy routes them
to the API), `Sandbox.create(volume_mounts=...)`, data that outlives its sandbox, one sandbox at a
time, a volume's token opening that volume only, and a volume in use refusing deletion. Real QEMU microVMs (TCG
here), real Envoy."""
from __future__ import annotations

import json
import subprocess
import uuid

import pytest
from e2b import AuthenticationException, NotFoundException, SandboxException, Volume, VolumeException
from e2b.volume.types import VolumeFileType

from tests.e2e.cluster import CFG
from tests.e2e.run import CREATED, RUN_ID
from tests.e2e.test_e2e_js import JS, js_env
from tests.support.npm import npm_ci


@pytest.fixture
def volume():
    vol = Volume.create(f"e2e-{RUN_ID}-{uuid.uuid4().hex[:6]}")
    yield vol
    Volume.destroy(vol.volume_id)


def test_data_written_in_one_sandbox_is_read_by_the_next(sandboxes, volume):
    # Content calls before any sandbox: the SDK's own URL and token, through the node's proxy.
    volume.make_dir("/seed")
    stat = volume.write_file("/seed/hello.txt", "from the volume API")
    assert stat.type == VolumeFileType.FILE and stat.size == len("from the volume API")
    assert sorted(e.name for e in volume.list("/")) == ["lost+found", "seed"]

    a = sandboxes.create({"case": "volume-a"}, volume_mounts={"/mnt/data": volume})
    assert a.files.read("/mnt/data/seed/hello.txt") == "from the volume API"
    # The default user writes to the volume's root.
    r = a.commands.run("echo written by a > /mnt/data/note.txt && id -un && stat -c %U /mnt/data/note.txt")
    assert r.stdout.split() == ["user", "user"]
    assert a.run_code("open('/mnt/data/note.txt').read()").text.strip("'\\n") == "written by a"
    info = a.get_info()
    assert [(m["name"], m["path"]) if isinstance(m, dict) else (m.name, m.path)
            for m in info.volume_mounts] == [(volume.name, "/mnt/data")]

    # Mounted: one sandbox at a time, content calls and deletion refused with the reason.
    with pytest.raises(SandboxException, match="mounted by sandbox"):
        sandboxes.create({"case": "volume-twice"}, volume_mounts={"/mnt/data": volume.name})
    with pytest.raises(VolumeException, match="mounted by sandbox"):
        volume.read_file("/note.txt")
    with pytest.raises(VolumeException, match="mounted by sandbox"):
        Volume.destroy(volume.volume_id)
    a.kill()

    # The data outlived its sandbox: the content API and the next sandbox read it.
    assert volume.read_file("/note.txt") == "written by a\n"
    b = sandboxes.create({"case": "volume-b"}, volume_mounts={"/home/user/data": volume.name})
    assert b.files.read("/home/user/data/note.txt") == "written by a\n"
    assert b.files.read("/home/user/data/seed/hello.txt") == "from the volume API"
    b.kill()

    volume.remove("/seed")
    assert not volume.exists("/seed/hello.txt")


def test_a_paused_sandbox_keeps_its_volume(sandboxes, volume):
    a = sandboxes.create({"case": "volume-pause"}, volume_mounts={"/mnt/v": volume})
    a.files.write("/mnt/v/kept.txt", "across a pause")
    a.pause()
    # Paused, it still holds the filesystem (its guest's memory does).
    with pytest.raises(VolumeException, match="mounted by sandbox"):
        volume.read_file("/kept.txt")
    a.connect()
    assert a.files.read("/mnt/v/kept.txt") == "across a pause"
    a.kill()
    assert volume.read_file("/kept.txt") == "across a pause"


def test_a_volume_s_token_opens_that_volume_only(volume):
    # (Teams: this node runs with auth off, every key acting for the local team; isolation between
    # teams is tested on an auth-on cluster, tests/control/test_api_volumes.py.)
    other = Volume.create(volume.name + "-x")
    try:
        other.write_file("/theirs.txt", "not yours")
        with pytest.raises(VolumeException, match="already exists"):
            Volume.create(volume.name)
        with pytest.raises(AuthenticationException):
            Volume(volume.volume_id, volume.name, token=other.token, domain=CFG.domain).read_file("/theirs.txt")
        with pytest.raises(AuthenticationException):
            Volume(other.volume_id, other.name, token=volume.token, domain=CFG.domain).read_file("/theirs.txt")
        assert Volume.connect(other.volume_id).read_file("/theirs.txt") == "not yours"
    finally:
        assert Volume.destroy(other.volume_id) is True
    assert Volume.destroy(other.volume_id) is False
    with pytest.raises(NotFoundException):
        Volume.get_info(other.volume_id)


def test_bad_mounts_are_refused_in_e2b_shape(sandboxes, volume):
    for mounts, match in (({"/proc/x": volume}, "/proc"), ({"relative/../x": volume}, r"\.\."),
                          ({"/mnt/a": volume, "/mnt/b": volume.name}, "twice"),
                          ({"/mnt/x": "no-such-volume-" + RUN_ID}, "not found")):
        with pytest.raises(SandboxException, match=match):
            sandboxes.create({"case": "volume-bad"}, volume_mounts=mounts)


def test_js_sdk_volumes():
    """The same with the unmodified JS SDK (tests/e2e/js/volumes.mjs)."""
    node = npm_ci(JS, "the JS SDK test")
    name = f"e2e-js-{RUN_ID}-{uuid.uuid4().hex[:6]}"
    r = subprocess.run([node, "volumes.mjs", name], cwd=JS, env=js_env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    out = json.loads(r.stdout.strip().splitlines()[-1])
    CREATED.add(out["sandboxId"])
    assert out["seen"] == "written by the JS SDK", out
    assert out["refused"] and "mounted by sandbox" in out["refused"], out
    assert out["killed"] is True and out["back"] == "from the sandbox\n", out
    assert out["entries"] == ["back.txt", "from-js.txt", "lost+found"], out
    assert out["destroyed"] is True, out
