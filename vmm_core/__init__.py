"""vmm_core: QEMU microVMs that start from copy-on-write snapshots.

Knows nothing about clusters or E2B, nor which guest agent it runs: the caller describes the agent
(its Python packages, requirements and their constraints) and the base image carries it. The
public surface:

    settings = VmmSettings.from_env()
    agent = GuestAgent((AgentPackage("myagent", Path("src/myagent")),), Path("agent-requirements.txt"),
                       Path("requirements.lock"))
    guest = ensure_guest_artifacts(settings, agent)     # kernel, initramfs, base image (cached)
    m = await boot(settings, "tpl-build", guest.machine_spec(tpl_img, rw_img, memory_file=...))
    await m.wait_guest()                                # guest init answers on the control channel
    snap = await snapshot(m, dest)                      # template snapshot; consumes m
    c = await clone(settings, snap, "sbx1", NetworkAttachment("tap7"))
    p = await prepare_clone(settings, snap, "sbx2", net2); c2 = await p.start()   # QEMU started ahead
    saved = await save(c, dest2); c3 = await restore(settings, saved, "sbx1", net)
    disk = await save_disk(c3, dest3); c4 = await cold_boot(settings, disk, "sbx1", net)  # filesystem only
    await c3.kill()                                     # QEMU, runtime dir, cgroup and jail uid gone
    if not c.alive(): print(c.exit_cause().message)     # why its QEMU ended (out of memory, seccomp, ...)
    forget(settings, "sbx9")                            # the same for one whose QEMU died on its own

For building images of its own the same way (template roots, say): the content-keyed build cache
(`input_key`, `cached_dir`), ext4 images and writable layers (`ext4_from_dir`, `writable_layer`) and
Debian roots from this host's apt sources (`mmdebstrap`, `apt_sources_fingerprint`, `debian_suite`).
"""
from . import accel, volumes
from .artifacts import GuestArtifacts, ensure_guest_artifacts
from .cache import cached_dir, input_key
from .cold_boots import cold_boot, disk_checkpoint, save_disk
from .disks import ext4_from_dir, writable_layer
from .errors import (
    ArtifactError,
    BootError,
    GuestTimeoutError,
    InvalidSpecError,
    MachineGoneError,
    SnapshotError,
    VmmError,
    VolumeError,
    WriteBackError,
)
from .exits import ExitCause, MachineExit
from .guest.agent import AgentPackage, GuestAgent
from .guest.debian import mmdebstrap, sources_fingerprint as apt_sources_fingerprint, suite as debian_suite
from .guest_config import GuestConfig, GuestNetwork, GuestService, ServiceRoot
from .machine import Machine, MachineStats, boot, console_tail, forget, list_machines
from .settings import Accel, VmmSettings
from .snapshots import (
    PreparedClone,
    Snapshot,
    SnapshotKind,
    checkpoint,
    clone,
    prepare_clone,
    restore,
    save,
    snapshot,
)
from .spec import Disk, DiskFormat, MachineSpec, NetworkAttachment

# `accel` is the module: `accel.resolve(settings.accel)` names the accelerator a machine would use;
# `volumes` too: `volumes.mount(machine, ...)` after a clone with volume images.
__all__ = [
    "Accel",
    "AgentPackage",
    "ArtifactError",
    "BootError",
    "Disk",
    "DiskFormat",
    "ExitCause",
    "GuestAgent",
    "GuestArtifacts",
    "GuestConfig",
    "GuestNetwork",
    "GuestService",
    "GuestTimeoutError",
    "InvalidSpecError",
    "Machine",
    "MachineExit",
    "MachineGoneError",
    "MachineSpec",
    "MachineStats",
    "NetworkAttachment",
    "PreparedClone",
    "ServiceRoot",
    "Snapshot",
    "SnapshotError",
    "SnapshotKind",
    "VmmError",
    "VmmSettings",
    "VolumeError",
    "WriteBackError",
    "accel",
    "apt_sources_fingerprint",
    "boot",
    "cached_dir",
    "checkpoint",
    "clone",
    "cold_boot",
    "console_tail",
    "debian_suite",
    "disk_checkpoint",
    "ensure_guest_artifacts",
    "ext4_from_dir",
    "forget",
    "input_key",
    "list_machines",
    "mmdebstrap",
    "prepare_clone",
    "restore",
    "save",
    "save_disk",
    "snapshot",
    "volumes",
    "writable_layer",
]
