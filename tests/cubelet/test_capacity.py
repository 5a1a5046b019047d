"""What a node refuses before it runs out of room: disk (services/cubelet/sandboxes.py: disk_refusal),
and memory and CPU headroom measured (services/cubelet/capacity.py)."""
from __future__ import annotations

import shutil

import pytest

from cube_common.settings import SettingsError
from sdk.gen.cube.v1 import cubelet_pb2 as pb
from services.cubelet import capacity
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


# -- admission by measured headroom (services/cubelet/capacity.py) ------------------------------------

GiB, MiB = 1 << 30, 1 << 20
HOST = capacity.Host(memory_total=24 * GiB, memory_available=20 * GiB, cores=2)


def idle(n: int, pss_mib: int = 100, cpu_ms: float = 9.0, age_s: float = 120.0) -> list[capacity.Sample]:
    return [capacity.Sample(pss_mib * MiB, age_s, cpu_ms / 1000) for _ in range(n)]


def test_before_enough_samples_the_configured_estimate_is_charged():
    room = capacity.headroom(HOST, 0, [], capacity.Limits())
    reserve = 24 * GiB // 10  # 10 % of 24 GiB is more than 2 GiB
    assert room.memory_per_sandbox == 256 * MiB and room.cpu_per_sandbox == 0
    assert room.can_take == (20 * GiB - reserve) // (256 * MiB) and room.limited_by == "memory"
    # Three sampled are not enough to measure; the estimate stays, and the unsampled are charged.
    room3 = capacity.headroom(HOST, 5, idle(3), capacity.Limits())
    assert room3.memory_per_sandbox == 256 * MiB
    assert room3.can_take == (20 * GiB - reserve - 2 * 256 * MiB) // (256 * MiB)


def test_measured_cost_replaces_the_estimate_and_cpu_limits_many_idle_sandboxes():
    room = capacity.headroom(HOST, 150, idle(150, pss_mib=100, cpu_ms=10), capacity.Limits())
    assert room.memory_per_sandbox == 100 * MiB and room.cpu_per_sandbox == pytest.approx(0.010)
    # 2 cores x 80 % = 1.6 cores = 160 idle sandboxes at 10 ms/s; 150 run, so 10 more.
    assert room.can_take == 10 and room.limited_by == "cpu"
    full = capacity.headroom(HOST, 160, idle(160, cpu_ms=10), capacity.Limits())
    assert full.can_take == 0 and "10 ms of CPU per second" in full.reason and "80 %" in full.reason


def test_young_sandboxes_are_charged_what_they_have_still_to_grow_by():
    """A fresh clone keeps dirtying pages for its first minute: its figure is not yet its cost. The
    settled ones' 90th percentile is, and each young one is charged the rest of it."""
    settled = idle(10, pss_mib=140)
    young = [capacity.Sample(40 * MiB, 10.0, None)] * 20
    room = capacity.headroom(HOST, 30, settled + young, capacity.Limits())
    reserve = 24 * GiB // 10
    assert room.memory_per_sandbox == 140 * MiB
    assert room.can_take == (20 * GiB - reserve - 20 * 100 * MiB) // (140 * MiB)
    # With only young ones, the configured estimate is the cost, whatever they show now.
    only_young = capacity.headroom(HOST, 20, young, capacity.Limits())
    assert only_young.memory_per_sandbox == 256 * MiB
    assert only_young.can_take == (20 * GiB - reserve - 20 * 216 * MiB) // (256 * MiB)
    assert "have still to grow by" in capacity.headroom(
        capacity.Host(8 * GiB, 3 * GiB, 2), 8, [capacity.Sample(16 * MiB, 5.0, None)] * 8, capacity.Limits()).reason


def test_busy_sandboxes_do_not_make_the_node_look_full():
    """The CPU estimate is the lower quartile: a quarter of the sandboxes spinning leaves it at the
    idle ones' figure."""
    busy = [capacity.Sample(100 * MiB, 120.0, 1.0)] * 5
    room = capacity.headroom(HOST, 20, idle(15, cpu_ms=5) + busy, capacity.Limits())
    assert room.cpu_per_sandbox == pytest.approx(0.005) and room.can_take > 100
    # A few sandboxes, all spinning: load, not a lack of room (the CPU is not measured below 16).
    few = capacity.headroom(HOST, 8, busy + busy[:3], capacity.Limits())
    assert few.cpu_per_sandbox == 0 and few.can_take > 50
    # Sandboxes with one sample have no rate yet: they count for memory, not for CPU.
    fresh = capacity.headroom(HOST, 20, [capacity.Sample(100 * MiB, 120.0, None)] * 20, capacity.Limits())
    assert fresh.memory_per_sandbox == 100 * MiB and fresh.cpu_per_sandbox == 0


def test_the_operator_cap_and_the_reserve_bound_it():
    capped = capacity.headroom(HOST, 3, idle(3), capacity.Limits(max_sandboxes=3))
    assert capped.can_take == 0 and capped.limited_by == "cap" and "cap is 3" in capped.reason
    assert capacity.headroom(HOST, 1, idle(1), capacity.Limits(max_sandboxes=3)).can_take == 2
    tight = capacity.Host(memory_total=8 * GiB, memory_available=2 * GiB + 200 * MiB, cores=2)
    room = capacity.headroom(tight, 0, [], capacity.Limits())  # 2 GiB reserve leaves 200 MiB < 256
    assert room.can_take == 0 and room.limited_by == "memory" and "reserve of 2048 MiB" in room.reason
    assert capacity.headroom(tight, 0, [], capacity.Limits(memory_reserve_mb=1124)).can_take == 4


async def test_a_node_without_memory_headroom_refuses_before_making_anything(tmp_path):
    """A reserve larger than the host's memory: the create is refused with RESOURCE_EXHAUSTED and
    the reason, and nothing is made; the node's NodeStatus figure says 0."""
    settings = CubeletSettings(state_dir=tmp_path, min_free_disk_mb=1, memory_reserve_mb=1 << 30)
    mgr = SandboxManager(settings, VmmSettings(state_dir=tmp_path), None, None)  # type: ignore[arg-type]
    assert mgr.headroom().can_take == 0
    with pytest.raises(SandboxError) as e:
        await mgr.run(pb.RunSandboxRequest(sandbox_id="s1", template_id="t"))
    assert e.value.code == "RESOURCE_EXHAUSTED" and "MiB of memory available" in str(e.value)
    assert list(settings.sandboxes_dir.iterdir()) == []
    roomy = SandboxManager(CubeletSettings(state_dir=tmp_path, memory_reserve_mb=1), VmmSettings(state_dir=tmp_path),
                           None, None)  # type: ignore[arg-type]
    assert roomy.headroom().can_take > 0


def test_settings_refuse_nonsense():
    for name, value in (("max_sandboxes", -1), ("memory_reserve_mb", -5), ("sandbox_memory_estimate_mb", 0),
                        ("cpu_target_pct", 0), ("cpu_target_pct", 120)):
        with pytest.raises(SettingsError, match=name):
            settings = CubeletSettings()
            object.__setattr__(settings, name, value)  # frozen; the loader would have set it
            settings.validate()
