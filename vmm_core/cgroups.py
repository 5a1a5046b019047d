"""One cgroup per machine, on either cgroup hierarchy: memory, pids and CPU limits for its QEMU.

    cg = MachineCgroup.for_machine(settings, vm_id)     # None where cgroups cannot be used
    cg.create(Limits(memory_bytes=..., pids=256, cpu_weight=100, cpu_quota_us=None))
    ...spawn QEMU into it (``enter_thread`` before forking on v1, ``add`` after on v2)...
    cg.remove()                                          # after the process is gone

Hierarchies:
- v1 (these machines): one directory per controller, ``<mount>/<controller>/<parent>/<vm_id>``
  for ``memory``, ``pids`` and ``cpu``. Cgroup membership is per thread there, so the thread that
  forks QEMU moves itself in first (``enter_thread``) and the child starts inside: QEMU never runs
  a single instruction outside its limits.
- v2 (most production hosts): one directory ``<mount>/<parent>/<vm_id>`` with ``memory.max``,
  ``memory.swap.max``, ``pids.max``, ``cpu.weight``, ``cpu.max``; the parent's
  ``cgroup.subtree_control`` enables the controllers. Membership is per process, so QEMU is moved
  in right after it is spawned (``add``).

Invariants:
- The parent lies under the cgroup this process runs in (``/proc/self/cgroup``), so machines stay
  within whatever limits the operator gave the node agent; on v2 it is a sibling leaf of ours
  (``<our cgroup>/../<parent>``) because a v2 cgroup holding processes cannot enable controllers for
  its children.
- Limits are written before any process joins. ``remove`` kills what is still inside (a machine
  being removed is dead by contract) and removes the directories; it is idempotent.
- Values are checked, never formatted from input: a vm_id is a single path component.
"""
from __future__ import annotations

import enum
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("memory", "pids", "cpu")
V2_CONTROLLERS = ("memory", "pids", "cpu")


class Hierarchy(enum.Enum):
    V1 = "v1"
    V2 = "v2"


class CgroupError(Exception):
    """A cgroup could not be made, limited, joined or removed."""


@dataclass(frozen=True)
class Limits:
    memory_bytes: int
    pids: int
    cpu_weight: int = 100            # v2 semantics (1..10000; 100 is the default share)
    cpu_quota_us: int | None = None  # per period; None: no ceiling
    cpu_period_us: int = 100_000

    def __post_init__(self) -> None:
        if self.memory_bytes < (64 << 20) or self.pids < 16 or not 1 <= self.cpu_weight <= 10_000:
            raise ValueError(f"implausible cgroup limits {self}")


def detect(root: Path = CGROUP_ROOT) -> Hierarchy | None:
    """Which hierarchy ``root`` has with the controllers we need, or None."""
    if (root / "cgroup.controllers").exists():
        have = set((root / "cgroup.controllers").read_text().split())
        return Hierarchy.V2 if set(V2_CONTROLLERS) <= have else None
    if all((root / c / "cgroup.procs").exists() for c in V1_CONTROLLERS):
        return Hierarchy.V1
    return None


def own_cgroup(controller: str | None, proc_self: Path = Path("/proc/self/cgroup")) -> str:
    """This process's cgroup path for ``controller`` (v1) or the unified one (None), e.g. ``/a/b``."""
    for line in proc_self.read_text().splitlines():
        _id, controllers, path = line.split(":", 2)
        names = controllers.split(",") if controllers else []
        if (controller is None and not names) or (controller is not None and controller in names):
            return path
    raise CgroupError(f"this process is in no {controller or 'unified'} cgroup")


class MachineCgroup:
    def __init__(self, hierarchy: Hierarchy, dirs: dict[str, Path]):
        self.hierarchy = hierarchy
        self.dirs = dirs  # controller -> directory (v2: one entry, key "")

    @classmethod
    def for_machine(cls, vm_id: str, parent: str, root: Path = CGROUP_ROOT,
                    proc_self: Path = Path("/proc/self/cgroup")) -> MachineCgroup | None:
        """The cgroup of machine ``vm_id`` under ``parent`` (a directory name), or None where this
        host offers no usable hierarchy."""
        if "/" in vm_id or vm_id in ("", ".", "..") or "/" in parent or parent in ("", ".", ".."):
            raise ValueError(f"bad cgroup names {parent!r}/{vm_id!r}")
        hierarchy = detect(root)
        if hierarchy is Hierarchy.V1:
            return cls(hierarchy, {c: root / c / own_cgroup(c, proc_self).lstrip("/") / parent / vm_id
                                   for c in V1_CONTROLLERS})
        if hierarchy is Hierarchy.V2:
            ours = root / own_cgroup(None, proc_self).lstrip("/")
            base = (ours.parent if ours != root else root) / parent
            return cls(hierarchy, {"": base / vm_id})
        return None

    # ---- making -----------------------------------------------------------------------------

    def create(self, limits: Limits) -> None:
        try:
            if self.hierarchy is Hierarchy.V1:
                self._create_v1(limits)
            else:
                self._create_v2(limits)
        except OSError as e:
            self.remove()
            raise CgroupError(f"cgroup {self.name}: {e}") from e

    def _create_v1(self, limits: Limits) -> None:
        for d in self.dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        mem = self.dirs["memory"]
        _write(mem / "memory.limit_in_bytes", limits.memory_bytes)
        if (mem / "memory.memsw.limit_in_bytes").exists():  # with swap accounting: no escape to swap
            _write(mem / "memory.memsw.limit_in_bytes", limits.memory_bytes)
        _write(self.dirs["pids"] / "pids.max", limits.pids)
        cpu = self.dirs["cpu"]
        _write(cpu / "cpu.shares", max(2, limits.cpu_weight * 1024 // 100))
        _write(cpu / "cpu.cfs_period_us", limits.cpu_period_us)
        _write(cpu / "cpu.cfs_quota_us", limits.cpu_quota_us if limits.cpu_quota_us else -1)

    def _create_v2(self, limits: Limits) -> None:
        d = self.dirs[""]
        d.parent.mkdir(exist_ok=True)
        wanted = " ".join(f"+{c}" for c in V2_CONTROLLERS)
        _write(d.parent.parent / "cgroup.subtree_control", wanted)
        _write(d.parent / "cgroup.subtree_control", wanted)
        d.mkdir(exist_ok=True)
        _write(d / "memory.max", limits.memory_bytes)
        if (d / "memory.swap.max").exists():
            _write(d / "memory.swap.max", 0)
        _write(d / "pids.max", limits.pids)
        _write(d / "cpu.weight", limits.cpu_weight)
        quota = str(limits.cpu_quota_us) if limits.cpu_quota_us else "max"
        _write(d / "cpu.max", f"{quota} {limits.cpu_period_us}")

    # ---- joining ----------------------------------------------------------------------------

    def enter_thread(self) -> bool:
        """v1: move the calling thread in, so that what it forks starts inside. False on v2,
        where only whole processes move (use ``add`` after the spawn)."""
        if self.hierarchy is not Hierarchy.V1:
            return False
        tid = threading.get_native_id()
        try:
            for d in self.dirs.values():
                _write(d / "tasks", tid)
        except OSError as e:
            raise CgroupError(f"cgroup {self.name}: joining: {e}") from e
        return True

    def add(self, pid: int) -> None:
        try:
            for d in self.dirs.values():
                _write(d / "cgroup.procs", pid)
        except OSError as e:
            raise CgroupError(f"cgroup {self.name}: adding pid {pid}: {e}") from e

    def pids(self) -> set[int]:
        out: set[int] = set()
        for d in self.dirs.values():
            try:
                out |= {int(x) for x in (d / "cgroup.procs").read_text().split()}
            except OSError:
                pass
        return out

    def contains(self, pid: int) -> bool:
        return pid in self.pids()

    # ---- removing ---------------------------------------------------------------------------

    def remove(self, timeout: float = 5.0) -> None:
        """Kill what is left inside and remove the directories. Idempotent."""
        deadline = time.monotonic() + timeout
        for d in self.dirs.values():
            while d.exists():
                for pid in self.pids():
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                try:
                    d.rmdir()
                except FileNotFoundError:
                    break
                except OSError as e:  # EBUSY while a killed task is still exiting
                    if time.monotonic() > deadline:
                        raise CgroupError(f"cgroup {d} could not be removed: {e}") from e
                    time.sleep(0.01)

    # ---- after the fact ---------------------------------------------------------------------

    def oom_kills(self) -> int:
        """How many processes the kernel killed in this cgroup at its memory limit (0 if unknown)."""
        try:
            text = self.read("memory", "memory.oom_control" if self.hierarchy is Hierarchy.V1 else "memory.events")
        except OSError:
            return 0
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value)
        return 0

    def memory_limit(self) -> int | None:
        try:
            value = self.read("memory", "memory.limit_in_bytes" if self.hierarchy is Hierarchy.V1 else "memory.max")
        except OSError:
            return None
        return int(value) if value.isdigit() else None

    @property
    def name(self) -> str:
        return next(iter(self.dirs.values())).name

    def read(self, controller: str, name: str) -> str:
        """A control file's value (``read("memory", "memory.limit_in_bytes")``; v2: controller "")."""
        d = self.dirs[controller if self.hierarchy is Hierarchy.V1 else ""]
        return (d / name).read_text().strip()


def _write(path: Path, value: object) -> None:
    # Control files take one write of the whole value; no O_CREAT: a missing file is an error.
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, str(value).encode())
    finally:
        os.close(fd)
