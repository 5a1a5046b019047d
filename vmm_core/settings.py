"""Typed settings for vmm_core, read once from the environment."""
from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path


class Accel(str, Enum):
    AUTO = "auto"
    KVM = "kvm"
    TCG = "tcg"


@dataclass(frozen=True)
class VmmSettings:
    # Everything built or run lives here: kernel, initramfs, images, snapshots, VM runtime dirs.
    state_dir: Path = Path("/var/lib/cube")
    accel: Accel = Accel.AUTO
    qemu_binary: str = "qemu-system-x86_64"
    qemu_img: str = "qemu-img"
    # The Debian package whose dependency names the guest kernel (never installed on the host).
    kernel_package: str = "linux-image-cloud-amd64"
    # TCG's translation cache, per VM: a cap, reserved and touched lazily, so an idle clone pays only
    # for what it translated (~18 MB). The cap must hold a busy guest's working set: a warmed code
    # interpreter (Linux, CPython, IPython, ZeroMQ, the agent) translates ~38 MB, and under a 32 MB
    # cap QEMU flushed the whole cache every cell, so each run_code re-translated (~0.5 s).
    tcg_tb_size_mb: int = 128
    # Runtime dirs of running machines; default <state_dir>/vms.
    runtime_dir: Path | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "VmmSettings":
        env = dict(os.environ if env is None else env)
        return cls(
            state_dir=Path(env.get("CUBE_STATE_DIR", "/var/lib/cube")),
            accel=Accel(env.get("CUBE_ACCEL", "auto").lower()),
            qemu_binary=env.get("CUBE_QEMU", "qemu-system-x86_64"),
            kernel_package=env.get("CUBE_KERNEL_PACKAGE", "linux-image-cloud-amd64"),
            tcg_tb_size_mb=int(env.get("CUBE_TCG_TB_MB", "128")),
            runtime_dir=Path(env["CUBE_VMM_RUNTIME_DIR"]) if env.get("CUBE_VMM_RUNTIME_DIR") else None,
        )

    @property
    def artifacts_dir(self) -> Path:
        return self.state_dir / "artifacts"

    @property
    def vms_dir(self) -> Path:
        return self.runtime_dir or self.state_dir / "vms"

    @property
    def snapshots_dir(self) -> Path:
        return self.state_dir / "snapshots"
