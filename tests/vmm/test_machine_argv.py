"""The QEMU command line a machine gets, where it must match what a snapshot recorded.

Restoring needs the same RAM blocks as the source: machines now boot without microvm's option ROM
and restore without a kernel, while snapshots recorded before `option_roms` existed (their
snapshot.json lacks it) keep the ROM and the kernel, or their device state would not load. The
same holds for the legacy PIT, which machines now lack.
"""
from __future__ import annotations

from pathlib import Path

from vmm_core.machine import build_argv
from vmm_core.settings import VmmSettings
from vmm_core.spec import Disk, MachinePaths, MachineSpec


def _spec(**kw) -> MachineSpec:
    return MachineSpec(kernel=Path("/k/vmlinuz"), initramfs=Path("/k/initrd"), disks=(Disk(Path("/d/base"), "b"),),
                       memory_file=Path("/m/memory"), **kw)


def _argv(spec: MachineSpec, incoming: bool) -> list[str]:
    return build_argv(VmmSettings(), spec, MachinePaths(Path("/run/vm")), share_memory=not incoming, incoming=incoming)


def test_new_machines_boot_without_the_option_rom_and_restore_without_a_kernel():
    spec = _spec()
    boot = _argv(spec, incoming=False)
    assert "x-option-roms=off" in boot[boot.index("-M") + 1]
    assert "pit=off" in boot[boot.index("-M") + 1]  # no 8254 waking QEMU 36 times a second
    assert "-kernel" in boot and "-initrd" in boot
    restore = _argv(spec, incoming=True)
    assert "x-option-roms=off,pit=off" in restore[restore.index("-M") + 1]
    assert "-kernel" not in restore and "-initrd" not in restore and "-append" not in restore
    assert restore[-2:] == ["-incoming", "defer"]
    assert "migration.store-global-state=off" in restore


def test_snapshots_recorded_before_option_roms_keep_the_rom_and_the_kernel():
    d = _spec().to_dict()
    del d["option_roms"]  # a snapshot.json written by the previous version
    legacy = MachineSpec.from_dict(d)
    assert legacy.option_roms is True
    restore = _argv(legacy, incoming=True)
    assert "x-option-roms=on" in restore[restore.index("-M") + 1]
    assert "-kernel" in restore and "-initrd" in restore
    assert MachineSpec.from_dict(_spec().to_dict()).option_roms is False  # round trip of a new one


def test_snapshots_recorded_with_a_pit_are_restored_with_one():
    d = _spec().to_dict()
    del d["pit"]  # a snapshot.json written before machines lost their PIT: its device state has one
    legacy = MachineSpec.from_dict(d)
    assert legacy.pit is True
    restore = _argv(legacy, incoming=True)
    assert "pit=on" in restore[restore.index("-M") + 1]
    assert MachineSpec.from_dict(_spec().to_dict()).pit is False


def test_guest_ram_is_mergeable_only_when_the_operator_says_so():
    def backend(settings: VmmSettings) -> str:
        argv = build_argv(settings, _spec(), MachinePaths(Path("/run/vm")), share_memory=True, incoming=True)
        return next(a for a in argv if a.startswith("memory-backend-"))

    assert ",merge=off" in backend(VmmSettings())  # QEMU's own default would be on
    assert ",merge=on" in backend(VmmSettings().with_overrides(mem_merge=True))
