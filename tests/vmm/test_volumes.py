"""Volume slots (vmm_core/volumes.py): a clone of a template gets a raw ext4 image in a slot its
snapshot had empty, the guest sees its real size and mounts it, and what the guest writes there is
in the image after the machine is gone; the next clone reads it. Real QEMU microVMs (TCG here)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from vmm_core import InvalidSpecError, VolumeError, clone, volumes

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _volume(path: Path, files: dict[str, str] | None = None, size_mb: int = 64) -> Path:
    src = path.with_suffix(".src")
    src.mkdir()
    for name, text in (files or {}).items():
        (src / name).write_text(text)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "cube-vol", "-d", str(src), str(path), f"{size_mb}M"],
                   check=True, capture_output=True)
    return path


def _debugfs_cat(image: Path, name: str) -> str:
    r = subprocess.run(["debugfs", "-R", f"cat /{name}", str(image)], capture_output=True, text=True, check=True)
    return r.stdout


def _assert_clean(image: Path) -> None:
    fsck = subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


async def test_a_volume_mounted_in_one_clone_is_read_by_the_next(settings, template_snapshot, net, workdir):
    assert len(template_snapshot.spec.volume_slots) == volumes.VOLUME_SLOTS
    assert all(slot is None for slot in template_snapshot.spec.volume_slots)
    image = _volume(workdir / "vol-a.ext4", {"hello": "from the host"})

    a_net = net()
    a = await clone(settings, template_snapshot, "vol-a", a_net.attachment, volume_images=[image])
    try:
        await volumes.mount(a, ["/data"])
        await a_net.wait_http("/cgi-bin/counter")
        # /data is the probe's data directory: the volume now covers what the template wrote there.
        assert a_net.http_get("/cgi-bin/get?hello") == "from the host"
        assert a_net.http_get("/cgi-bin/get?origin") == "MISSING"
        assert a_net.http_get("/cgi-bin/put?written=by-a") == "ok"
        assert await volumes.write_back(a)
    finally:
        await a.kill()
    assert _debugfs_cat(image, "written").strip() == "by-a"
    _assert_clean(image)

    b_net = net()
    b = await clone(settings, template_snapshot, "vol-b", b_net.attachment, volume_images=[image])
    try:
        await volumes.mount(b, ["/data"])
        await b_net.wait_http("/cgi-bin/counter")
        assert b_net.http_get("/cgi-bin/get?written") == "by-a"
    finally:
        await b.kill()

    # A clone without volumes is the template's: its /data is the template's own.
    c_net = net()
    c = await clone(settings, template_snapshot, "vol-c", c_net.attachment)
    try:
        await c_net.wait_http("/cgi-bin/counter")
        assert c_net.http_get("/cgi-bin/get?origin") == "template"
        assert c_net.http_get("/cgi-bin/get?written") == "MISSING"
    finally:
        await c.kill()


async def test_bad_volumes_are_refused_and_leave_nothing(settings, template_snapshot, net, workdir):
    n = net()
    with pytest.raises(InvalidSpecError, match="does not exist"):
        await clone(settings, template_snapshot, "vol-missing", n.attachment,
                    volume_images=[workdir / "no-such.ext4"])
    with pytest.raises(InvalidSpecError, match="slots"):
        await clone(settings, template_snapshot, "vol-many", n.attachment,
                    volume_images=[_volume(workdir / f"vol-m{i}.ext4") for i in range(volumes.VOLUME_SLOTS + 1)])
    # Not a filesystem: the guest refuses to mount it, and says why.
    junk = workdir / "junk.img"
    junk.write_bytes(b"\xff" * (4 << 20))
    m = await clone(settings, template_snapshot, "vol-junk", n.attachment, volume_images=[junk])
    try:
        with pytest.raises(VolumeError, match="slot 0"):
            await volumes.mount(m, ["/data"])
        # A mount path that leaves the root through a symlink is walked without following it.
        with pytest.raises(VolumeError):
            await volumes.mount(m, ["/../etc"])
    finally:
        await m.kill()
