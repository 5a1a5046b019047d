"""The VMM jail: what a guest that takes over its QEMU finds. Used for every boot, clone, restore
and template build (``Machine.launch``).

A jailed QEMU
- runs as a uid/gid of its own from a pool (``UidPool``: ``jail_uid_base`` + N, one per running
  machine on this host, whatever state directory it belongs to), with no capability left;
- has as its root a read-only, ``nosuid,nodev,noexec`` tmpfs that exists only in a mount namespace
  of its own (QEMU's ``-chroot``), holding nothing but its disks, each bind-mounted at its own path
  (read-only unless it is the machine's writable layer): QEMU reopens a disk by path when it changes
  its permissions (at the end of a migration, say). No other host file is reachable by path, the
  template's memory file included, and nothing is left mounted on the host when it exits;
- runs under QEMU's seccomp filter (``-sandbox``) with obsolete calls, spawning processes and
  resource control denied;
- is in a cgroup of its own (``cgroups.MachineCgroup``): memory (guest RAM plus a measured VMM
  overhead, plus TCG's translation cache under TCG), pids, CPU weight from its vCPUs and an optional
  CPU quota. A machine that boots starts inside it (the forking thread joins first); a restored one
  (clone, resume) is moved in while QEMU starts and before its guest runs, because a cgroup
  migration waits for an RCU grace period (~10 ms here) that the clone path should not wait out
  alone;
- has rlimits: open files, file size (its largest disk or its RAM, plus a margin: what a save
  writes), no core dumps, set by util-linux ``prlimit`` on itself before it execs QEMU.

Order of events, and why it holds: QEMU opens everything it needs while still root and outside
the chroot (kernel, disks, memory file, tap, sockets, console), then chroots and drops to its uid
(``-chroot``, ``-runas``) before the guest runs. Later files reach it as descriptors over QMP
(snapshot state in and out), never by path. The machine's files it writes (overlay, runtime dir)
belong to its uid; templates' files stay root-owned and read-only.

Known gap, QEMU 7.2 (Debian 12): ``elevateprivileges=deny`` kills QEMU at start (SIGSYS), because
7.2 installs the filter before ``-runas`` calls setgid/setuid; the filter is used without it. After
``-runas`` every uid is the jail's and no capability is left, so a setuid call can no longer gain
anything. And 7.2 opens a private ``memory-backend-file`` read-write and keeps the descriptor, so a
clone is given its template's memory as a write-sealed memfd instead of the file
(vmm_core/sealed_memory.py): see docs/architecture.md.

Invariants:
- A uid is never given to two live machines on this host: claims are files created with O_EXCL in
  ``jail_claims_dir`` (machine-wide, not per state directory), naming the runtime directory; a
  claim whose machine is gone is taken back once no uid is free.
- ``release`` removes the cgroup (killing what is left inside) and the uid claim; it is idempotent
  and safe after a crash of the controller (the names follow from the vm_id and the record).
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from . import accel as accel_mod
from .cgroups import CgroupError, Limits, MachineCgroup
from .disks import qcow2_header
from .errors import VmmError
from .settings import Accel, VmmSettings
from .spec import DiskFormat, MachinePaths, MachineSpec
from .volumes import images as volume_images

# What QEMU's seccomp filter denies (see the module docstring for elevateprivileges).
SANDBOX = "on,obsolete=deny,spawn=deny,resourcecontrol=deny"
PIDS_MAX = 256            # QEMU's threads: main, RCU, vCPUs, its I/O worker pool (64 at most)
NOFILE = 4096
FSIZE_MARGIN = 256 << 20  # device state and qcow2 metadata beyond the largest RAM or disk

_CLONE_FS = 0x200
_CLONE_NEWNS = 0x20000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 32, 4096, 0x4000, 1 << 18
MAX_BACKING_DEPTH = 8
_libc = ctypes.CDLL(None, use_errno=True)


class JailError(VmmError):
    """The jail could not be set up."""


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


class UidPool:
    """Per-machine uids, claimed machine-wide (see the invariants)."""

    def __init__(self, claims_dir: Path, base: int, count: int):
        if base < 1000 or count < 1:
            raise ValueError("the jail's uids start at 1000 or above")
        self.dir = claims_dir
        self.base = base
        self.count = count

    def claim(self, runtime_dir: Path) -> int:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.dir / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            # A free uid first: one failed O_EXCL create per live claim. Only a full pool pays for
            # finding the stale claims (reading each claim, its record and its QEMU's cmdline),
            # which would otherwise be on every launch's path, growing with the machines running.
            uids = range(self.base, self.base + self.count)
            for uid in uids:
                if self._take(uid, runtime_dir):
                    return uid
            for uid in uids:
                path = self.dir / str(uid)
                if _stale(path):
                    path.unlink(missing_ok=True)
                    if self._take(uid, runtime_dir):
                        return uid
        raise JailError(f"no free jail uid in {self.base}..{self.base + self.count - 1}")

    def _take(self, uid: int, runtime_dir: Path) -> bool:
        try:
            fd = os.open(self.dir / str(uid), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(str(runtime_dir))
        return True

    def release(self, uid: int, runtime_dir: Path) -> None:
        path = self.dir / str(uid)
        try:
            if path.read_text() == str(runtime_dir):
                path.unlink()
        except FileNotFoundError:
            pass

    def release_all(self, runtime_dir: Path) -> None:
        """Every claim naming ``runtime_dir`` (a machine whose record, and so uid, is lost)."""
        if not self.dir.is_dir():
            return
        for claim in self.dir.iterdir():
            if claim.name.isdigit():
                self.release(int(claim.name), runtime_dir)


def _stale(claim: Path) -> bool:
    """A claim whose machine is gone: its record names another uid, or its QEMU is not running."""
    try:
        runtime = Path(claim.read_text())
        record = json.loads((runtime / "machine.json").read_text())
    except (OSError, ValueError):
        # No record yet can also mean "being launched right now": only a claim older than any
        # launch is taken back.
        try:
            return claim.stat().st_mtime < time.time() - 120
        except FileNotFoundError:
            return True
    return str(record.get("uid")) != claim.name or not _runs(int(record.get("pid", 0)), runtime)


def _runs(pid: int, runtime: Path) -> bool:
    """Is ``pid`` the QEMU of the machine in ``runtime`` (its QMP socket is on its command line)?"""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return str(runtime / "qmp.sock").encode() in f.read()
    except (OSError, ValueError):
        return False


@dataclass
class Jail:
    """One machine's jail; ``setup`` before the spawn, ``enter`` in the spawning thread,
    ``started`` after it, ``release`` when the machine is gone."""

    uid: int
    paths: MachinePaths
    cgroup: MachineCgroup | None
    pool: UidPool

    @classmethod
    def for_launch(cls, settings: VmmSettings, vm_id: str, paths: MachinePaths) -> Jail:
        pool = UidPool(settings.jail_claims_dir, settings.jail_uid_base, settings.jail_uid_count)
        uid = pool.claim(paths.dir)
        try:
            cgroup = MachineCgroup.for_machine(vm_id, settings.cgroup_parent)
        except (OSError, CgroupError) as e:
            pool.release(uid, paths.dir)
            raise JailError(f"cgroups unusable: {e}") from e
        return cls(uid, paths, cgroup, pool)

    @classmethod
    def of_record(cls, settings: VmmSettings, vm_id: str, paths: MachinePaths, uid: int) -> Jail:
        """The jail of a machine started earlier (to release it)."""
        pool = UidPool(settings.jail_claims_dir, settings.jail_uid_base, settings.jail_uid_count)
        try:
            cgroup = MachineCgroup.for_machine(vm_id, settings.cgroup_parent)
        except (OSError, CgroupError):
            cgroup = None
        return cls(uid, paths, cgroup, pool)

    binds: tuple[tuple[Path, bool], ...] = ()  # (host file, writable), mounted at the same path

    @property
    def root(self) -> Path:
        return self.paths.dir / "jail"

    def qemu_args(self) -> list[str]:
        return ["-runas", f"{self.uid}:{self.uid}", "-chroot", str(self.root), "-sandbox", SANDBOX]

    def setup(self, settings: VmmSettings, spec: MachineSpec) -> None:
        """Before the spawn: the empty root, the machine's files for its uid, the cgroup."""
        try:
            self.root.mkdir(mode=0o555, exist_ok=True)
            for d in spec.disks:
                if not d.readonly:
                    # The machine's to write; QEMU may reopen it by path after dropping to the jail's uid.
                    # A template build's layer goes back to root in snapshot().
                    os.chown(d.path, self.uid, self.uid)
            for image in volume_images(spec):  # a volume: this machine's alone while it runs
                os.chown(image, self.uid, self.uid)
            if spec.memory_file is not None and spec.memory_file.parent == self.paths.dir:
                # A template build's own RAM file (QEMU creates it if missing: then root's, 0600).
                if spec.memory_file.exists():
                    os.chown(spec.memory_file, self.uid, self.uid)
            os.chown(self.paths.dir, self.uid, self.uid)
            os.chmod(self.paths.dir, 0o700)
            self.binds = tuple(disk_files(spec))
            if self.cgroup is not None:
                self.cgroup.create(limits(settings, spec))
        except (OSError, CgroupError, ValueError) as e:
            raise JailError(f"setting up the jail of {self.paths.dir.name}: {e}") from e

    def enter(self, join_cgroup: bool = True) -> None:
        """In the thread that forks QEMU, just before: a private mount namespace whose jail root
        is a tmpfs holding only the machine's disks, then made read-only; and, with ``join_cgroup``,
        (v1) the machine's cgroup. That thread is discarded after."""
        secure = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
        root = str(self.root)
        _check(_libc.unshare(_CLONE_FS | _CLONE_NEWNS), "unshare(mount namespace)")
        _check(_libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), "making mounts private")
        _check(_libc.mount(b"cube-jail", root.encode(), b"tmpfs", secure, b"size=64k,mode=0755"),
               "mounting the jail root")
        for host, writable in self.binds:
            inside = self.root / host.relative_to("/")
            inside.parent.mkdir(parents=True, exist_ok=True)
            # mknod, not open(O_CREAT): no descriptor on the tmpfs ever exists. One open for
            # writing, even for an instant, could be inherited by another thread's fork (until its
            # exec) and make the read-only remount below fail with EBUSY (seen with 3 concurrent
            # clones).
            os.mknod(inside, stat.S_IFREG | 0o600)
            _check(_libc.mount(str(host).encode(), str(inside).encode(), None, _MS_BIND, None), f"binding {host}")
            flags = _MS_REMOUNT | _MS_BIND | secure | (0 if writable else _MS_RDONLY)
            _check(_libc.mount(None, str(inside).encode(), None, flags, None), f"limiting {host}")
        _check(_libc.mount(None, root.encode(), None, _MS_REMOUNT | _MS_RDONLY | secure, None),
               "making the jail root read-only")
        if join_cgroup and self.cgroup is not None:
            self.cgroup.enter_thread()

    def command_prefix(self, spec: MachineSpec) -> list[str]:
        """What QEMU's command line starts with: util-linux ``prlimit`` setting the rlimits on
        itself, then exec'ing QEMU, which inherits them. Setting them from outside after the spawn
        (prlimit(2) on the pid) races QEMU's drop to the jail's uid, after which it needs
        CAP_SYS_RESOURCE, which hosts (and containers) do not always give the node agent."""
        size = _largest_write(spec)
        return ["prlimit", f"--nofile={NOFILE}:{NOFILE}", f"--fsize={size}:{size}", "--core=0:0", "--"]

    def started(self, pid: int) -> None:
        """After the spawn: QEMU into its cgroup, unless it started there. Blocking: a cgroup
        migration waits for an RCU grace period (~10 ms measured here, on v1 and v2 alike)."""
        try:
            if self.cgroup is not None and not self.cgroup.contains(pid):
                self.cgroup.add(pid)
        except CgroupError as e:
            raise JailError(f"jailing pid {pid}: {e}") from e

    def release(self) -> None:
        if self.cgroup is not None:
            try:
                self.cgroup.remove()
            except CgroupError:
                pass  # reported by whoever finds it; the uid must still go back
        self.pool.release(self.uid, self.paths.dir)


def release_leftovers(settings: VmmSettings, vm_id: str, paths: MachinePaths) -> None:
    """The jail of a machine that is gone or never fully started, whatever is known of it: its
    cgroup (the name follows from the vm_id) and any uid claimed for its runtime dir."""
    try:
        cgroup = MachineCgroup.for_machine(vm_id, settings.cgroup_parent)
        if cgroup is not None:
            cgroup.remove()
    except (OSError, CgroupError):
        pass
    UidPool(settings.jail_claims_dir, settings.jail_uid_base, settings.jail_uid_count).release_all(paths.dir)


def limits(settings: VmmSettings, spec: MachineSpec) -> Limits:
    extra = settings.vmm_overhead_mb
    if accel_mod.resolve(spec.accel) is Accel.TCG:
        extra += settings.tcg_tb_size_mb
    quota = spec.vcpus * 100_000 if settings.cpu_quota else None
    return Limits(memory_bytes=(spec.memory_mb + extra) << 20, pids=PIDS_MAX,
                  cpu_weight=min(10_000, 100 * spec.vcpus), cpu_quota_us=quota)


def disk_files(spec: MachineSpec) -> list[tuple[Path, bool]]:
    """Every file a machine's disks may be reopened from: each disk, writable if the disk is, and
    its qcow2 backing chain, read-only."""
    out: dict[Path, bool] = {}
    for d in spec.disks:
        out[d.path] = out.get(d.path, False) or not d.readonly
        path, depth = d.path, 0
        while (backing := _qcow2_backing(path)) is not None:
            depth += 1
            if depth > MAX_BACKING_DEPTH:
                raise ValueError(f"{d.path}: backing chain deeper than {MAX_BACKING_DEPTH}")
            out.setdefault(backing, False)
            path = backing
    for image in volume_images(spec):
        out[image] = True
    for path in out:
        if not path.is_absolute():
            raise ValueError(f"disk path {path} is not absolute")
    return list(out.items())


def _qcow2_backing(path: Path) -> Path | None:
    """The backing file a qcow2 image names (resolved against its directory), or None."""
    try:
        header = qcow2_header(path)
        if header is None or header.backing is None:
            return None
        backing = Path(header.backing.decode())
    except (OSError, UnicodeDecodeError):
        return None
    return backing if backing.is_absolute() else path.parent / backing


def _largest_write(spec: MachineSpec) -> int:
    sizes = [spec.memory_mb << 20]
    for d in spec.disks:
        if not d.readonly:
            sizes.append(_virtual_size(d.path, d.format))
    sizes += [_virtual_size(image, DiskFormat.RAW) for image in volume_images(spec)]
    return max(sizes) + FSIZE_MARGIN


def _virtual_size(path: Path, fmt: DiskFormat) -> int:
    try:
        if fmt is DiskFormat.QCOW2 and (header := qcow2_header(path)) is not None:
            return header.virtual_size
        return path.stat().st_size
    except OSError as e:
        if e.errno == errno.ENOENT:
            return 0
        raise
