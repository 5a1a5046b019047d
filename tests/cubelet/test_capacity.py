"""What a node refuses before it runs out of room (services/cubelet/sandboxes.py: disk_refusal)."""
from __future__ import annotations

import shutil

import pytest

from sdk.gen.cube.v1 import cubelet_pb2 as pb
from services.cubelet.sandboxes import SandboxError, SandboxManager, disk_refusal
from services.cubelet.settings import CubeletSettings
from vmm_core import VmmSettings


async def test_a_node_below_its_disk_watermark_takes_no_new_sandboxes(tmp_path):
    """Refused with RESOURCE_EXHAUSTED before anything is made: no record, no VM, no network."""
    free_mb = shutil.disk_usage(tmp_path).free >> 20
    full = CubeletSettings(state_dir=tmp_path, min_free_disk_mb=free_mb + 1024)
    assert disk_refusal(CubeletSettings(state_dir=tmp_path, min_free_disk_mb=1), "x") is None
    mgr = SandboxManager(full, VmmSettings(state_dir=tmp_path), None, None)  # type: ignore[arg-type]
    with pytest.raises(SandboxError) as e:
        await mgr.run(pb.RunSandboxRequest(sandbox_id="s1", template_id="t"))
    assert e.value.code == "RESOURCE_EXHAUSTED" and "watermark" in str(e.value)
    assert list(full.sandboxes_dir.iterdir()) == []
