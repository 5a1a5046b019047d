"""A saved clone copied from another host, made to run on this host's template copy
(vmm_core.snapshots.rehome_saved), and the qcow2 header reader it trusts (vmm_core.disks): real
qemu-img, real files, no VM.

- Every path the copy's metadata names becomes this host's (kernel, initramfs, read-only disks and
  memory from the template, the overlay in the copy's own dir), and the overlay reads through this
  host's template disk; the other host's paths are neither kept nor opened.
- An overlay that names an external data file, a copy that is not a saved clone, and a machine of
  another shape are refused, the copy left as it was.
"""
from __future__ import annotations

import json
import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from vmm_core import Disk, DiskFormat, MachineSpec, Snapshot, SnapshotError, SnapshotKind
from vmm_core.disks import cow_overlay, qcow2_header
from vmm_core.snapshots import rehome_saved

MEMORY_MB = 128
SERIALS = ("cube-base", "cube-tpl", "cube-rw")


def _file(path: Path, size: int = 4096) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def _spec(root: Path, rw: Path, rw_format: DiskFormat, memory: Path) -> MachineSpec:
    disks = (Disk(root / "base.img", SERIALS[0]), Disk(root / "image.ext4", SERIALS[1]),
             Disk(rw, SERIALS[2], readonly=False, format=rw_format))
    return MachineSpec(kernel=root / "vmlinuz", initramfs=root / "initramfs", disks=disks, memory_mb=MEMORY_MB,
                       memory_file=memory)


def template_here(root: Path) -> Snapshot:
    """A template snapshot on "this host": its files exist, under ``root``."""
    for name in ("vmlinuz", "initramfs", "base.img", "image.ext4"):
        _file(root / name)
    snap_dir = root / "snapshot"
    _file(snap_dir / "state")
    _file(snap_dir / "memory", MEMORY_MB << 20)
    _file(snap_dir / "disk.img", 64 << 20)
    snap = Snapshot(snap_dir, SnapshotKind.TEMPLATE, _spec(root, snap_dir / "disk.img", DiskFormat.RAW,
                                                           snap_dir / "memory"), 1.0)
    snap.write_meta()
    return Snapshot.load(snap_dir)


def saved_copy(tmp: Path, other_host: Path, **qcow2_options: str) -> Path:
    """A saved clone as it arrives from another host: its overlay made on that host's template disk
    (which exists here only while the overlay is made), its metadata naming that host's files."""
    backing = _file(other_host / "snapshot" / "disk.img", 64 << 20)
    saved = tmp / "arrived"
    saved.mkdir(parents=True)
    overlay = saved / "disk.qcow2"
    if qcow2_options:
        opts = ",".join(f"{k}={v}" for k, v in qcow2_options.items())
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", opts, "-F", "raw", "-b", str(backing),
                        str(overlay)], check=True)
    else:
        cow_overlay(backing, overlay)
    backing.unlink()  # the other host's file: not here
    _file(saved / "state")
    spec = _spec(other_host, other_host / "paused" / "x" / "disk.qcow2", DiskFormat.QCOW2,
                 other_host / "snapshot" / "memory")
    (saved / "snapshot.json").write_text(json.dumps({"kind": "saved", "spec": spec.to_dict(), "created_at": 2.0}))
    return saved


def test_a_saved_copy_runs_on_this_hosts_template(tmp_path):
    tpl = template_here(tmp_path / "here")
    saved = saved_copy(tmp_path, tmp_path / "elsewhere")
    snap = rehome_saved(saved, tpl)
    assert snap.kind is SnapshotKind.SAVED and snap.dir == saved
    spec = snap.spec
    assert (spec.kernel, spec.initramfs, spec.memory_file) == (tpl.spec.kernel, tpl.spec.initramfs, tpl.memory)
    assert [(d.path, d.serial, d.readonly) for d in spec.disks] == [
        (tpl.spec.disks[0].path, SERIALS[0], True), (tpl.spec.disks[1].path, SERIALS[1], True),
        (saved / "disk.qcow2", SERIALS[2], False)]
    header = qcow2_header(saved / "disk.qcow2")
    assert header is not None and header.backing == str(tpl.disk).encode() and not header.external_data
    assert "elsewhere" not in (saved / "snapshot.json").read_text()
    # A clone of a template without shared memory gets a memory file a restore makes afresh.
    private = tmp_path / "vms" / "x" / "memory"
    saved2 = saved_copy(tmp_path / "second", tmp_path / "elsewhere2")
    assert rehome_saved(saved2, tpl, private_memory=private).spec.memory_file == private


def test_what_is_not_a_saved_clone_of_that_template_is_refused(tmp_path):
    tpl = template_here(tmp_path / "here")
    # An overlay whose data lives in a file the other host names: never opened here.
    data_file = tmp_path / "elsewhere-data"
    saved = saved_copy(tmp_path / "ext", tmp_path / "elsewhere", data_file=str(data_file))
    os.unlink(data_file)
    before = (saved / "snapshot.json").read_text()
    with pytest.raises(SnapshotError, match="not a qcow2 overlay this host can take"):
        rehome_saved(saved, tpl)
    assert (saved / "snapshot.json").read_text() == before and not data_file.exists()

    saved = saved_copy(tmp_path / "kind", tmp_path / "elsewhere3")
    meta = json.loads((saved / "snapshot.json").read_text())
    (saved / "snapshot.json").write_text(json.dumps({**meta, "kind": "template"}))
    with pytest.raises(SnapshotError, match="not a saved clone"):
        rehome_saved(saved, tpl)

    saved = saved_copy(tmp_path / "shape", tmp_path / "elsewhere4")
    spec = MachineSpec.from_dict(json.loads((saved / "snapshot.json").read_text())["spec"])
    bigger = replace(spec, memory_mb=MEMORY_MB * 2)
    (saved / "snapshot.json").write_text(json.dumps({"kind": "saved", "spec": bigger.to_dict(), "created_at": 2.0}))
    with pytest.raises(SnapshotError, match="another shape"):
        rehome_saved(saved, tpl)
