"""vmm_core: QEMU microVMs that start from copy-on-write snapshots.

Knows nothing about clusters or E2B. The public surface:

    settings = VmmSettings.from_env()
    guest = ensure_guest_artifacts(settings)            # kernel, initramfs, base image (cached)
    m = await boot(settings, "tpl-build", guest.machine_spec(tpl_img, rw_img, memory_file=...))
    await m.wait_guest()                                # guest init answers on the control channel
    snap = await snapshot(m, dest)                      # template snapshot; consumes m
    c = await clone(settings, snap, "sbx1", NetworkAttachment("tap7"))
    p = await prepare_clone(settings, snap, "sbx2", net2); c2 = await p.start()   # QEMU started ahead
    saved = await save(c, dest2); c3 = await restore(settings, saved, "sbx1", net)
    await c3.kill()
"""
from .artifacts import GuestArtifacts, ensure_guest_artifacts
from .errors import (ArtifactError, BootError, GuestTimeoutError, InvalidSpecError, MachineGoneError, SnapshotError,
                     VmmError)
from .guest_config import GuestConfig, GuestNetwork, GuestService, ServiceRoot
from .machine import Machine, MachineStats, boot, list_machines
from . import accel
from .settings import Accel, VmmSettings
from .snapshots import PreparedClone, Snapshot, SnapshotKind, clone, prepare_clone, restore, save, snapshot
from .spec import Disk, DiskFormat, MachineSpec, NetworkAttachment

__all__ = [
    "Accel", "ArtifactError", "BootError", "Disk", "DiskFormat", "GuestArtifacts", "GuestConfig", "GuestNetwork",
    "GuestService", "GuestTimeoutError", "InvalidSpecError", "Machine", "MachineGoneError", "MachineSpec",
    "MachineStats", "NetworkAttachment", "PreparedClone", "ServiceRoot", "Snapshot", "SnapshotError",
    "SnapshotKind", "VmmError", "VmmSettings", "boot", "clone", "ensure_guest_artifacts", "list_machines",
    "prepare_clone", "restore", "save", "snapshot",
]
