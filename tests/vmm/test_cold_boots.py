"""Filesystem-only saves and snapshots (vmm_core.cold_boots): what a machine wrote, even what sat in
its page cache, is on the saved disk; a machine cold-booted on it has those files and none of the
old memory (a fresh counter process); a shared (snapshot) disk serves any number of boots, each on
its own copy-on-write; a failed boot leaves the saved disk where it was. Real QEMU (TCG here)."""
from __future__ import annotations

import asyncio

import pytest

from tests.vmm.conftest import counter
from vmm_core import (
    InvalidSpecError,
    NetworkAttachment,
    SnapshotError,
    SnapshotKind,
    clone,
    cold_boot,
    cold_boots,
    disk_checkpoint,
    save,
    save_disk,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_a_filesystem_save_keeps_the_page_cache_and_boots_afresh(settings, template_snapshot, net, workdir):
    n = net()
    m = await clone(settings, template_snapshot, "cold-src", n.attachment)
    booted = None
    try:
        await n.wait_http("/cgi-bin/counter")
        assert n.http_get("/cgi-bin/memo?note=in-memory") == "ok"
        assert n.http_get("/cgi-bin/keep?cached=yes") == "ok"  # not synced by the guest itself
        dest = workdir / "disk-saves" / "one"
        snap = await save_disk(m, dest)
        assert snap.kind is SnapshotKind.DISK and snap.spec.memory_file is None
        assert not snap.state.exists() and snap.disk.is_file() and not m.alive()
        assert sorted(p.name for p in dest.iterdir()) == ["disk.qcow2", "snapshot.json"]

        n2 = net()
        booted = await cold_boot(settings, snap, "cold-src", n2.attachment)
        await n2.wait_http("/cgi-bin/counter")
        assert n2.http_get("/cgi-bin/get?cached") == "yes"
        assert n2.http_get("/cgi-bin/get?origin") == "template"
        assert n2.http_get("/cgi-bin/recall?note") == "MISSING"  # a fresh boot: no old memory
        assert not dest.exists(), "the boot consumed the saved disk"
    finally:
        await m.kill()
        if booted is not None:
            await booted.kill()


async def test_a_disk_checkpoint_serves_many_boots_and_the_source_runs_on(settings, template_snapshot, net, workdir):
    src_net = net()
    src = await clone(settings, template_snapshot, "cold-ckpt-src", src_net.attachment)
    machines = [src]
    try:
        await src_net.wait_http("/cgi-bin/counter")
        assert src_net.http_get("/cgi-bin/keep?mine=before") == "ok"
        pid, count = counter(src_net)
        snap = await disk_checkpoint(src, workdir / "disk-checkpoints" / "one")
        assert snap.kind is SnapshotKind.DISK and (snap.disk.stat().st_mode & 0o777) == 0o444

        await asyncio.sleep(0.5)
        spid, scount = counter(src_net)
        assert spid == pid and scount > count  # the same process, counting on
        assert src_net.http_get("/cgi-bin/put?later=source") == "ok"

        nets = [net(), net()]
        for i, n in enumerate(nets):
            machines.append(await cold_boot(settings, snap, f"cold-ckpt-{i}", n.attachment, shared=True))
        for n in nets:
            await n.wait_http("/cgi-bin/counter")
            assert n.http_get("/cgi-bin/get?mine") == "before"
            assert n.http_get("/cgi-bin/get?later") == "MISSING"  # written by the source after
        assert nets[0].http_get("/cgi-bin/put?own=zero") == "ok"
        assert nets[1].http_get("/cgi-bin/get?own") == "MISSING"
        assert src_net.http_get("/cgi-bin/get?own") == "MISSING"
        assert snap.disk.is_file() and snap.meta.is_file(), "shared boots leave the snapshot as it was"
    finally:
        for m in machines:
            await m.kill()


async def test_a_failed_boot_gives_the_saved_disk_back(settings, template_snapshot, net, workdir):
    n = net()
    m = await clone(settings, template_snapshot, "cold-fail", n.attachment)
    try:
        await n.wait_http("/cgi-bin/counter")
        assert n.http_get("/cgi-bin/put?kept=1") == "ok"
        snap = await save_disk(m, workdir / "disk-saves" / "fail")
        with pytest.raises(InvalidSpecError):
            await cold_boot(settings, snap, "cold-fail", NetworkAttachment("cvs-no-such-tap"))
        assert snap.disk.is_file() and not (settings.vms_dir / "cold-fail").exists()
        n2 = net()
        again = await cold_boot(settings, snap, "cold-fail", n2.attachment)
        try:
            await n2.wait_http("/cgi-bin/counter")
            assert n2.http_get("/cgi-bin/get?kept") == "1"
        finally:
            await again.kill()
    finally:
        await m.kill()


async def test_a_full_save_reboots_on_its_disk_without_its_memory(settings, template_snapshot, net, workdir):
    n = net()
    m = await clone(settings, template_snapshot, "cold-saved", n.attachment)
    booted = None
    try:
        await n.wait_http("/cgi-bin/counter")
        assert n.http_get("/cgi-bin/put?synced=1") == "ok"
        assert n.http_get("/cgi-bin/memo?note=in-memory") == "ok"
        saved = await save(m, workdir / "saves" / "reboot")
        n2 = net()
        booted = await cold_boot(settings, saved, "cold-saved", n2.attachment)
        await n2.wait_http("/cgi-bin/counter")
        assert n2.http_get("/cgi-bin/get?synced") == "1"
        assert n2.http_get("/cgi-bin/recall?note") == "MISSING"
        assert not saved.dir.exists(), "the boot consumed the save, memory and all"
    finally:
        await m.kill()
        if booted is not None:
            await booted.kill()


async def test_a_guest_that_cannot_write_back_is_not_saved_and_runs_on(settings, template_snapshot, net, workdir,
                                                                     monkeypatch):
    n = net()
    m = await clone(settings, template_snapshot, "cold-stuck", n.attachment)
    try:
        await n.wait_http("/cgi-bin/counter")
        monkeypatch.setattr(cold_boots, "SYNC_TIMEOUT_S", 1.0)
        await m.execute("stop")  # a guest that answers nothing
        dest = workdir / "disk-saves" / "stuck"
        with pytest.raises(SnapshotError, match="write back"):
            await save_disk(m, dest)
        assert not dest.exists() and not (dest.parent / ".stuck.partial").exists()
        assert await m.run_state() == "running"
        _, before = counter(n)
        await asyncio.sleep(0.6)
        assert counter(n)[1] > before
    finally:
        await m.kill()
