"""Typed failures of vmm_core. Each carries what an operator needs to see why."""
from __future__ import annotations


class VmmError(Exception):
    """Base class. `console_tail` holds the last lines the guest printed, when there was a guest."""

    def __init__(self, message: str, *, console_tail: str = "") -> None:
        super().__init__(message)
        self.console_tail = console_tail

    def __str__(self) -> str:
        base = super().__str__()
        if self.console_tail:
            return f"{base}\n--- guest console (tail) ---\n{self.console_tail}"
        return base


class ArtifactError(VmmError):
    """A kernel, initramfs or image could not be obtained or is unusable."""


class InvalidSpecError(VmmError):
    """The machine description is wrong before anything was started (missing file, bad size, no tap)."""


class BootError(VmmError):
    """QEMU did not start, or the guest did not come up."""


class SnapshotError(VmmError):
    """Taking, cloning or restoring a snapshot failed."""


class WriteBackError(SnapshotError):
    """The guest did not write back its page cache for a filesystem-only capture (it does not
    answer): nothing was captured, and the machine runs on."""


class MachineGoneError(VmmError):
    """The VMM process is no longer running (killed, crashed, or never adopted)."""


class GuestTimeoutError(VmmError):
    """The guest did not answer in time (probe, control channel)."""


class VolumeError(VmmError):
    """A volume image could not be attached to the machine or mounted by its guest."""
