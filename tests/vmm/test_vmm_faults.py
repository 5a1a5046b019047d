"""Bad input and faults: typed errors with the console tail, and nothing left behind.

The autouse `no_leaks` fixture checks after each test that no machine dir and no QEMU process of
this session remain.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from dataclasses import replace

import pytest

from tests.vmm.conftest import MEMORY_MB, probe_config
from vmm_core import (
    BootError,
    InvalidSpecError,
    MachineGoneError,
    NetworkAttachment,
    Snapshot,
    SnapshotError,
    boot,
    clone,
    prepare_clone,
    restore,
    save,
)
from vmm_core.disks import writable_layer

pytestmark = pytest.mark.asyncio(loop_scope="session")


def spec_for(guest, probe_image, workdir, n, name="f", **kw):
    rw = writable_layer(workdir / f"{name}-rw.img", 32, probe_config(counter=False))
    return guest.machine_spec(probe_image, rw, memory_mb=MEMORY_MB, network=n.attachment, **kw)


async def test_missing_kernel(settings, guest, probe_image, workdir, net):
    spec = replace(spec_for(guest, probe_image, workdir, net()), kernel=workdir / "no-such-vmlinuz")
    with pytest.raises(InvalidSpecError, match="kernel"):
        await boot(settings, "nokernel", spec)


async def test_corrupt_kernel(settings, guest, probe_image, workdir, net):
    bad = workdir / "garbage-vmlinuz"
    bad.write_bytes(os.urandom(1 << 20))
    spec = replace(spec_for(guest, probe_image, workdir, net()), kernel=bad)
    with pytest.raises(BootError) as e:
        m = await boot(settings, "badkernel", spec)
        try:
            await m.wait_guest(20)
        finally:
            await m.kill()
    assert "kernel" in str(e.value).lower() or e.value.console_tail


async def test_missing_image(settings, guest, probe_image, workdir, net):
    with pytest.raises(InvalidSpecError, match="does not exist"):
        await boot(settings, "noimage", spec_for(guest, workdir / "nope.ext4", workdir, net()))


async def test_corrupt_base_image_reports_console(settings, guest, probe_image, workdir, net):
    bad = workdir / "garbage-base.erofs"
    bad.write_bytes(os.urandom(4 << 20))
    spec = spec_for(guest, probe_image, workdir, net())
    spec = replace(spec, disks=(replace(spec.disks[0], path=bad),) + spec.disks[1:])
    m = await boot(settings, "badbase", spec)
    try:
        with pytest.raises(MachineGoneError) as e:
            await m.wait_guest(120)
        assert "cube-initramfs: mount" in e.value.console_tail
    finally:
        await m.kill()


async def test_tap_that_does_not_exist(settings, guest, probe_image, workdir, net):
    n = net()
    spec = spec_for(guest, probe_image, workdir, n).with_network(NetworkAttachment("nosuchtap", netns=n.name))
    with pytest.raises(InvalidSpecError, match="nosuchtap"):
        await boot(settings, "notap", spec)


async def test_clone_with_missing_tap(settings, template_snapshot, net):
    n = net()
    with pytest.raises(InvalidSpecError, match="tap"):
        await clone(settings, template_snapshot, "notap-clone", NetworkAttachment("ghost", netns=n.name))


async def test_memory_below_snapshot(settings, template_snapshot, net):
    with pytest.raises(InvalidSpecError, match="needs exactly"):
        await clone(settings, template_snapshot, "small", net().attachment, memory_mb=MEMORY_MB // 2)


async def copy_snapshot(snap: Snapshot, dest) -> Snapshot:
    shutil.copytree(snap.dir, dest)
    for p in dest.iterdir():
        p.chmod(0o644)
    return Snapshot.load(dest)


async def test_corrupt_snapshot_state(settings, template_snapshot, workdir, net):
    bad = await copy_snapshot(template_snapshot, workdir / "bad-state")
    bad.state.write_bytes(bad.state.read_bytes()[:4096])
    with pytest.raises(SnapshotError) as e:
        await clone(settings, bad, "badstate", net().attachment)
    assert "restor" in str(e.value)


async def test_truncated_snapshot_memory(settings, template_snapshot, workdir, net):
    bad = await copy_snapshot(template_snapshot, workdir / "bad-mem")
    os.truncate(bad.memory, 1 << 20)
    with pytest.raises(SnapshotError, match="memory file"):
        await clone(settings, bad, "badmem", net().attachment)


async def test_qemu_killed_mid_boot(settings, guest, probe_image, workdir, net):
    m = await boot(settings, "midboot", spec_for(guest, probe_image, workdir, net()))
    os.kill(m.pid, signal.SIGKILL)
    with pytest.raises(MachineGoneError):
        await m.wait_guest(60)
    await m.kill()
    assert not m.paths.dir.exists()


async def _kill_when_started(settings, vm_id: str, timeout: float = 30.0) -> None:
    pidfile = settings.vms_dir / vm_id / "qemu.pid"
    deadline = time.monotonic() + timeout
    while not pidfile.exists():
        assert time.monotonic() < deadline, "QEMU never started"
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.05)
    os.kill(int(pidfile.read_text()), signal.SIGKILL)


async def _stalled_state(snap: Snapshot) -> tuple[Snapshot, int]:
    """Replace the snapshot's state file by a FIFO that is open for writing but never written, so
    the restore hangs mid-way. Close the returned descriptor when done."""
    real = snap.state.read_bytes()
    snap.state.unlink()
    os.mkfifo(snap.state)
    snap.state.with_name("state.real").write_bytes(real)
    # Without a writer, QEMU would read end-of-file at once and fail instead of hanging.
    writer = os.open(snap.state, os.O_RDWR | os.O_NONBLOCK)
    return snap, writer


async def test_qemu_killed_mid_clone(settings, template_snapshot, workdir, net):
    snap = await copy_snapshot(template_snapshot, workdir / "stall-clone")
    snap, writer = await _stalled_state(snap)
    # verify() insists on a non-empty regular state file; this test needs the FIFO through.
    object.__setattr__(snap, "verify", lambda: None)
    try:
        task = asyncio.create_task(clone(settings, snap, "midclone", net().attachment))
        await _kill_when_started(settings, "midclone")
        with pytest.raises(SnapshotError):
            await task
    finally:
        os.close(writer)


async def test_qemu_killed_mid_restore_keeps_saved_state(settings, template_snapshot, workdir, net):
    n = net()
    m = await clone(settings, template_snapshot, "midrestore", n.attachment)
    await n.wait_http("/cgi-bin/counter")
    assert n.http_get("/cgi-bin/put?precious=yes") == "ok"
    saved = await save(m, workdir / "saved-midrestore")
    real_state = saved.state.read_bytes()
    _, writer = await _stalled_state(saved)
    object.__setattr__(saved, "verify", lambda: None)
    try:
        task = asyncio.create_task(restore(settings, saved, "midrestore", n.attachment))
        await _kill_when_started(settings, "midrestore")
        with pytest.raises(SnapshotError):
            await task
    finally:
        os.close(writer)
    # The failed restore gave the disk back: the saved sandbox is intact and restorable.
    assert saved.disk.exists()
    saved.state.unlink()
    saved.state.write_bytes(real_state)
    saved = Snapshot.load(saved.dir)
    m = await restore(settings, saved, "midrestore", n.attachment)
    try:
        await n.wait_http("/cgi-bin/counter")
        assert n.http_get("/cgi-bin/get?precious") == "yes"
    finally:
        await m.kill()


async def test_prepared_clone_whose_qemu_died(settings, template_snapshot, net):
    """A standby QEMU killed while it waits: start() raises SnapshotError and leaves nothing."""
    prepared = await prepare_clone(settings, template_snapshot, "standbydead", net().attachment)
    os.kill(prepared.machine.pid, signal.SIGKILL)
    with pytest.raises(SnapshotError):
        await prepared.start()
