"""The VMM jail (vmm_core/jail.py, vmm_core/cgroups.py) around real QEMU microVMs under TCG: what a
guest that took over its QEMU would find, and that nothing of the jail outlives the machine."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from vmm_core import InvalidSpecError, boot, clone
from vmm_core.cgroups import Hierarchy, Limits, MachineCgroup, detect
from vmm_core.jail import PIDS_MAX, JailError, UidPool
from vmm_core.settings import Accel

from .conftest import MEMORY_MB


def status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


def limits_of(pid: int) -> dict[str, str]:
    rows = Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]
    return {r[:26].strip(): r[26:].split()[0] for r in rows}


def cgroups_of(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(","):
            out[c] = path
    return out


def files_under(root: Path) -> set[str]:
    return {"/" + str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def mount_options(pid: int) -> dict[str, str]:
    """Mount point (as ``pid`` sees it, from its root) -> its options."""
    rows = [line.split() for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()]
    return {r[4]: r[5] for r in rows}


def jail_mounts() -> list[str]:
    return [line for line in Path("/proc/self/mounts").read_text().splitlines() if line.startswith("cube-jail ")]


def open_for_writing_as(uid: int, path: Path) -> subprocess.CompletedProcess:
    """Open ``path`` read-write as ``uid`` (what a jailed QEMU is, minus the chroot)."""
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "/bin/sh", "-c",
                           ': 3<>"$1"', "sh", str(path)], capture_output=True, text=True, timeout=30)


async def test_a_clone_runs_jailed_and_leaves_nothing(settings, template_snapshot, net):
    n = net()
    cg = MachineCgroup.for_machine("jailed-1", settings.cgroup_parent)
    assert cg is not None
    m = await clone(settings, template_snapshot, "jailed-1", n.attachment)
    claim = settings.jail_claims_dir / str(m.record.uid)
    try:
        await n.wait_http("/cgi-bin/counter")  # the guest works as before
        pid, uid = m.pid, m.record.uid
        assert uid is not None and uid >= settings.jail_uid_base
        st = status(pid)
        assert st["Uid"].split() == [str(uid)] * 4 and st["Gid"].split() == [str(uid)] * 4
        assert st["Groups"].split() == [str(uid)] and int(st["CapEff"], 16) == 0 and int(st["CapPrm"], 16) == 0
        assert st["Seccomp"] == "2"
        # Its root is the jail, in a mount namespace of its own: a read-only tmpfs holding its disks
        # (the overlay writable, the template's disk read-only) and nothing else.
        root = Path(f"/proc/{pid}/root")
        assert os.readlink(root) == str(m.paths.dir / "jail")
        assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
        inside = files_under(root)
        overlay = next(d.path for d in m.spec.disks if not d.readonly)
        assert str(overlay) in inside and str(template_snapshot.disk) in inside
        assert str(template_snapshot.memory) not in inside and str(m.spec.kernel) not in inside
        # Its mounts as it sees them (relative to its root): only the jail's.
        opts = mount_options(pid)
        assert set(opts) == {"/", str(overlay), *(str(d.path) for d in m.spec.disks if d.readonly),
                             str(template_snapshot.disk)}, opts
        assert opts["/"].startswith("ro,") and "noexec" in opts["/"]
        assert opts[str(template_snapshot.disk)].startswith("ro,") and opts[str(overlay)].startswith("rw,")
        assert not jail_mounts(), "the jail's mount must not be visible on the host"
        assert (m.paths.dir.stat().st_uid, m.paths.dir.stat().st_mode & 0o777) == (uid, 0o700)
        # Its own cgroup, with the limits set.
        assert detect() is Hierarchy.V1
        groups = cgroups_of(pid)
        for c in ("memory", "pids", "cpu"):
            assert groups[c].endswith(f"/{settings.cgroup_parent}/jailed-1"), groups
        want_mb = MEMORY_MB + settings.vmm_overhead_mb + settings.tcg_tb_size_mb
        assert int(cg.read("memory", "memory.limit_in_bytes")) == want_mb << 20
        assert int(cg.read("pids", "pids.max")) == PIDS_MAX
        assert int(cg.read("cpu", "cpu.shares")) == 1024
        # rlimits.
        lim = limits_of(pid)
        assert lim["Max open files"] == "4096" and lim["Max core file size"] == "0"
        assert int(lim["Max file size"]) > MEMORY_MB << 20
        # The template's files: root's, and not writable by the machine's uid even by path.
        for f in (template_snapshot.memory, template_snapshot.disk):
            assert (f.stat().st_uid, f.stat().st_mode & 0o777) == (0, 0o444)
            r = open_for_writing_as(uid, f)
            assert r.returncode != 0 and "Permission denied" in r.stderr, r.stderr
        # QEMU holds no descriptor on the template's memory file, only a write-sealed memfd of it:
        # nothing written through it, by anyone, reaches the memory every later clone maps.
        fds = {fd: os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        assert str(template_snapshot.memory) not in fds.values()
        sealed = [fd for fd, target in fds.items() if target.startswith("/memfd:cube-tpl:")]
        assert sealed, fds
        w = os.open(f"/proc/{pid}/fd/{sealed[0]}", os.O_WRONLY)
        try:
            with pytest.raises(PermissionError):
                os.pwrite(w, b"tampered", 0)
        finally:
            os.close(w)
        await n.wait_http("/cgi-bin/counter")  # and the clone still runs from it
        assert claim.read_text() == str(m.paths.dir)
    finally:
        await m.kill()
    assert not any(d.exists() for d in cg.dirs.values())
    assert not claim.exists()
    assert not jail_mounts()


async def test_save_and_restore_stay_jailed(settings, template_snapshot, net, workdir):
    """(Pause, re-attach and kill run jailed in test_vmm_lifecycle.py: every machine is jailed.)"""
    from vmm_core import restore, save

    n = net()
    m = await clone(settings, template_snapshot, "jailed-2", n.attachment)
    try:
        await n.wait_http("/cgi-bin/counter")
        assert n.http_get("/cgi-bin/put?jail=one") == "ok"
        # Saving goes through a descriptor: the jailed QEMU can neither reach the path nor exec.
        snap = await save(m, workdir / "snapshots" / "jailed-2-saved")
    except BaseException:
        await m.kill()
        raise
    m = await restore(settings, snap, "jailed-2", n.attachment)
    try:
        await n.wait_http("/cgi-bin/counter")
        assert n.http_get("/cgi-bin/get?jail") == "one"
        assert status(m.pid)["Seccomp"] == "2" and m.record.uid is not None
        assert status(m.pid)["Uid"].split()[0] == str(m.record.uid)
    finally:
        await m.kill()
    assert not (settings.jail_claims_dir / str(m.record.uid)).exists()


async def test_tcg_is_refused_unless_the_operator_allows_it(settings, guest, probe_image, workdir):
    strict = settings.with_overrides(allow_tcg=False, accel=Accel.TCG)
    rw = workdir / "tcg-rw.img"
    rw.write_bytes(b"\0" * (1 << 20))
    spec = guest.machine_spec(probe_image, rw, memory_mb=MEMORY_MB)
    with pytest.raises(InvalidSpecError, match="CUBE_ALLOW_TCG"):
        await boot(strict, "tcg-refused", spec)
    assert not (settings.vms_dir / "tcg-refused").exists()


async def test_an_exhausted_uid_pool_fails_cleanly(settings, template_snapshot, net, tmp_path):
    tiny = settings.with_overrides(jail_uid_count=1, jail_uid_base=settings.jail_uid_base + 100_000,
                                   jail_claims_dir=tmp_path / "claims")
    n1, n2 = net(), net()
    m = await clone(tiny, template_snapshot, "jailed-3", n1.attachment)
    try:
        with pytest.raises(JailError, match="no free jail uid"):
            await clone(tiny, template_snapshot, "jailed-4", n2.attachment)
        assert not (settings.vms_dir / "jailed-4").exists()
        left = MachineCgroup.for_machine("jailed-4", settings.cgroup_parent)
        assert left is not None and not any(d.exists() for d in left.dirs.values())
    finally:
        await m.kill()
    m = await clone(tiny, template_snapshot, "jailed-4", n2.attachment)  # the uid came back
    await m.kill()


def test_uid_claims_are_exclusive_and_stale_ones_come_back(tmp_path):
    pool = UidPool(tmp_path / "claims", 5000, 3)
    a, b = pool.claim(tmp_path / "vm-a"), pool.claim(tmp_path / "vm-b")
    assert a != b
    pool.release(a, tmp_path / "other")  # not its claim: kept
    assert (tmp_path / "claims" / str(a)).exists()
    pool.release(a, tmp_path / "vm-a")
    assert pool.claim(tmp_path / "vm-c") == a
    # vm-b's machine ran and died: its claim is taken back once no uid is free.
    (tmp_path / "vm-b").mkdir()
    (tmp_path / "vm-b" / "machine.json").write_text(json.dumps({"pid": 2 ** 22 + 7, "uid": b}))
    assert pool.claim(tmp_path / "vm-d") == 5002
    assert pool.claim(tmp_path / "vm-e") == b
    with pytest.raises(JailError, match="no free jail uid"):
        pool.claim(tmp_path / "vm-f")


def test_cgroup_v2_layout(tmp_path):
    """v2 is what production hosts have; these machines have v1, so the v2 writes are checked on a
    directory laid out like a v2 mount (the kernel's own behaviour is not simulated)."""
    root = tmp_path / "cg"
    (root / "system.slice" / "cube.service").mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    proc_self = tmp_path / "self-cgroup"
    proc_self.write_text("0::/system.slice/cube.service\n")
    for d in (root, root / "system.slice"):
        (d / "cgroup.subtree_control").write_text("")
    cg = MachineCgroup.for_machine("vm1", "cube-vms", root=root, proc_self=proc_self)
    assert cg is not None and cg.hierarchy is Hierarchy.V2
    d = root / "system.slice" / "cube-vms" / "vm1"
    assert cg.dirs == {"": d}
    # The kernel creates the control files with the directory; here the test does.
    (root / "system.slice" / "cube-vms").mkdir()
    (root / "system.slice" / "cube-vms" / "cgroup.subtree_control").write_text("")
    d.mkdir()
    for f in ("memory.max", "memory.swap.max", "pids.max", "cpu.weight", "cpu.max", "cgroup.procs"):
        (d / f).write_text("")
    cg.create(Limits(memory_bytes=512 << 20, pids=256, cpu_weight=200, cpu_quota_us=200_000))
    assert (d / "memory.max").read_text() == str(512 << 20) and (d / "memory.swap.max").read_text() == "0"
    assert (d / "pids.max").read_text() == "256" and (d / "cpu.weight").read_text() == "200"
    assert (d / "cpu.max").read_text() == "200000 100000"
    assert (root / "system.slice" / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    assert cg.enter_thread() is False  # v2 moves whole processes: add() after the spawn
    with pytest.raises(ValueError):
        MachineCgroup.for_machine("../escape", "cube-vms", root=root, proc_self=proc_self)
