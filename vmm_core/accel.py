"""Choosing the accelerator: KVM where it can really run a guest, TCG otherwise.

Some hosts expose /dev/kvm without hardware virtualisation (e.g. PVM-based KVM inside a VM); stock
guest kernels fail there, so the CPU flags decide, not the presence of the device node.
"""
from __future__ import annotations

import os
from functools import cache

from .settings import Accel


def _cpu_has_virt() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return "vmx" in flags or "svm" in flags
    except OSError:
        pass
    return False


def _kvm_opens() -> bool:
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC))
        return True
    except OSError:
        return False


@cache
def resolve(requested: Accel) -> Accel:
    if requested is not Accel.AUTO:
        return requested
    return Accel.KVM if _cpu_has_virt() and _kvm_opens() else Accel.TCG


def qemu_args(accel: Accel, tcg_tb_size_mb: int) -> list[str]:
    if accel is Accel.KVM:
        return ["-accel", "kvm", "-cpu", "host"]
    return ["-accel", f"tcg,tb-size={tcg_tb_size_mb}", "-cpu", "max"]


@cache
def host_tsc_khz() -> int | None:
    """The host TSC rate, which is also the guest's under TCG (it reads the host counter)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return int(float(line.split(":", 1)[1]) * 1000)
    except (OSError, ValueError):
        pass
    return None


def kernel_args(accel: Accel) -> str:
    """Extra guest kernel arguments for this accelerator.

    Under TCG the kernel's TSC calibration against the emulated PIT is timing-sensitive and fails
    on a busy host, leaving the guest without a usable clocksource (it hangs). The guest TSC runs
    at the host's rate there, so tell the kernel the rate and skip calibration.
    """
    if accel is Accel.TCG:
        khz = host_tsc_khz()
        if khz:
            return f"tsc_early_khz={khz} tsc=reliable"
    return ""
