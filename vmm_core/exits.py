"""Why a machine's QEMU ended on its own, so that the node can say so.

Sources, most specific first:
- the machine's cgroup: its OOM-kill counter (v1 ``memory.oom_control``, v2 ``memory.events``)
  tells that the kernel killed it at its memory limit (guest memory plus the VMM's overhead);
- the wait status the reaper recorded (``exit.status`` in the runtime dir) while this process was
  QEMU's parent: SIGSYS is its seccomp filter, another signal came from outside, an exit code is
  QEMU giving up (a device or migration error, the guest asking for a shutdown);
- QEMU's own last words (``qemu.log``), a bounded tail.

Invariants:
- ``explain`` must run before the machine's cgroup and runtime dir are removed (``kill``,
  ``forget``): afterwards nothing is left to read. It only reads, and reads a bounded amount.
- After a node agent restart there is no wait status (QEMU was re-parented); the cgroup and the
  log still tell the common causes.
"""
from __future__ import annotations

import enum
import os
import signal
from dataclasses import dataclass

from .cgroups import MachineCgroup
from .spec import MachinePaths

STATUS_FILE = "exit.status"


class ExitCause(enum.Enum):
    OUT_OF_MEMORY = "out-of-memory"   # killed by the kernel at its cgroup's memory limit
    SECCOMP = "seccomp"               # killed by its seccomp filter (a system call it may not make)
    SIGNAL = "signal"                 # killed or stopped by a signal from outside
    EXITED = "exited"                 # QEMU ended by itself
    UNKNOWN = "unknown"               # nothing recorded (re-adopted, and nothing in the log)


@dataclass(frozen=True)
class MachineExit:
    cause: ExitCause
    # One line for operators and clients. QEMU's words in it are at most one short line: a VMM the
    # guest took over could write anything to its log.
    message: str


def record_status(paths: MachinePaths, status: int) -> None:
    """The reaper's note of QEMU's wait status; ignored when the runtime dir is already gone."""
    try:
        fd = os.open(paths.dir / STATUS_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
    except OSError:
        return
    try:
        os.write(fd, str(status).encode())
    finally:
        os.close(fd)


def _status(paths: MachinePaths) -> int | None:
    try:
        fd = os.open(paths.dir / STATUS_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return int(os.read(fd, 32).decode().strip())
    except ValueError:
        return None
    finally:
        os.close(fd)


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def explain(paths: MachinePaths, cgroup: MachineCgroup | None, qemu_log_tail: str) -> MachineExit:
    """Why the machine at ``paths`` ended; ``qemu_log_tail`` is the end of its qemu.log."""
    if cgroup is not None:
        kills = cgroup.oom_kills()
        if kills:
            limit = cgroup.memory_limit()
            at = f" of {limit >> 20} MiB" if limit else ""
            return MachineExit(ExitCause.OUT_OF_MEMORY,
                               f"the VM was killed at its memory limit{at} (guest memory plus VMM overhead)")
    status = _status(paths)
    # QEMU's own words: its log holds only its errors (the guest's console is elsewhere). One line.
    said = " ".join(qemu_log_tail.split())[-300:]
    suffix = f": {said}" if said else ""
    if status is not None and os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGSYS:
            return MachineExit(ExitCause.SECCOMP, "the VMM was killed by its seccomp filter (SIGSYS)")
        return MachineExit(ExitCause.SIGNAL, f"the VMM was killed by {_signal_name(sig)}{suffix}")
    if status is not None and os.WIFEXITED(status):
        return MachineExit(ExitCause.EXITED, f"the VMM exited with status {os.WEXITSTATUS(status)}{suffix}")
    if said:
        return MachineExit(ExitCause.EXITED, f"the VMM ended{suffix}")
    return MachineExit(ExitCause.UNKNOWN, "the VMM ended for a reason the node could not tell")
