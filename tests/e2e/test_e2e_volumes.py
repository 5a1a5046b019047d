"""Volumes with the unmodified SDKs (`e2b` 2.63, `e2b-code-interpreter` 2.11) on the node `make up`
runs, with only E2B_API_URL, E2B_API_KEY and SSL_CERT_FILE set: `Volume.create`, content calls
(which the SDK sends to `https://api.<domain>` with the volume's token: the node's proxy routes them
to the API), `Sandbox.create(volume_mounts=...)`, data that outlives its sandbox, one sandbox at a
time, a volume's token opening that volume only, and a volume in use refusing deletion. Real QEMU microVMs (TCG
here), real Envoy."""
from __future__ import annotations

import json
import subprocess
import sys
import uuid

import httpx
import pytest
from e2b import AuthenticationException, NotFoundException, SandboxException, Volume, VolumeException
from e2b.volume.types import VolumeFileType

from testkit.ports import free_port
from tests.control.cli import cubemastercli
from tests.e2e.cluster import CFG, REPO, wait_until
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


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def teams_api():
    """A second cube-api on this node with auth on (the node's own runs with auth off: every key
    acts for the local team), on the node's master, and two teams' keys issued with cubemastercli
    as an operator would. Yields (url, key of team A, key of team B)."""
    port, metrics = free_port(), free_port()
    env = {**CFG.env(), "CUBE_API_PORT": str(port), "CUBE_API_AUTH": "true",
           "CUBE_API_METRICS_LISTEN": f"127.0.0.1:{metrics}"}
    keys = []
    for team in ("e2e-vol-a", "e2e-vol-b"):
        cubemastercli(CFG.master_addr, "team", "create", team, check=False)  # ALREADY_EXISTS on a rerun
        out = json.loads(cubemastercli(CFG.master_addr, "--json", "apikey", "create", "--name", "e2e-volumes",
                                       "--team", team).stdout)
        keys.append((out["key"], out["apiKey"]["keyId"]))
    proc = subprocess.Popen([sys.executable, "-m", "services.api"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _answers(f"http://127.0.0.1:{port}/health"), timeout=60, what="the auth-on cube-api")
        yield f"http://127.0.0.1:{port}", keys[0][0], keys[1][0]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        for _, key_id in keys:
            cubemastercli(CFG.master_addr, "apikey", "revoke", key_id, check=False)


def test_another_team_sees_nothing_of_a_volume(sandboxes, teams_api):
    """Real VMs, the real API with auth on: team B cannot list, read, mount or delete team A's
    volume, and a name is per team."""
    url, key_a, key_b = teams_api
    a, b = {"api_key": key_a, "api_url": url}, {"api_key": key_b, "api_url": url}
    name = f"e2e-teams-{uuid.uuid4().hex[:6]}"
    vol = Volume.create(name, **a)
    try:
        vol.write_file("/secret.txt", "team a's")
        assert vol.volume_id not in {v.volume_id for v in Volume.list(**b)}
        with pytest.raises(NotFoundException):
            Volume.get_info(vol.volume_id, **b)
        assert Volume.destroy(vol.volume_id, **b) is False
        with pytest.raises(SandboxException, match="not found"):
            sandboxes.create({"case": "volume-other-team"}, volume_mounts={"/mnt": name}, **b)
        with pytest.raises(SandboxException, match="not found"):
            sandboxes.create({"case": "volume-other-team"}, volume_mounts={"/mnt": vol.volume_id}, **b)
        # Team B's volume of the same name is another volume, empty.
        theirs = Volume.create(name, **b)
        try:
            assert theirs.volume_id != vol.volume_id and not theirs.exists("/secret.txt")
            sbx = sandboxes.create({"case": "volume-team-b"}, volume_mounts={"/mnt/v": name}, **b)
            assert sbx.commands.run("ls /mnt/v").stdout.split() == ["lost+found"]
            sbx.kill()
        finally:
            Volume.destroy(theirs.volume_id, **b)
        # Team A's own sandbox sees its file.
        mine = sandboxes.create({"case": "volume-team-a"}, volume_mounts={"/mnt/v": name}, **a)
        assert mine.files.read("/mnt/v/secret.txt") == "team a's"
        mine.kill()
    finally:
        Volume.destroy(vol.volume_id, **a)


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
