"""Typed settings for vmm_core, from the shared loader (``CUBE_VMM_*`` and the short names
``CUBE_STATE_DIR``, ``CUBE_ACCEL``, ``CUBE_QEMU``, ``CUBE_KERNEL_PACKAGE``, ``CUBE_TCG_TB_MB``)."""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import ClassVar

from cube_common.settings import Settings, setting, shared


class Accel(str, Enum):
    AUTO = "auto"
    KVM = "kvm"
    TCG = "tcg"


@dataclass(frozen=True)
class VmmSettings(Settings):
    ENV_PREFIX: ClassVar[str] = "CUBE_VMM_"

    # Everything built or run lives here: kernel, initramfs, images, snapshots, VM runtime dirs.
    state_dir: Path = shared.state_dir()
    accel: Accel = setting(Accel.AUTO, "auto | kvm | tcg (auto: KVM only where the CPU has vmx/svm)",
                           env="CUBE_ACCEL")
    qemu_binary: str = setting("qemu-system-x86_64", "QEMU binary", env="CUBE_QEMU")
    qemu_img: str = setting("qemu-img", "qemu-img binary")
    # Never installed on the host: its files are unpacked into the artifact cache.
    kernel_package: str = setting("linux-image-cloud-amd64", "the Debian package whose dependency names "
                                  "the guest kernel", env="CUBE_KERNEL_PACKAGE")
    # A cap, reserved and touched lazily, so an idle clone pays only for what it translated
    # (~18 MB). The cap must hold a busy guest's working set: a warmed code interpreter (Linux,
    # CPython, IPython, ZeroMQ, the agent) translates ~38 MB, and under a 32 MB cap QEMU flushed the
    # whole cache every cell, so each run_code re-translated (~0.5 s).
    tcg_tb_size_mb: int = setting(128, "TCG's translation cache per VM, MB", env="CUBE_TCG_TB_MB")
    runtime_dir: Path | None = setting(None, "runtime dirs of running machines (default <state_dir>/vms)")
    console_max_kb: int = setting(1024, "guest console kept on the host per machine, KiB (older output is "
                                  "dropped by Machine.trim_console)")
    # The jail (vmm_core/jail.py). Off only to debug QEMU itself.
    jail: bool = setting(True, "run every QEMU jailed: own uid, empty read-only root in its own mount "
                         "namespace, seccomp, cgroup, rlimits")
    jail_uid_base: int = setting(900_000, "first uid/gid of the jail's pool (one per running machine)")
    jail_uid_count: int = setting(4096, "size of the jail's uid pool: at most this many machines per host")
    jail_claims_dir: Path = setting(Path("/run/cube/vm-uids"), "where the pool's claims live (machine-wide: "
                                    "every Cube on this host must use the same)")
    cgroup_parent: str = setting("cube-vms", "cgroup under the node agent's own that holds one per machine")
    # Measured: a restored code interpreter's QEMU outside guest RAM and the translation cache
    # (heap, device state, page tables, libraries), with room to spare.
    vmm_overhead_mb: int = setting(256, "memory a machine's cgroup allows beyond guest RAM (and TCG's "
                                   "translation cache)")
    # Off by default: a page KSM merged between two sandboxes tells either, by how long a write to
    # it takes (the copy-on-write fault that splits it), whether the other holds the same content.
    mem_merge: bool = setting(False, "let the host's KSM merge identical guest pages across machines (QEMU's "
                              "merge=on; KSM itself is the host's: /sys/kernel/mm/ksm/run); merged pages "
                              "leak across sandboxes through write timing", env="CUBE_MEM_MERGE")
    cpu_quota: bool = setting(False, "cap each machine at its vCPUs' worth of CPU time (default: weight only)")
    allow_tcg: bool = setting(False, "run guests under TCG, QEMU's emulator, which QEMU does not treat as a "
                              "security boundary; needed where the CPU has no VT-x/AMD-V (make up sets it "
                              "there and says so)", env="CUBE_ALLOW_TCG")

    @property
    def artifacts_dir(self) -> Path:
        return self.state_dir / "artifacts"

    @property
    def vms_dir(self) -> Path:
        return self.runtime_dir or self.state_dir / "vms"

    @property
    def snapshots_dir(self) -> Path:
        return self.state_dir / "snapshots"
