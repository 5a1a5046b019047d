"""Filesystem-only saves and snapshots, and machines cold-booted from a saved disk.

A DISK snapshot (``SnapshotKind.DISK``) is a machine's writable overlay and its shape (kernel,
read-only disks, vCPUs, memory size), without memory or device state. It is what E2B calls a
filesystem-only pause or snapshot: smaller and quicker to take than a full one, and what starts
from it boots afresh, without the processes and memory the machine had.

* ``save_disk``: the machine's page cache is written back by its guest (``sync(2)`` over the
  control channel), the machine stopped and ended, its overlay kept. Refused while the guest does
  not answer the sync: what it had not written back would be lost without anyone knowing. The
  machine is consumed; on failure it runs on.
* ``disk_checkpoint``: the same capture of a machine that goes on running: stopped only while its
  overlay is copied (QEMU's ``stop`` flushes its block layer, so the copy is consistent), then
  continued and handed the current time. The copy reads through the machine's own backing chain
  (its template's disk), like a checkpoint's.
* ``cold_boot``: a new machine booted on a snapshot's disk, its RAM fresh and anonymous. A
  ``shared`` snapshot (a filesystem-only snapshot: many machines start from it) gets a new
  copy-on-write overlay per machine and is left as it was. Otherwise (a paused machine's DISK or
  SAVED snapshot; a SAVED one's memory is ignored: E2B's ``memory: false`` resume) the disk
  becomes the machine's, moved into its runtime dir and back on any failure, and the snapshot is
  removed once the guest runs, as ``restore()`` consumes a saved one. Writes the guest had not
  written back when a SAVED snapshot was taken are lost: crash-recovery semantics, as documented.

Invariant: a failure leaves the snapshot exactly as it was and no QEMU, runtime dir or overlay of
the new machine behind.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import time
from dataclasses import replace
from pathlib import Path

from .disks import cow_overlay
from .errors import BootError, InvalidSpecError, SnapshotError, VmmError, WriteBackError
from .machine import Machine, pid_alive
from .settings import VmmSettings
from .snapshots import Snapshot, SnapshotKind, _staging, _undo_stopped_save, _with_writable
from .spec import DiskFormat, MachinePaths, MachineSpec, NetworkAttachment

log = logging.getLogger("vmm_core.cold_boots")

_DISK = "disk.qcow2"
# A guest's sync(2) writes back its whole page cache: seconds for a busy one under TCG.
SYNC_TIMEOUT_S = 60.0


def _overlay_of(machine: Machine) -> Path:
    rw = machine.writable_disk()
    if rw is None or rw.suffix != ".qcow2":
        raise InvalidSpecError(f"machine {machine.vm_id} has no qcow2 overlay to save (a clone's or a cold boot's)")
    return rw


def _disk_spec(spec: MachineSpec, disk: Path) -> MachineSpec:
    """The shape a DISK snapshot records: the overlay at ``disk``, no memory file, no NIC."""
    return replace(_with_writable(spec, disk, DiskFormat.QCOW2), memory_file=None, network=None)


async def _write_back(machine: Machine) -> None:
    try:
        await machine.control.call("sync_fs", timeout=SYNC_TIMEOUT_S)
    except VmmError as e:
        raise WriteBackError(f"the guest of {machine.vm_id} did not write back its files ({e}); "
                             "a filesystem-only capture would lose them") from e


async def save_disk(machine: Machine, dest: Path) -> Snapshot:
    """A filesystem-only save of ``machine`` into ``dest``; the machine is gone afterwards. On
    failure nothing is saved and the machine runs on."""
    rw = _overlay_of(machine)
    tmp = _staging(dest)
    try:
        await _write_back(machine)
        await machine.execute("stop")
    except BaseException:
        await _undo_stopped_save(machine, tmp)
        raise
    await machine.quit()  # QEMU flushes its block layer on the way out
    os.rename(rw, tmp / _DISK)
    os.chown(tmp / _DISK, 0, 0)  # root's while saved: its jail uid goes back to the pool
    snap = Snapshot(dest, SnapshotKind.DISK, _disk_spec(machine.spec, dest / _DISK), time.time())
    Snapshot(tmp, snap.kind, snap.spec, snap.created_at).write_meta()
    os.rename(tmp, dest)
    await machine.kill()
    return snap


async def disk_checkpoint(machine: Machine, dest: Path) -> Snapshot:
    """A filesystem-only snapshot of a running machine into ``dest`` (read-only files, shared by
    every machine booted from it); the machine runs on, interrupted for the copy of its overlay."""
    rw = _overlay_of(machine)
    tmp = _staging(dest)
    try:
        await _write_back(machine)
        t0 = time.monotonic()
        await machine.execute("stop")
        try:
            await asyncio.to_thread(subprocess.run, ["cp", "--sparse=always", "--reflink=auto", str(rw),
                                                     str(tmp / _DISK)], check=True, capture_output=True)
        finally:
            if pid_alive(machine.pid):
                await machine.execute("cont")
        stopped = time.monotonic() - t0
        try:
            await machine.control.sync_identity()
        except VmmError as e:
            log.warning("time hand-over after a disk checkpoint failed on %s: %s", machine.vm_id, e)
        os.chown(tmp / _DISK, 0, 0)
        os.chmod(tmp / _DISK, 0o444)
        snap = Snapshot(dest, SnapshotKind.DISK, _disk_spec(machine.spec, dest / _DISK), time.time())
        Snapshot(tmp, snap.kind, snap.spec, snap.created_at).write_meta()
        os.rename(tmp, dest)
        log.info("disk checkpoint of %s: stopped %d ms", machine.vm_id, stopped * 1000)
        return snap
    except subprocess.CalledProcessError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SnapshotError(f"copying the disk of {machine.vm_id}: {e.stderr.decode(errors='replace')}") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


async def cold_boot(settings: VmmSettings, snap: Snapshot, vm_id: str, network: NetworkAttachment | None, *,
                    shared: bool = False, labels: dict[str, str] | None = None,
                    timeout: float = 120.0) -> Machine:
    """A machine booted afresh on ``snap``'s disk; returns once its guest init answers on the
    control channel (its services are starting). See the module docstring for ``shared``."""
    if snap.kind is SnapshotKind.TEMPLATE:
        raise InvalidSpecError("cold_boot() takes a DISK or SAVED snapshot; clone() a template")
    if shared and snap.kind is not SnapshotKind.DISK:
        raise InvalidSpecError("only a DISK snapshot can be shared by cold boots")
    snap.verify()
    base = replace(snap.spec, memory_file=None).with_network(network)

    def prepare(paths: MachinePaths) -> MachineSpec:
        disk = paths.dir / "rw.qcow2"
        if shared:
            cow_overlay(snap.disk, disk, settings.qemu_img)
            os.chmod(disk, 0o600)
        else:
            os.rename(snap.disk, disk)
        return _with_writable(base, disk, DiskFormat.QCOW2)

    def rollback(paths: MachinePaths) -> None:
        # Runs before the runtime dir is removed: a paused sandbox's disk must never go with it.
        disk = paths.dir / "rw.qcow2"
        if not shared and disk.exists() and not snap.disk.exists():
            os.rename(disk, snap.disk)

    machine = await Machine.launch(settings, vm_id, base, labels=labels, prepare=prepare, rollback=rollback)
    try:
        await machine.wait_guest(timeout)
    except BaseException as e:
        tail = machine.console_tail()
        rollback(machine.paths)
        await machine.kill()
        if isinstance(e, VmmError) or not isinstance(e, Exception):
            raise
        raise BootError(f"cold boot of {vm_id} failed: {e}", console_tail=tail) from e
    if not shared:
        snap.remove()
    return machine
