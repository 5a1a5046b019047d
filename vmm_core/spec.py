"""Typed description of a microVM and of where its runtime files live."""
from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path

from .settings import Accel


class DiskFormat(str, Enum):
    RAW = "raw"
    QCOW2 = "qcow2"


@dataclass(frozen=True)
class Disk:
    path: Path
    serial: str  # how the guest finds it: /sys/block/vdX/serial (mmio probe order is not stable)
    readonly: bool = True
    format: DiskFormat = DiskFormat.RAW


@dataclass(frozen=True)
class NetworkAttachment:
    tap: str  # an existing tap device in `netns` (or in QEMU's own namespace); see `detached`
    mac: str = "02:fc:00:00:00:15"
    netns: str | None = None  # a named namespace (/run/netns/<name>) QEMU is started in
    # QEMU creates `tap` itself (it must not exist): a tap with no address, never up, attached to
    # nothing, gone with QEMU. For a machine that needs the NIC (the state it restores names one,
    # with the tap's virtio header) but must reach no network.
    detached: bool = False

    @classmethod
    def unplugged(cls, mac: str = "02:fc:00:00:00:15") -> NetworkAttachment:
        return cls(tap=f"cubex{secrets.token_hex(5)}", mac=mac, detached=True)


@dataclass(frozen=True)
class MachineSpec:
    kernel: Path
    initramfs: Path
    disks: tuple[Disk, ...]
    vcpus: int = 1
    memory_mb: int = 512
    network: NetworkAttachment | None = None
    accel: Accel = Accel.AUTO
    cmdline: str = ""
    # Guest RAM in this file, mapped shared, so that a snapshot can later keep it in place.
    # None: anonymous RAM (a machine that will never be the source of a template snapshot).
    memory_file: Path | None = None
    # QEMU's linuxboot option ROM. Off, the firmware loads the kernel from fw_cfg itself and a
    # machine restored from a snapshot needs no kernel at all: QEMU then skips reading it into its
    # heap (~14 MB per clone, ~10 ms of its start-up). The ROM is a RAM block the device state names,
    # so a restore must match its source: snapshots recorded before this field exist keep it on.
    option_roms: bool = False
    # Spare virtio-blk devices for volumes (vmm_core/volumes.py), after every other device: None is
    # an empty slot (a zero-sized null device), a path a raw ext4 image the guest may mount. A
    # template has them all empty; its clones fill some. A restore must have the same count.
    volume_slots: tuple[Path | None, ...] = ()
    # The legacy 8254 timer (microvm's `pit`). Linux uses the local APIC timer and the TSC here and
    # never the PIT, but the firmware leaves it counting as an 18.2 Hz square wave, and QEMU wakes
    # every 27 ms to flip its output for nobody: ~2 ms of host CPU per second per idle machine under
    # TCG (measured). Off, the guest has none. Its state is part of the device state, so a restore
    # must match its source: snapshots recorded before this field exist keep it.
    pit: bool = False

    def __post_init__(self) -> None:
        if self.vcpus < 1 or self.vcpus > 64:
            raise ValueError(f"vcpus must be 1..64, not {self.vcpus}")
        if self.memory_mb < 128:
            raise ValueError(f"memory_mb must be at least 128, not {self.memory_mb}")

    def with_network(self, network: NetworkAttachment | None) -> MachineSpec:
        return replace(self, network=network)

    def to_dict(self) -> dict:
        d = asdict(self)

        def norm(v):
            if isinstance(v, Path):
                return str(v)
            if isinstance(v, Enum):
                return v.value
            if isinstance(v, dict):
                return {k: norm(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [norm(x) for x in v]
            return v

        return norm(d)

    @classmethod
    def from_dict(cls, d: dict) -> MachineSpec:
        net = d.get("network")
        return cls(
            kernel=Path(d["kernel"]),
            initramfs=Path(d["initramfs"]),
            disks=tuple(Disk(Path(x["path"]), x["serial"], x["readonly"], DiskFormat(x["format"])) for x in d["disks"]),
            vcpus=d["vcpus"],
            memory_mb=d["memory_mb"],
            network=NetworkAttachment(**net) if net else None,
            accel=Accel(d["accel"]),
            cmdline=d.get("cmdline", ""),
            memory_file=Path(d["memory_file"]) if d.get("memory_file") else None,
            option_roms=d.get("option_roms", True),
            volume_slots=tuple(Path(v) if v else None for v in d.get("volume_slots", ())),
            pit=d.get("pit", True),
        )


@dataclass(frozen=True)
class MachinePaths:
    """Every file a running machine owns. Removing `dir` removes all of them."""

    dir: Path

    @property
    def qmp(self) -> Path:
        return self.dir / "qmp.sock"

    @property
    def control(self) -> Path:
        return self.dir / "ctl.sock"

    @property
    def console(self) -> Path:
        return self.dir / "console.log"

    @property
    def qemu_log(self) -> Path:
        return self.dir / "qemu.log"

    @property
    def pidfile(self) -> Path:
        return self.dir / "qemu.pid"

    @property
    def record(self) -> Path:
        return self.dir / "machine.json"


@dataclass
class MachineRecord:
    """What a restarted controller needs to re-attach to a running machine (machine.json)."""

    vm_id: str
    spec: MachineSpec
    pid: int
    labels: dict[str, str] = field(default_factory=dict)
    uid: int | None = None  # the jail's uid (vmm_core/jail.py); None: not jailed

    def dump(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"vm_id": self.vm_id, "spec": self.spec.to_dict(), "pid": self.pid,
                                   "labels": self.labels, "uid": self.uid}, indent=1))
        tmp.rename(path)

    @classmethod
    def load(cls, path: Path) -> MachineRecord:
        d = json.loads(path.read_text())
        uid = d.get("uid")
        return cls(d["vm_id"], MachineSpec.from_dict(d["spec"]), d["pid"], d.get("labels", {}),
                   int(uid) if uid is not None else None)
