"""Artifact and build garbage collection keeps what any machine, paused sandbox or template build
still names, and otherwise only the newest of each kind."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from services.cubelet.gc import prune_artifacts
from services.cubelet.references import sandbox_records
from services.cubelet.settings import CubeletSettings
from vmm_core import VmmSettings


def _artifact(root: Path, kind: str, key: str, age_s: float) -> Path:
    d = root / kind / key
    d.mkdir(parents=True)
    (d / "file").write_text(key)
    t = time.time() - age_s
    os.utime(d, (t, t))
    return d


def _record(path: Path, names: list[Path]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"files": [str(n) for n in names]}))


def test_prune_keeps_newest_and_everything_still_named(tmp_path):
    settings = CubeletSettings(state_dir=tmp_path)
    vmm = VmmSettings(state_dir=tmp_path)
    arts = vmm.artifacts_dir
    kernels = [_artifact(arts, "kernel", f"k{i}", age_s=100 * i) for i in range(6)]  # k0 newest
    _record(vmm.vms_dir / "sbx1" / "machine.json", [kernels[3] / "vmlinuz"])
    _record(settings.paused_dir / "sbx2" / "snapshot.json", [kernels[4] / "vmlinuz"])
    _record(settings.templates_dir / "tpl" / "builds" / "b1" / "snapshot" / "snapshot.json", [kernels[5]])
    assert len(sandbox_records(settings, vmm)) == 2

    removed = prune_artifacts(settings, vmm, keep_newest=2)

    assert removed == [kernels[2]]
    assert [k.exists() for k in kernels] == [True, True, False, True, True, True]


def test_a_cache_borrowed_from_another_state_dir_is_never_pruned(tmp_path):
    """A test cluster's hosts link the node's cache into their own state dirs: they cannot see the
    node's templates, so pruning there removed artifacts a template of the node still used."""
    owner = VmmSettings(state_dir=tmp_path / "node")
    kernels = [_artifact(owner.artifacts_dir, "kernel", f"k{i}", age_s=100 * i) for i in range(4)]
    host = tmp_path / "h1"
    host.mkdir()
    (host / "artifacts").symlink_to(owner.artifacts_dir)
    assert prune_artifacts(CubeletSettings(state_dir=host), VmmSettings(state_dir=host), keep_newest=1) == []
    # Nor by a cubelet whose vmm settings name a cache outside its state dir.
    elsewhere = CubeletSettings(state_dir=tmp_path / "other")
    assert prune_artifacts(elsewhere, owner, keep_newest=1) == []
    assert all(k.exists() for k in kernels)
    # The owner prunes its own.
    assert prune_artifacts(CubeletSettings(state_dir=tmp_path / "node"), owner, keep_newest=1) == kernels[1:]
