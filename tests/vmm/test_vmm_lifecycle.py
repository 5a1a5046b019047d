"""Boot, snapshot, copy-on-write clones, pause/resume, save/restore, re-attach, accounting."""
from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path

import pytest

from tests.vmm.conftest import MEMORY_MB, counter, probe_config
from vmm_core import InvalidSpecError, Machine, boot, clone, prepare_clone, restore, save
from vmm_core.disks import writable_layer

pytestmark = pytest.mark.asyncio(loop_scope="session")


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


async def test_cold_boot_and_probe(settings, guest, probe_image, workdir, net):
    n = net()
    rw = writable_layer(workdir / "boot-rw.img", 32, probe_config(counter=False))
    m = await boot(settings, "cold", guest.machine_spec(probe_image, rw, memory_mb=MEMORY_MB, network=n.attachment))
    try:
        uptime = await m.wait_guest(120)
        assert uptime > 0
        assert await n.wait_http("/") == "cube probe"
        stats = m.stats()
        assert stats.pss_bytes > 0 and stats.cpu_seconds > 0 and stats.writable_disk_bytes > 0
        assert "cube-init: ready" in m.console_tail(200)
    finally:
        await m.kill()
    assert not m.paths.dir.exists()


async def test_three_concurrent_clones_are_isolated(settings, template_snapshot, net):
    snap = template_snapshot
    before = {f: sha256(snap.dir / f) for f in ("memory", "disk.img", "state")}
    nets = [net() for _ in range(3)]
    clones = await asyncio.gather(*(clone(settings, snap, f"clone{i}", n.attachment) for i, n in enumerate(nets)))
    try:
        await asyncio.gather(*(n.wait_http("/cgi-bin/counter") for n in nets))
        # Every clone continues the template's in-memory counter process (same pid), not a reboot.
        template_pid = {counter(n)[0] for n in nets}
        assert len(template_pid) == 1
        for i, n in enumerate(nets):
            assert n.http_get("/cgi-bin/get?origin") == "template"
            assert n.http_get(f"/cgi-bin/put?mine=clone{i}") == "ok"
        for i, n in enumerate(nets):
            assert n.http_get("/cgi-bin/get?mine") == f"clone{i}"
        # Fresh entropy and the current clock after restore, although all share one snapshot.
        randoms = {n.http_get("/cgi-bin/random") for n in nets}
        assert len(randoms) == 3
        for n in nets:
            assert abs(int(n.http_get("/cgi-bin/clock")) - time.time()) < 5
    finally:
        await asyncio.gather(*(c.kill() for c in clones))
    # Nothing a clone did reached the snapshot.
    assert {f: sha256(snap.dir / f) for f in before} == before


async def test_pause_resume_in_place(settings, template_snapshot, net):
    n = net()
    m = await clone(settings, template_snapshot, "pauser", n.attachment)
    try:
        await n.wait_http("/cgi-bin/counter")
        pid, _ = counter(n)
        await m.pause()
        assert await m.run_state() == "paused"
        with pytest.raises(OSError):
            n.http_get("/cgi-bin/counter", timeout=1.0)
        await m.resume()
        assert await m.run_state() == "running"
        await asyncio.sleep(0.6)
        pid2, count2 = counter(n)
        assert pid2 == pid and count2 > 0
        assert abs(int(n.http_get("/cgi-bin/clock")) - time.time()) < 5
    finally:
        await m.kill()


async def test_save_restore_three_times_loses_nothing(settings, template_snapshot, net, workdir):
    n = net()
    m = await clone(settings, template_snapshot, "saver", n.attachment)
    try:
        await n.wait_http("/cgi-bin/counter")
        pid, count = counter(n)
        for cycle in range(3):
            assert n.http_get(f"/cgi-bin/put?cycle{cycle}=written-{cycle}") == "ok"
            saved = await save(m, workdir / f"saved-{cycle}")
            assert not m.paths.dir.exists()
            assert saved.state.stat().st_size > 0 and saved.disk.exists()
            m = await restore(settings, saved, "saver", n.attachment)
            assert not saved.dir.exists()
            await n.wait_http("/cgi-bin/counter")
            await asyncio.sleep(0.5)
            pid2, count2 = counter(n)
            # The same process kept counting from where it was: memory survived, no reboot.
            assert pid2 == pid, f"cycle {cycle}: counter process changed ({pid} -> {pid2})"
            assert count2 > count, f"cycle {cycle}: counter went from {count} to {count2}"
            count = count2
        for cycle in range(3):
            assert n.http_get(f"/cgi-bin/get?cycle{cycle}") == f"written-{cycle}"
    finally:
        await m.kill()


async def test_reattach_after_controller_restart(settings, template_snapshot, net):
    n = net()
    m = await clone(settings, template_snapshot, "adoptee", n.attachment, labels={"sandbox": "abc"})
    try:
        await n.wait_http("/cgi-bin/counter")
        # A new controller knows only the runtime dir: it re-attaches by id.
        m.control.close()
        assert m.qmp is not None
        await m.qmp.disconnect()
        again = await Machine.attach(settings, "adoptee")
        assert again.pid == m.pid and again.record.labels == {"sandbox": "abc"}
        assert await again.run_state() == "running"
        await again.pause()
        await again.resume()
        assert n.http_get("/cgi-bin/get?origin") == "template"
        await again.kill()
    finally:
        await m.kill()


async def test_kill_is_idempotent_and_complete(settings, template_snapshot, net):
    n = net()
    m = await clone(settings, template_snapshot, "victim", n.attachment)
    overlay = m.writable_disk()
    assert overlay is not None and overlay.exists()
    await m.kill()
    await m.kill()
    assert not overlay.exists() and not m.paths.dir.exists()


async def test_clone_accounting(settings, template_snapshot, net):
    n = net()
    m = await clone(settings, template_snapshot, "metered", n.attachment)
    try:
        await n.wait_http("/cgi-bin/counter")
        s = m.stats()
        # A clone maps the snapshot's memory privately: it costs far less than its guest size.
        assert 0 < s.private_dirty_bytes < MEMORY_MB << 20
        assert s.pss_bytes > 0 and s.cpu_seconds > 0
        assert 0 < s.writable_disk_bytes < 64 << 20
    finally:
        await m.kill()


def _ram_vm_flags(pid: int, memory_mb: int) -> list[str]:
    """The VmFlags of the process's mapping of the guest's RAM (the one mapping of its size)."""
    flags, size = [], None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if line.startswith("Size:"):
            size = int(line.split()[1])
        elif line.startswith("VmFlags:") and size == memory_mb << 10:
            flags.append(line.split()[1:])
    assert len(flags) == 1, flags
    return flags[0]


async def test_guest_ram_is_offered_to_ksm_only_when_allowed(settings, template_snapshot, net):
    """KSM merges only pages madvised MERGEABLE ("mg" in smaps): never a clone's RAM by default."""
    n1, n2 = net(), net()
    plain = await clone(settings, template_snapshot, "unmerged", n1.attachment)
    merged = await clone(settings.with_overrides(mem_merge=True), template_snapshot, "merged", n2.attachment)
    try:
        assert "mg" not in await asyncio.to_thread(_ram_vm_flags, plain.pid, MEMORY_MB)
        assert "mg" in await asyncio.to_thread(_ram_vm_flags, merged.pid, MEMORY_MB)
        await n2.wait_http("/cgi-bin/counter")  # and it runs as any clone
    finally:
        await plain.kill()
        await merged.kill()


async def test_machines_have_no_pit(settings, template_snapshot, net):
    """No legacy 8254 timer in a template's clones: left counting by the firmware, it woke QEMU's
    main loop 36 times a second for a guest that never reads it (vmm_core/spec.py)."""
    n = net()
    m = await clone(settings, template_snapshot, "nopit", n.attachment)
    try:
        await n.wait_http("/cgi-bin/counter")  # the guest runs (its timer is the local APIC's)
        tree = str(await m.execute("human-monitor-command", {"command-line": "info qtree"}))
        assert "dev: mc146818rtc" in tree  # the ISA devices are listed...
        assert "isa-pit" not in tree and "kvm-pit" not in tree  # ...and no PIT among them
    finally:
        await m.kill()


async def test_clone_without_memory_sharing(settings, template_snapshot, net):
    """A clone with its own memory copy maps nothing of the snapshot's memory file."""
    n = net()
    m = await clone(settings, template_snapshot, "loner", n.attachment, share_memory=False)
    try:
        await n.wait_http("/cgi-bin/counter")
        assert n.http_get("/cgi-bin/get?origin") == "template"
        maps = await asyncio.to_thread(Path(f"/proc/{m.pid}/maps").read_text)
        assert str(template_snapshot.memory) not in maps
        assert str(m.paths.dir / "memory") in maps
    finally:
        await m.kill()


async def test_prepared_clone_starts_later_and_discard_leaves_nothing(settings, template_snapshot, net):
    """prepare_clone starts QEMU (waiting for the snapshot) ahead of need; start() restores into it
    and gives a working, isolated clone; an unused one is discarded without a trace; a prepared
    clone is used once."""
    n1, n2 = net(), net()
    prepared = await prepare_clone(settings, template_snapshot, "standby1", n1.attachment)
    spare = await prepare_clone(settings, template_snapshot, "standby2", n2.attachment)
    try:
        assert prepared.machine.pid > 0 and await prepared.machine.run_state() == "inmigrate"
        m = await prepared.start()
        try:
            await n1.wait_http("/cgi-bin/counter")
            assert n1.http_get("/cgi-bin/get?origin") == "template"
            with pytest.raises(InvalidSpecError):
                await prepared.start()
        finally:
            await m.kill()
        overlay = spare.machine.writable_disk()
        assert overlay is not None and overlay.exists()
    finally:
        await spare.discard()
        await spare.discard()
    assert not overlay.exists() and not spare.machine.paths.dir.exists()
