"""Volume slots: persistent disks attached to a machine restored from a snapshot.

A `microvm` has no hotplug (virtio-mmio), and a restore must recreate exactly the devices its
snapshot names. So every machine built for templates carries ``VOLUME_SLOTS`` spare virtio-blk
devices (serial ``cube-vol<i>``), last on QEMU's command line. An empty slot is a zero-sized
``null-co`` device: the guest probes it as a 0-sector disk and never reads it. A clone may put a raw
image in any slot instead; the restored guest still believes the disk has 0 sectors, so `mount()`
asks QEMU to report the real size (QMP ``block_resize`` to the file's own size: nothing is
truncated, but the device raises a config-change interrupt and the guest kernel rereads the
capacity), then asks the guest init to mount it.

Invariants:
- Slots are last among the devices, so a spec without slots (older snapshots) keeps the device
  order it always had, and a snapshot with slots restores only into a spec with as many.
- A template snapshot's slots are always empty (`emptied`): no volume is ever part of a snapshot
  that other machines clone. A saved (paused) machine keeps its images in place: its resume binds
  the same files, which nothing else may use meanwhile (the caller's rule, cube_common/volumes.py).
- An image is used by one machine at a time; vmm_core does not lock it (the caller does).
- What a guest wrote to a volume is in the image only once the guest wrote it back: a machine with
  volumes is killed after `write_back()` (the guest's sync(2)); one that dies on its own leaves
  ext4's journal to replay what it had committed.
"""
from __future__ import annotations

import asyncio
import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import GuestTimeoutError, InvalidSpecError, MachineGoneError, VolumeError
from .spec import MachineSpec

if TYPE_CHECKING:
    from .machine import Machine

VOLUME_SLOTS = 2  # microvm has 8 virtio-mmio transports: rng, serial, 3 disks and the NIC take 6


def serial(slot: int) -> str:
    return f"cube-vol{slot}"


def drive_id(slot: int) -> str:
    return f"v{slot}"


@dataclass(frozen=True)
class VolumeAttachment:
    """A raw ext4 image and where the guest mounts it (an absolute path in the sandbox root)."""

    image: Path
    mount_point: str


def with_slots(spec: MachineSpec) -> MachineSpec:
    """``spec`` with every volume slot, all empty (a machine that templates are built from)."""
    return replace(spec, volume_slots=(None,) * VOLUME_SLOTS)


def emptied(spec: MachineSpec) -> MachineSpec:
    return replace(spec, volume_slots=(None,) * len(spec.volume_slots))


def attach(spec: MachineSpec, images: Sequence[Path]) -> MachineSpec:
    """``spec`` with ``images`` in its first slots. InvalidSpecError when it has too few slots."""
    if not images:
        return spec
    if len(images) > len(spec.volume_slots):
        if not spec.volume_slots:
            raise InvalidSpecError("this snapshot was made before volume slots existed: rebuild its template "
                                   "to mount volumes")
        raise InvalidSpecError(f"{len(images)} volumes, but the machine has {len(spec.volume_slots)} slots")
    if len(set(images)) != len(images):
        raise InvalidSpecError("the same volume image twice")
    for image in images:  # whether it exists is checked with every other disk (machine.validate_spec)
        if not image.is_absolute():
            raise InvalidSpecError(f"volume image {image} is not an absolute path")
    slots = list(spec.volume_slots)
    for i, image in enumerate(images):
        slots[i] = image
    return replace(spec, volume_slots=tuple(slots))


def slot_args(spec: MachineSpec) -> list[str]:
    """QEMU arguments for the slots: a raw image with discard passed down, or the empty device."""
    argv: list[str] = []
    for i, image in enumerate(spec.volume_slots):
        if image is None:
            drive = f"id={drive_id(i)},if=none,driver=null-co,size=0,read-zeroes=on"
        else:
            drive = f"id={drive_id(i)},if=none,file={image},format=raw,discard=unmap"
        argv += ["-drive", drive, "-device", f"virtio-blk-device,drive={drive_id(i)},serial={serial(i)}"]
    return argv


def images(spec: MachineSpec) -> list[Path]:
    return [p for p in spec.volume_slots if p is not None]


async def mount(machine: Machine, mount_points: Sequence[str], timeout: float = 20.0) -> None:
    """Make the restored guest see and mount the images in its first ``len(mount_points)`` slots.

    VolumeError when the guest init cannot mount one (it names the slot and the kernel's reason):
    the caller then discards the machine, which never ran user code with a half-attached volume."""
    slots = machine.spec.volume_slots
    for i in range(len(mount_points)):
        image = slots[i] if i < len(slots) else None
        if image is None:
            raise InvalidSpecError(f"volume slot {i} is empty")
        size = await asyncio.to_thread(os.path.getsize, image)
        await machine.execute("block_resize", {"device": drive_id(i), "size": size})
    for i, point in enumerate(mount_points):
        try:  # the control channel raises on a refusal too, with the guest's reason
            await machine.control.call("mount_volume", timeout=timeout, serial=serial(i), target=point)
        except GuestTimeoutError as e:
            raise VolumeError(f"mounting volume slot {i} at {shlex.quote(point)}: {e}") from e


async def write_back(machine: Machine, timeout: float = 10.0) -> bool:
    """Ask the guest to write its page cache back (sync(2)), so that its volumes' images hold what
    it wrote; before a kill. False when it did not answer in time (the kill goes ahead: ext4's
    journal keeps the image consistent, with the writes of the last seconds lost)."""
    try:
        await machine.control.call("sync_fs", timeout=timeout)
        return True
    except (GuestTimeoutError, MachineGoneError):
        return False
