"""The guest artifacts every machine boots from, and the standard three-disk layout.

Disks, in this order (device state in a snapshot is positional, so the order never changes):
  cube-base  the guest base image (read-only erofs): guest init and the agent's runtime
  cube-tpl   the template root filesystem (read-only ext4)
  cube-rw    the sandbox's writable layer (ext4; overlayfs upper over cube-tpl)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .guest.agent import GuestAgent
from .guest.base_image import BaseImage, ensure_base_image
from .guest.initramfs import Initramfs, ensure_initramfs
from .guest.kernel import Kernel, ensure_kernel
from .settings import VmmSettings
from .spec import Disk, DiskFormat, MachineSpec, NetworkAttachment
from .volumes import VOLUME_SLOTS


@dataclass(frozen=True)
class GuestArtifacts:
    kernel: Kernel
    initramfs: Initramfs
    base_image: BaseImage

    @property
    def key(self) -> str:
        """Changes whenever anything a snapshot depends on changes."""
        return f"{self.kernel.key}-{self.initramfs.key}-{self.base_image.key}"

    def machine_spec(self, template_image: Path, writable_layer: Path, *, vcpus: int = 1, memory_mb: int = 512,
                     network: NetworkAttachment | None = None, memory_file: Path | None = None) -> MachineSpec:
        return MachineSpec(
            kernel=self.kernel.vmlinuz,
            initramfs=self.initramfs.path,
            disks=(
                Disk(self.base_image.path, "cube-base"),
                Disk(template_image, "cube-tpl"),
                Disk(writable_layer, "cube-rw", readonly=False,
                     format=DiskFormat.QCOW2 if writable_layer.suffix == ".qcow2" else DiskFormat.RAW),
            ),
            vcpus=vcpus,
            memory_mb=memory_mb,
            network=network,
            memory_file=memory_file,
            volume_slots=(None,) * VOLUME_SLOTS,
        )


def ensure_guest_artifacts(settings: VmmSettings, agent: GuestAgent) -> GuestArtifacts:
    """Build (or take from the cache) the kernel, initramfs and a base image carrying ``agent``.

    Raises ArtifactError, at once if any of the agent's inputs is missing."""
    agent.check()  # before the kernel build, which takes minutes on a fresh machine
    kernel = ensure_kernel(settings)
    return GuestArtifacts(kernel, ensure_initramfs(settings, kernel), ensure_base_image(settings, agent))
