"""A node's snapshot templates (TemplateStore.snapshot_sandbox's records) and what they hold on to,
on the files alone (the snapshot itself, with QEMU, is tests/vmm/test_checkpoint.py and
tests/e2e/test_e2e_snapshots.py): the base template cannot be deleted under them, its old build
they read through is not pruned, no node is served them, and the info file holding the guest's
token is the owner's alone."""
from __future__ import annotations

import asyncio
import json
import stat

import pytest

from sdk.gen.cube.v1 import cubelet_pb2 as pb
from services.cubelet.settings import CubeletSettings
from services.cubelet.templates import TemplateInUse, TemplateStore
from services.cubelet.transfer import ArtifactSource, TransferError
from vmm_core import VmmSettings


def _template(store: TemplateStore, tid: str, key: str, base: str = "", token: str = "") -> None:
    build = store.settings.templates_dir / tid / "builds" / key / "snapshot"
    build.mkdir(parents=True)
    info = pb.TemplateInfo(template_id=tid, base_template_id=base, source_sandbox_id="s" if base else "")
    store.write_info(tid, info, key, {}, guest_token=token)


@pytest.fixture
def store(tmp_path) -> TemplateStore:
    settings = CubeletSettings(node_id="n", state_dir=tmp_path / "node", etcd_endpoints=("127.0.0.1:2379",))
    vmm = VmmSettings.from_env().with_overrides(runtime_dir=tmp_path / "vms")
    return TemplateStore(settings, vmm, vs=None)  # type: ignore[arg-type]  # no build runs here


def test_a_base_template_outlives_its_snapshots_and_keeps_the_build_they_read(store):
    _template(store, "base", "old")
    old = store.settings.templates_dir / "base" / "builds" / "old"
    _template(store, "snap-1", "snapshot-1", base="base", token="t" * 32)
    # The snapshot's record names the base's build it reads through (its disk's backing, its image).
    (store.settings.templates_dir / "snap-1" / "builds" / "snapshot-1" / "snapshot" / "snapshot.json").write_text(
        json.dumps({"spec": {"disks": [{"path": str(old / "snapshot" / "disk.img")}]}}))
    (store.settings.templates_dir / "base" / "builds" / "new").mkdir(parents=True)
    store.write_info("base", pb.TemplateInfo(template_id="base"), "new", {})

    with pytest.raises(TemplateInUse, match="snap-1"):
        store.check_no_snapshots("base")
    with pytest.raises(TemplateInUse):
        store.delete("base")
    assert store.get("base") is not None
    assert store.prune("base") == [] and old.is_dir()  # the snapshot still reads it

    info = store.settings.templates_dir / "snap-1" / "info.json"
    assert stat.S_IMODE(info.stat().st_mode) == 0o600 and store.get("snap-1").guest_token == "t" * 32

    with pytest.raises(TransferError) as e:
        asyncio.run(ArtifactSource(store).manifest("snap-1"))
    assert e.value.code == "FAILED_PRECONDITION"

    assert store.delete("snap-1") is True
    assert store.prune("base") == ["old"] and not old.exists()
    assert store.delete("base") is True and store.get("base") is None
