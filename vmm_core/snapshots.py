"""Snapshots, copy-on-write clones, and save/restore.

Two kinds of snapshot:

* TEMPLATE: taken from a machine whose RAM lives in a shared file. QEMU migrates with the
  `x-ignore-shared` capability, so the state stream holds only device state (~50 KB) and the RAM
  stays in the file. A clone maps that file private (MAP_PRIVATE): it starts in tens of
  milliseconds and only the pages it writes cost memory. Its writable disk is a qcow2 overlay on
  the frozen writable layer. The source machine is consumed.
* SAVED: a full migration stream (RAM included) plus the machine's own disk overlay; `restore()`
  brings back exactly that one machine, any number of save/restore cycles later. A saved clone
  copied to another host runs there on that host's copy of its template (`rehome_saved()`).
* DISK: a disk overlay and the machine's shape, no memory and no device state: machines start
  from it by booting afresh (cold_boots.py).

Every clone starts with the snapshot's clock and RNG state, so clone() and restore() hand the guest
the current time and fresh entropy over the control channel before returning.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import NoReturn

from . import sealed_memory, volumes
from .disks import cow_overlay, flatten, qcow2_header, rebase_overlay
from .errors import BootError, InvalidSpecError, MachineGoneError, SnapshotError, VmmError
from .machine import Machine, pid_alive
from .settings import VmmSettings
from .spec import DiskFormat, MachinePaths, MachineSpec, NetworkAttachment

log = logging.getLogger("vmm_core.snapshot")

# Migration to a local pipe: no reason to throttle (QEMU's default is 128 MiB/s).
_MAX_BANDWIDTH = 8 << 30


class SnapshotKind(str, Enum):
    TEMPLATE = "template"
    SAVED = "saved"
    DISK = "disk"


@dataclass(frozen=True)
class Snapshot:
    dir: Path
    kind: SnapshotKind
    spec: MachineSpec  # the machine as it must be recreated (paths point into `dir` where moved)
    created_at: float

    @property
    def state(self) -> Path:
        return self.dir / "state"

    @property
    def memory(self) -> Path:
        return self.dir / "memory"

    @property
    def disk(self) -> Path:
        """The writable layer's file: a saved machine's overlay; a built template's raw layer, or
        a checkpoint's overlay (its own writes, on the template it was cloned from)."""
        if self.kind is not SnapshotKind.TEMPLATE:
            return self.dir / "disk.qcow2"
        fmt = next((d.format for d in self.spec.disks if not d.readonly), DiskFormat.RAW)
        return self.dir / ("disk.qcow2" if fmt is DiskFormat.QCOW2 else "disk.img")

    @property
    def pristine_overlay(self) -> Path:
        """An empty qcow2 overlay on `disk`, made once; each clone copies it (cheaper than qemu-img)."""
        return self.dir / "overlay.qcow2"

    @property
    def meta(self) -> Path:
        return self.dir / "snapshot.json"

    def write_meta(self) -> None:
        self.meta.write_text(json.dumps({"kind": self.kind.value, "spec": self.spec.to_dict(),
                                         "created_at": self.created_at}, indent=1))

    @classmethod
    def load(cls, path: Path) -> Snapshot:
        try:
            d = json.loads((path / "snapshot.json").read_text())
            snap = cls(path, SnapshotKind(d["kind"]), MachineSpec.from_dict(d["spec"]), d["created_at"])
        except (OSError, ValueError, KeyError) as e:
            raise SnapshotError(f"{path} is not a usable snapshot: {e}") from e
        snap = snap._relocated()
        snap.verify()
        return snap

    def _relocated(self) -> Snapshot:
        """Point the files the snapshot owns (memory, writable disk) into its current directory,
        so a snapshot directory can be moved as a whole."""
        disks = tuple(replace(d, path=self.disk) if not d.readonly else d for d in self.spec.disks)
        memory = self.memory if self.kind is SnapshotKind.TEMPLATE else self.spec.memory_file
        return replace(self, spec=replace(self.spec, disks=disks, memory_file=memory))

    def verify(self) -> None:
        """Cheap integrity checks before spending a QEMU process on the snapshot."""
        if self.kind is not SnapshotKind.DISK and (not self.state.is_file() or self.state.stat().st_size == 0):
            raise SnapshotError(f"snapshot {self.dir} has no device state")
        if not self.disk.is_file():
            raise SnapshotError(f"snapshot {self.dir} has no disk image")
        if self.kind is SnapshotKind.TEMPLATE and not sealed_memory.pending(self.memory):
            want = self.spec.memory_mb << 20
            if not self.memory.is_file() or self.memory.stat().st_size != want:
                have = self.memory.stat().st_size if self.memory.exists() else 0
                raise SnapshotError(f"snapshot {self.dir} memory file is {have} bytes, expected {want}")

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


async def _wait_migration(machine: Machine, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        info = await machine.query("query-migrate")
        status = info.get("status")
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            raise SnapshotError(f"migration {status}: {info.get('error-desc', '')}",
                                console_tail=machine.console_tail())
        if time.monotonic() > deadline:
            raise SnapshotError(f"migration did not finish within {timeout}s")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


async def _wait_incoming(machine: Machine, timeout: float = 120.0) -> None:
    """Wait until an incoming migration has loaded and the vCPUs run."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        if not pid_alive(machine.pid):
            raise SnapshotError(f"QEMU exited while restoring: {machine.qemu_errors()}",
                                console_tail=machine.console_tail())
        try:
            status = await machine.run_state()
        except MachineGoneError as e:
            raise SnapshotError(f"QEMU exited while restoring: {machine.qemu_errors()}",
                                console_tail=machine.console_tail()) from e
        if status == "running":
            return
        if status == "paused":
            # The stream carries the source's run state, and sources are stopped before saving.
            mig = await machine.query("query-migrate")
            if mig.get("status") == "completed":
                await machine.execute("cont")
                continue
            if mig.get("status") == "failed":
                raise SnapshotError(f"restore failed: {mig.get('error-desc', '')} {machine.qemu_errors()}",
                                    console_tail=machine.console_tail())
        elif status not in ("inmigrate", "prelaunch", "restore-vm"):
            raise SnapshotError(f"restore ended in state {status!r}: {machine.qemu_errors()}",
                                console_tail=machine.console_tail())
        now = time.monotonic()
        if now > deadline:
            raise SnapshotError(f"restore did not finish within {timeout}s")
        # A clone's device state loads in a few ms and a query costs ~0.3 ms: poll finely at
        # first (a doubling back-off overshot by several ms), then back off for large RAM loads.
        await asyncio.sleep(0.001 if now - start < 0.2 else 0.02)


async def _set_ignore_shared(machine: Machine, on: bool) -> None:
    await machine.execute("migrate-set-capabilities",
                          {"capabilities": [{"capability": "x-ignore-shared", "state": on}]})


def _staging(dest: Path, purpose: str = "partial", mode: int = 0o777) -> Path:
    """An empty dir beside ``dest`` (which must not exist) named for ``purpose``."""
    if dest.exists():
        raise InvalidSpecError(f"snapshot destination {dest} already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.{purpose}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=mode)
    return tmp


async def _give_fd(machine: Machine, fd: int, name: str) -> None:
    """Hand QEMU our descriptor ``fd`` under ``name`` (for an ``fd:<name>`` URI); ours is closed."""
    try:
        machine.send_fd(fd)
        await machine.execute("getfd", {"fdname": name})
    finally:
        os.close(fd)


async def _migrate_to_file(machine: Machine, path: Path | int) -> None:
    """Start migrating ``machine``'s state into a new file at ``path`` (or into the open file
    ``path``, which stays ours). The file goes to QEMU as an open descriptor: a jailed QEMU can
    neither reach the path nor start a process (``exec:``)."""
    fd = os.dup(path) if isinstance(path, int) else \
        os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    await _give_fd(machine, fd, "migration-out")
    await machine.execute("migrate", {"uri": "fd:migration-out"})


async def snapshot(machine: Machine, dest: Path, *, sync_fs: bool = True, memory_fd: int | None = None,
                   write_memory_later: bool = False, flatten_disk: bool = False) -> Snapshot:
    """Take a TEMPLATE snapshot of a machine booted with a shared memory file. Consumes it.
    ``sync_fs=False`` skips asking the guest to write back its page cache first. ``memory_fd``: the
    machine's RAM is that memfd's (``Machine.launch``), written out to the snapshot's memory file
    here; the fd is then the snapshot's sealed memory (``sealed_memory.adopt``) on a jailed host,
    else closed. The caller gives it up either way. ``write_memory_later`` (with ``memory_fd``, on
    a jailed host, whose clones map the sealed memfd rather than the file): the snapshot is
    returned at once and its memory file written in the background (``sealed_memory.adopt_writing``;
    ``sealed_memory.pending`` says when it is whole). ``flatten_disk``: the writable layer is a qcow2
    overlay reading through files the snapshot must not depend on (a template build's step layers);
    the snapshot's disk is then that whole chain as one raw layer, as a built template's is."""
    later = write_memory_later and memory_fd is not None and machine.settings.jail
    spec = machine.spec
    rw = machine.writable_disk()
    if spec.memory_file is None:
        raise InvalidSpecError("template snapshots need a machine booted with memory_file")
    if rw is None:
        raise InvalidSpecError("template snapshots need a writable disk")
    tmp = _staging(dest)
    try:
        # Let the guest write back dirty pages first: they would be consistent either way (RAM and
        # disk are captured at the same instant), but a clean page cache is cheaper in every clone.
        if sync_fs:
            try:
                await machine.control.call("sync_fs", timeout=30)
            except VmmError as e:
                log.warning("guest sync before snapshot failed: %s", e)
        await machine.execute("stop")
        await _set_ignore_shared(machine, True)
        await _migrate_to_file(machine, tmp / "state")
        await _wait_migration(machine)
        await machine.quit()
        # The layer's file name follows its format (Snapshot.disk): a built template's is raw, a
        # checkpoint's a qcow2 overlay on its template's.
        memory_file = spec.memory_file
        if flatten_disk:
            spec = _with_writable(spec, rw, DiskFormat.RAW)
        disk = Snapshot(dest, SnapshotKind.TEMPLATE, spec, 0.0).disk.name
        if memory_fd is None:
            os.rename(memory_file, tmp / "memory")
        elif not later:
            await asyncio.to_thread(sealed_memory.write_file, memory_fd, tmp / "memory", spec.memory_mb << 20)
        if flatten_disk:
            await asyncio.to_thread(flatten, rw, tmp / disk, "raw", machine.settings.qemu_img)
            os.unlink(rw)
        else:
            os.rename(rw, tmp / disk)
        # The snapshot's files are now the shared, read-only base of every clone: root's, whoever
        # (which jail uid) wrote them.
        for f in ((disk, "state") if later else ("memory", disk, "state")):
            os.chown(tmp / f, 0, 0)
            os.chmod(tmp / f, 0o444)
        disks = tuple(replace(d, path=dest / disk) if not d.readonly else d for d in spec.disks)
        snap = Snapshot(dest, SnapshotKind.TEMPLATE,
                        replace(volumes.emptied(spec), memory_file=dest / "memory", disks=disks, network=None),
                        time.time())
        Snapshot(tmp, snap.kind, snap.spec, snap.created_at).write_meta()
        os.rename(tmp, dest)
        await machine.kill()  # removes the runtime dir
        cow_overlay(snap.disk, snap.pristine_overlay, machine.settings.qemu_img)
        os.chmod(snap.pristine_overlay, 0o444)
        if memory_fd is not None:
            fd, memory_fd = memory_fd, None
            if later:
                await asyncio.to_thread(sealed_memory.adopt_writing, snap.memory, fd, spec.memory_mb << 20)
            elif machine.settings.jail:  # clones map sealed memfds only when jailed
                await asyncio.to_thread(sealed_memory.adopt, snap.memory, fd)
            else:
                os.close(fd)
        return snap
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        await machine.kill()
        raise
    finally:
        if memory_fd is not None:
            os.close(memory_fd)


def _with_writable(spec: MachineSpec, path: Path, fmt: DiskFormat) -> MachineSpec:
    return replace(spec, disks=tuple(replace(d, path=path, format=fmt) if not d.readonly else d for d in spec.disks))


async def _launch_incoming(settings: VmmSettings, snap: Snapshot, vm_id: str, spec: MachineSpec, prepare,
                           *, ignore_shared: bool, labels: dict[str, str] | None, rollback=None,
                           share_memory: bool = False, memory_fd: int | None = None) -> Machine:
    """QEMU started for ``spec``, waiting for the snapshot's device state (``-incoming defer``)."""
    try:
        machine = await Machine.launch(settings, vm_id, spec, incoming=True, share_memory=share_memory,
                                       prepare=prepare, labels=labels, rollback=rollback, memory_fd=memory_fd)
    except BootError as e:  # QEMU died before the restore began: still a failed restore to callers
        raise SnapshotError(f"restoring {snap.dir.name} into {vm_id} failed: {e}",
                            console_tail=e.console_tail) from e
    try:
        await _set_ignore_shared(machine, ignore_shared)
    except BaseException as e:
        await _abandon(machine, snap, vm_id, rollback, e)
    return machine


async def _load_state(machine: Machine, snap: Snapshot, vm_id: str, *, sync: bool, rollback=None,
                      state_fd: int | None = None) -> Machine:
    """Load the snapshot's device state (or the stream in the file ``state_fd``, read from its
    start) into a QEMU from ``_launch_incoming`` and let it run."""
    try:
        # The state file goes to QEMU as an open descriptor: an exec: URI would start a shell and
        # `cat` on the clone path (~3 ms).
        # O_NONBLOCK: opening a FIFO must not block the event loop (QEMU reads it non-blocking anyway).
        # A descriptor is opened anew (through /proc) for a file position of its own at 0.
        state = snap.state if state_fd is None else f"/proc/self/fd/{state_fd}"
        await _give_fd(machine, os.open(state, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK), "snapshot-state")
        await machine.execute("migrate-incoming", {"uri": "fd:snapshot-state"})
        await _wait_incoming(machine)
        if sync:
            await machine.control.sync_identity()
        return machine
    except BaseException as e:
        await _abandon(machine, snap, vm_id, rollback, e)


async def _abandon(machine: Machine, snap: Snapshot, vm_id: str, rollback, e: BaseException) -> NoReturn:
    """Kill a machine whose restore failed (undoing ``prepare`` first) and raise the typed error."""
    errors = machine.qemu_errors()
    tail = machine.console_tail()
    if rollback is not None:
        rollback(machine.paths)
    await machine.kill()
    if isinstance(e, SnapshotError) or isinstance(e, asyncio.CancelledError):
        raise e
    raise SnapshotError(f"restoring {snap.dir.name} into {vm_id} failed: {e} {errors}".strip(),
                        console_tail=tail) from e


async def _restore_into(settings: VmmSettings, snap: Snapshot, vm_id: str, spec: MachineSpec, prepare,
                        *, ignore_shared: bool, labels: dict[str, str] | None, sync: bool,
                        rollback=None) -> Machine:
    machine = await _launch_incoming(settings, snap, vm_id, spec, prepare, ignore_shared=ignore_shared,
                                     labels=labels, rollback=rollback)
    return await _load_state(machine, snap, vm_id, sync=sync, rollback=rollback)


@dataclass
class PreparedClone:
    """A clone whose QEMU is already started and waiting for the snapshot (``prepare_clone``):
    ``start()`` only loads the device state and resumes, so it skips QEMU's own start-up (about
    40 ms of a clone under TCG). Like Firecracker restoring into an already-running VMM process.
    An unused one must be ``discard()``-ed; it holds its QEMU, overlay and network attachment."""

    machine: Machine
    snapshot: Snapshot
    _used: bool = False

    @property
    def vm_id(self) -> str:
        return self.machine.vm_id

    async def start(self, *, sync: bool = True) -> Machine:
        if self._used:
            raise InvalidSpecError(f"prepared clone {self.vm_id} was already started or discarded")
        self._used = True
        return await _load_state(self.machine, self.snapshot, self.vm_id, sync=sync)

    async def discard(self) -> None:
        if not self._used:
            self._used = True
            await self.machine.kill()


def _clone_spec(settings: VmmSettings, snap: Snapshot, network: NetworkAttachment | None,
                memory_mb: int | None, share_memory: bool, volume_images: Sequence[Path] = ()):
    if snap.kind is not SnapshotKind.TEMPLATE:
        raise InvalidSpecError("clone() takes a template snapshot; use restore() for a saved one")
    if memory_mb is not None and memory_mb != snap.spec.memory_mb:
        raise InvalidSpecError(f"snapshot {snap.dir.name} needs exactly {snap.spec.memory_mb} MB of memory, "
                               f"not {memory_mb} MB")
    snap.verify()
    spec = volumes.attach(snap.spec.with_network(network), volume_images)

    def prepare(paths: MachinePaths) -> MachineSpec:
        overlay = paths.dir / "rw.qcow2"
        if snap.pristine_overlay.is_file():
            shutil.copyfile(snap.pristine_overlay, overlay)
            os.chmod(overlay, 0o600)
        else:
            cow_overlay(snap.disk, overlay, settings.qemu_img)
        out = _with_writable(spec, overlay, DiskFormat.QCOW2)
        if not share_memory:
            own = paths.dir / "memory"
            subprocess.run(["cp", "--sparse=always", "--reflink=auto", str(snap.memory), str(own)], check=True)
            out = replace(out, memory_file=own)
        return out

    return spec, prepare


async def clone(settings: VmmSettings, snap: Snapshot, vm_id: str, network: NetworkAttachment | None, *,
                memory_mb: int | None = None, labels: dict[str, str] | None = None, sync: bool = True,
                share_memory: bool = True, volume_images: Sequence[Path] = ()) -> Machine:
    """A new machine running from a TEMPLATE snapshot, copy-on-write in memory and on disk.

    ``volume_images`` go into its volume slots (vmm_core/volumes.py); ``volumes.mount()`` then has
    the guest mount them.

    `share_memory=False` gives the clone its own copy of the snapshot's memory file instead of a
    private mapping of the shared one: no page is ever shared with another tenant (a defence
    against memory-deduplication side channels), at the cost of the copy and its memory.

    `sync=True` (the default) hands the guest the wall clock and fresh entropy over the control
    channel as soon as it runs. Skip it only to hand them over yourself right away: until its clock
    is set, a restored guest of the default template was measured running a core flat out for 20 s
    and more under TCG."""
    spec, prepare = _clone_spec(settings, snap, network, memory_mb, share_memory, volume_images)
    return await _restore_into(settings, snap, vm_id, spec, prepare, ignore_shared=True, labels=labels, sync=sync)


async def prepare_clone(settings: VmmSettings, snap: Snapshot, vm_id: str, network: NetworkAttachment | None, *,
                        memory_mb: int | None = None, labels: dict[str, str] | None = None,
                        share_memory: bool = True) -> PreparedClone:
    """``clone()`` in two steps: this one starts QEMU (overlay, network, memory mapping) and waits;
    ``PreparedClone.start()`` restores the snapshot into it. Same checks and errors as clone()."""
    spec, prepare = _clone_spec(settings, snap, network, memory_mb, share_memory)
    machine = await _launch_incoming(settings, snap, vm_id, spec, prepare, ignore_shared=True, labels=labels)
    return PreparedClone(machine, snap)


async def _undo_stopped_save(machine: Machine, staging: Path) -> None:
    """A save that failed before its machine ended: nothing of it is kept, and the machine (which
    may have been stopped for it) runs on."""
    shutil.rmtree(staging, ignore_errors=True)
    if pid_alive(machine.pid):
        try:
            await machine.execute("cont")
        except VmmError:
            pass


async def save(machine: Machine, dest: Path) -> Snapshot:
    """Write the machine's full state (RAM, devices) and keep its disk overlay; the machine is gone
    afterwards. If saving fails the machine keeps running."""
    rw = machine.writable_disk()
    if rw is None:
        raise InvalidSpecError("save() needs a machine with a writable disk")
    tmp = _staging(dest)
    try:
        await machine.execute("stop")
        await _set_ignore_shared(machine, False)
        await machine.execute("migrate-set-parameters", {"max-bandwidth": _MAX_BANDWIDTH})
        await _migrate_to_file(machine, tmp / "state")
        await _wait_migration(machine)
    except BaseException:
        await _undo_stopped_save(machine, tmp)
        raise
    await machine.quit()
    os.rename(rw, tmp / "disk.qcow2")
    os.chown(tmp / "disk.qcow2", 0, 0)  # root's while saved: its jail uid goes back to the pool
    fmt = DiskFormat.QCOW2 if rw.suffix == ".qcow2" else DiskFormat.RAW
    snap = Snapshot(dest, SnapshotKind.SAVED, _with_writable(machine.spec, dest / "disk.qcow2", fmt).with_network(None),
                    time.time())
    Snapshot(tmp, snap.kind, snap.spec, snap.created_at).write_meta()
    os.rename(tmp, dest)
    await machine.kill()
    return snap


async def checkpoint(machine: Machine, dest: Path, *, labels: dict[str, str] | None = None,
                     write_memory_later: bool = False) -> Snapshot:
    """A TEMPLATE snapshot of a running machine that goes on running: clones of it start where the
    machine was (its processes, memory and disk), copy-on-write like clones of a built template.

    Two steps. (1) The machine is stopped for as long as writing its full state (RAM included) to
    a stream and copying its disk overlay take, then runs on: its run is interrupted, not ended,
    and it gets the current time back. (2) A second QEMU, on a NIC connected to nothing, loads that
    stream into RAM backed by a new shared file and is snapshotted like a template build (that file
    becomes the snapshot's memory, the copied overlay its disk, reading through the machine's own
    backing chain). The stream is deleted. On any failure nothing of the snapshot is left, and the
    machine runs on. ``write_memory_later``: see ``snapshot()`` (clones that map the memory file
    itself, unjailed or with no memory sharing, need it written first)."""
    rw = machine.writable_disk()
    if rw is None or rw.suffix != ".qcow2":
        raise InvalidSpecError("checkpoint() needs a machine whose writable disk is a qcow2 overlay (a clone)")
    work = _staging(dest, "checkpoint", 0o700)
    # The stream is a memfd, not a file on the disk: it is read once, right away, and its ~0.5 GB
    # would only load the disk's writeback (which made the stop time vary 0.25-0.7 s).
    stream = os.memfd_create(f"cube-ckpt-stream:{dest.name}", os.MFD_CLOEXEC)
    memfd: int | None = None
    try:
        # A saved machine's layout, so that the restore helpers find the disk.
        src = machine.spec
        mac = src.network.mac if src.network is not None else NetworkAttachment.unplugged().mac
        saved = Snapshot(work, SnapshotKind.SAVED, replace(
            _with_writable(src, work / "disk.qcow2", DiskFormat.QCOW2),
            network=NetworkAttachment.unplugged(mac), memory_file=None), time.time())
        t0 = time.monotonic()
        laps: dict[str, float] = {}
        await machine.execute("stop")
        try:
            await _set_ignore_shared(machine, False)
            await machine.execute("migrate-set-parameters", {"max-bandwidth": _MAX_BANDWIDTH})
            await _migrate_to_file(machine, stream)
            await _wait_migration(machine)
            laps["stream"] = time.monotonic() - t0
            # Flushed and consistent with the stream: migration ends with the images inactive.
            await asyncio.to_thread(subprocess.run, ["cp", "--sparse=always", "--reflink=auto", str(rw),
                                                     str(saved.disk)], check=True, capture_output=True)
        finally:
            if pid_alive(machine.pid):
                await machine.execute("cont")  # after a completed migration this re-activates the images
            laps["stopped"] = time.monotonic() - t0
        try:
            await machine.control.sync_identity()
        except VmmError as e:
            log.warning("time hand-over after checkpoint failed on %s: %s", machine.vm_id, e)

        # The RAM is loaded into a memfd, not the snapshot's file: page faults of a shared mapping
        # of a file on ext4 cost several times shmem's (a 408 MB stream took 2.5 s to load into a
        # file, against MB/s of plain writes); snapshot() then writes its data out in one pass.
        vm_id = f"{machine.vm_id}-ckpt"
        t1 = time.monotonic()
        # (Allocating the memfd whole before the load was measured: what the load saves in page
        # faults the allocation costs, and done while the source streams it slowed the stream.)
        memfd = os.memfd_create(f"cube-ckpt:{dest.name}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(memfd, src.memory_mb << 20)
        spec = replace(saved.spec, memory_file=work / "memory")  # names the backend; the RAM is the memfd's
        staged = await _launch_incoming(machine.settings, saved, vm_id, spec, None, ignore_shared=False,
                                        labels=labels, share_memory=True, memory_fd=memfd)
        laps["launch"] = time.monotonic() - t1
        # No round trip with its guest (each costs a scheduling of a vCPU under TCG): it runs only
        # between the load and the stop that snapshot() begins with. Clones get the clock.
        staged = await _load_state(staged, saved, vm_id, sync=False, state_fd=stream)
        laps["load"] = time.monotonic() - t1 - laps["launch"]
        t2 = time.monotonic()
        fd, memfd = memfd, None  # snapshot() takes it, whatever happens
        snap = await snapshot(staged, dest, sync_fs=False, memory_fd=fd, write_memory_later=write_memory_later)
        laps["snapshot"] = time.monotonic() - t2
        log.info("checkpoint of %s: %s; stream %d MB", machine.vm_id,
                 ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in laps.items()), os.fstat(stream).st_size >> 20)
        return snap
    except subprocess.CalledProcessError as e:
        raise SnapshotError(f"copying the disk of {machine.vm_id}: {e.stderr.decode(errors='replace')}") from e
    finally:
        os.close(stream)
        if memfd is not None:
            os.close(memfd)
        shutil.rmtree(work, ignore_errors=True)


async def restore(settings: VmmSettings, snap: Snapshot, vm_id: str, network: NetworkAttachment | None, *,
                  labels: dict[str, str] | None = None) -> Machine:
    """Bring a SAVED machine back. On success the saved snapshot is consumed (its disk now belongs to
    the running machine); on failure it is left exactly as it was."""
    if snap.kind is not SnapshotKind.SAVED:
        raise InvalidSpecError("restore() takes a saved snapshot; use clone() for a template")
    snap.verify()
    spec = snap.spec.with_network(network)
    fmt = next(d.format for d in snap.spec.disks if not d.readonly)

    def prepare(paths: MachinePaths) -> MachineSpec:
        disk = paths.dir / "rw.qcow2"
        os.rename(snap.disk, disk)
        return _with_writable(spec, disk, fmt)

    def rollback(paths: MachinePaths) -> None:
        # Runs before the runtime dir is removed: the sandbox's disk must never go with it.
        disk = paths.dir / "rw.qcow2"
        if disk.exists() and not snap.disk.exists():
            os.rename(disk, snap.disk)

    machine = await _restore_into(settings, snap, vm_id, spec, prepare, ignore_shared=False, labels=labels,
                                  sync=True, rollback=rollback)
    snap.remove()
    return machine


def rehome_saved(path: Path, template: Snapshot, *, private_memory: Path | None = None,
                 qemu_img: str = "qemu-img") -> Snapshot:
    """Make the SAVED (or DISK: a filesystem-only save, no memory) snapshot in ``path``, a clone of
    ``template`` saved on another host and copied here, run on this host's copy of that template:
    its kernel, initramfs and read-only disks become the template's, its memory file the template's
    memory (or ``private_memory``: a clone that had its own copy, which a restore creates afresh),
    and its overlay reads through the template's disk.

    The copy's metadata comes from the other host: no path in it is kept or followed (the overlay's
    backing file name is replaced, and an overlay that names an external data file is refused). The
    template must hold the very bytes the clone was made from (the guest's memory holds pages of its
    disks): that is the caller's to check. Raises SnapshotError when the copy is not a saved clone
    of a machine of that shape. Blocking."""
    try:
        d = json.loads((path / "snapshot.json").read_text())
        saved = Snapshot(path, SnapshotKind(d["kind"]), MachineSpec.from_dict(d["spec"]), float(d["created_at"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise SnapshotError(f"{path} is not a usable snapshot: {e}") from e
    if saved.kind not in (SnapshotKind.SAVED, SnapshotKind.DISK) or template.kind is not SnapshotKind.TEMPLATE:
        raise SnapshotError(f"{path} is a {saved.kind.value} snapshot, not a saved clone")
    if volumes.images(saved.spec):
        raise SnapshotError(f"{path} saved a machine with volumes: they stay on the host that has them")
    own = {disk.serial: disk for disk in template.spec.disks}
    if ([(x.serial, x.readonly) for x in saved.spec.disks] != [(x.serial, x.readonly) for x in template.spec.disks]
            or saved.spec.memory_mb != template.spec.memory_mb):
        raise SnapshotError(f"{path} saved a machine of another shape than template {template.dir}")
    try:
        header = qcow2_header(saved.disk)
    except OSError as e:
        raise SnapshotError(f"{path}: its disk is unreadable: {e}") from e
    if header is None or header.external_data or header.version not in (2, 3):
        raise SnapshotError(f"{path}: its disk is not a qcow2 overlay this host can take")
    try:
        rebase_overlay(saved.disk, template.disk, qemu_img)
    except VmmError as e:
        raise SnapshotError(f"{path}: {e}") from e
    disks = tuple(replace(own[x.serial], readonly=True) if x.readonly
                  else replace(x, path=saved.disk, format=DiskFormat.QCOW2) for x in saved.spec.disks)
    # A filesystem-only save (DISK) has no memory to map: it boots afresh (cold_boots.py).
    memory = None if saved.kind is SnapshotKind.DISK else private_memory or template.memory
    spec = replace(saved.spec, kernel=template.spec.kernel, initramfs=template.spec.initramfs, disks=disks,
                   memory_file=memory, network=None)
    mode = os.stat(saved.meta).st_mode
    Snapshot(path, saved.kind, spec, saved.created_at).write_meta()
    os.chmod(saved.meta, mode)
    return Snapshot.load(path)
