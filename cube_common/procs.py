"""Stopping processes politely: SIGTERM, a grace period, then SIGKILL.

Every long-running child Cube starts (the node's services under the supervisor, Envoy under the
proxy, the guest agent on a developer's host, the daemons tests run) is stopped the same way, so
they all get the same chance to clean up (an etcd lease revoked, a pid file removed) and a hung one
still cannot block its parent forever.

Invariants:
- A process that has already exited is left alone: nothing is signalled, and what is returned
  says so.
- After ``stop_process`` or ``stop_async_process`` returns, the child is gone and reaped (no
  zombie): it exited within the grace period or was killed and waited for. The one exception is a
  ``reap_timeout`` that runs out, which raises ``subprocess.TimeoutExpired`` as ``Popen.wait`` does.
- ``stop_pid`` is for a process that is not our child: it cannot be reaped, so a killed one has
  been sent SIGKILL and is gone as soon as the kernel delivers it. A zombie counts as gone: it has
  exited, and only its parent can collect its status (which may be this very process, when it
  started the child and then let go of it, as ``deploy.cluster.up`` does: polling with signal 0
  alone would find such a child "there" until the grace ran out).
- Standard library only, like the rest of what the guest agent may import from ``cube_common``.
"""
from __future__ import annotations

import asyncio
import enum
import os
import signal
import subprocess
import time


class Stopped(enum.Enum):
    """How a stop ended."""

    ALREADY = "already"  # it was not running when asked
    EXITED = "exited"    # it exited within the grace period after SIGTERM
    KILLED = "killed"    # the grace period ran out and it got SIGKILL


def stop_process(proc: subprocess.Popen, grace: float, *, reap_timeout: float | None = None) -> Stopped:
    """SIGTERM ``proc``, wait up to ``grace`` seconds, then SIGKILL it and wait ``reap_timeout``
    (None: as long as it takes; a killed process goes at once unless stuck in the kernel)."""
    if proc.poll() is not None:
        return Stopped.ALREADY
    proc.terminate()
    try:
        proc.wait(grace)
        return Stopped.EXITED
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(reap_timeout)
        return Stopped.KILLED


async def stop_async_process(proc: asyncio.subprocess.Process, grace: float) -> Stopped:
    """``stop_process`` for a child started with asyncio, without blocking the event loop."""
    if proc.returncode is not None:
        return Stopped.ALREADY
    proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), grace)
        return Stopped.EXITED
    except TimeoutError:  # what asyncio.wait_for raises since 3.11
        proc.kill()
        await proc.wait()
        return Stopped.KILLED


def stop_pid(pid: int, grace: float, *, poll: float = 0.2) -> Stopped:
    """``stop_process`` for a process that is not our child (found through a pid file): it cannot
    be waited for, so whether it is still there is polled every ``poll`` seconds."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return Stopped.ALREADY
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _exists(pid):
            return Stopped.EXITED
        time.sleep(poll)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:  # it exited between the last poll and now
        return Stopped.EXITED
    return Stopped.KILLED


def _exists(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited: signal 0 reaches it and it is no zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists (zombie or not, see below)
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # "pid (comm) state ...": comm may hold spaces and parentheses, the state follows the last ")".
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):  # unreadable: trust the signal (a vanished one fails it next poll)
        return True
    return state not in (b"Z", b"X")
