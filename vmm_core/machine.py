"""A running QEMU `microvm` and everything needed to control it.

QEMU is started in its own session (not as a daemon, so its errors land in qemu.log), so machines
outlive the process that started them: a restarted node agent re-attaches from the machine's record (`machine.json` with
the pid) and its QMP socket. Every file a machine owns lives in its runtime directory, which
`kill()` removes together with the process, its cgroup and its jail uid (vmm_core/jail.py: every
QEMU runs jailed unless the settings say otherwise).

TCG runs only where the settings allow it (``allow_tcg``): QEMU does not treat its emulator as a
security boundary, so a host without VT-x/AMD-V must say that it accepts the risk.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient
from qemu.qmp.error import QMPError

from cube_common import netns

from . import accel as accel_mod, exits, volumes
from .cgroups import MachineCgroup
from .control import ControlChannel
from .errors import BootError, GuestTimeoutError, InvalidSpecError, MachineGoneError, VmmError
from .jail import Jail, JailError, release_leftovers
from .sealed_memory import sealed_fd
from .settings import Accel, VmmSettings
from .spec import MachinePaths, MachineRecord, MachineSpec

log = logging.getLogger("vmm_core.machine")

# transparent_hugepage=never: with THP on (Debian's default, "always"), khugepaged in every clone
# collapses its processes' pages into fresh 2 MiB pages after the restore, writing copies of memory
# the clones would otherwise share with their snapshot: measured, ~50 MB more dirtied per idle
# code-interpreter sandbox within two minutes (95 MB against 42 MB with THP off).
# Besides the console and the root: what an idle guest must not wake up for (each wake-up of a
# guest costs its host ~0.1-0.5 ms of CPU under TCG, measured with a kernel trace of an idle code
# interpreter): no transparent huge pages (khugepaged's collapses after a restore dirtied ~50 MB
# per clone), no proactive compaction (kcompactd woke every 500 ms), no soft-lockup watchdog (its
# 4 s timer and the stop-machine thread it wakes; under TCG it could only misfire), and per-CPU
# memory statistics folded every 10 s rather than every second.
BASE_CMDLINE = ("console=ttyS0 panic=-1 reboot=t cube.root_serial=cube-base transparent_hugepage=never "
                "nowatchdog sysctl.vm.compaction_proactiveness=0 sysctl.vm.stat_interval=10")
CTL_PORT_NAME = "cube.ctl"


@dataclass(frozen=True)
class MachineStats:
    pid: int
    pss_bytes: int
    private_dirty_bytes: int
    rss_bytes: int
    cpu_seconds: float
    writable_disk_bytes: int


def console_tail(path: Path, lines: int = 40, max_bytes: int = 16384) -> str:
    """The last ``lines`` lines of a console file, reading at most its last ``max_bytes``."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read(max_bytes).decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def trim_console(path: Path, max_bytes: int) -> bool:
    """Keep a console file within ``max_bytes``: once it is larger, only its last half (from a line
    start) is kept. QEMU appends (``append=on``), so it goes on writing after the cut; what it writes
    during the cut may be lost, which a console ring allows. True when it cut."""
    try:
        with open(path, "r+b") as f:
            size = os.fstat(f.fileno()).st_size
            if size <= max_bytes:
                return False
            f.seek(size - max_bytes // 2)
            tail = f.read(max_bytes // 2)
            newline = tail.find(b"\n")
            tail = tail[newline + 1:] if 0 <= newline < len(tail) - 1 else tail
            f.seek(0)
            f.truncate()
            f.write(tail)
            return True
    except FileNotFoundError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _pid_owns(pid: int, paths: MachinePaths) -> bool:
    """Guard against pid reuse: the process must be QEMU with this machine's QMP socket."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return str(paths.qmp).encode() in f.read()
    except OSError:
        return False


def build_argv(settings: VmmSettings, spec: MachineSpec, paths: MachinePaths, *, share_memory: bool,
               incoming: bool, jail: Jail | None = None, memory_path: str | None = None) -> list[str]:
    """QEMU's command line. ``memory_path``: where QEMU finds ``spec.memory_file``'s content when
    that is not the file itself (a sealed memfd: vmm_core/sealed_memory.py)."""
    acc = accel_mod.resolve(spec.accel)
    # QEMU would mark guest RAM mergeable for KSM unless told not to: only the operator decides.
    mem = f"size={spec.memory_mb}M,merge={'on' if settings.mem_merge else 'off'}"
    if spec.memory_file is not None:
        share = "on" if share_memory else "off"
        backend = f"memory-backend-file,id=mem,{mem},mem-path={memory_path or spec.memory_file},share={share}"
    else:
        backend = f"memory-backend-ram,id=mem,{mem}"
    argv = [
        settings.qemu_binary, "-M", f"microvm,memory-backend=mem,x-option-roms={'on' if spec.option_roms else 'off'},"
                                    f"pit={'on' if spec.pit else 'off'}",
        *accel_mod.qemu_args(acc, settings.tcg_tb_size_mb),
        "-smp", str(spec.vcpus), "-m", f"{spec.memory_mb}M", "-object", backend,
        "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
        # Snapshots then do not record the source's run state (always paused when saved), so a
        # restore runs as soon as its state is loaded, without a `cont` round trip.
        "-global", "migration.store-global-state=off",
        # append=on: QEMU writes with O_APPEND, so trim_console can cut the file under it.
        "-chardev", f"file,id=con,path={paths.console},append=on", "-serial", "chardev:con",
    ]
    if not incoming or spec.option_roms:
        # A restored guest is past its boot: without the option ROM nothing needs the kernel.
        argv += ["-kernel", str(spec.kernel), "-initrd", str(spec.initramfs),
                 "-append", " ".join(filter(None, (BASE_CMDLINE, accel_mod.kernel_args(acc), spec.cmdline)))]
    argv += [
        "-object", "rng-random,id=rng0,filename=/dev/urandom", "-device", "virtio-rng-device,rng=rng0",
        "-device", "virtio-serial-device",
        "-chardev", f"socket,id=ctl,path={paths.control},server=on,wait=off",
        "-device", f"virtserialport,chardev=ctl,name={CTL_PORT_NAME}",
        "-qmp", f"unix:{paths.qmp},server=on,wait=off",
    ]
    for i, disk in enumerate(spec.disks):
        opts = f"id=d{i},file={disk.path},format={disk.format.value},if=none"
        if disk.readonly:
            opts += ",readonly=on"
        else:
            opts += ",discard=unmap"
        argv += ["-drive", opts, "-device", f"virtio-blk-device,drive=d{i},serial={disk.serial}"]
    if spec.network is not None:
        argv += ["-netdev", f"tap,id=net0,ifname={spec.network.tap},script=no,downscript=no",
                 "-device", f"virtio-net-device,netdev=net0,mac={spec.network.mac}"]
    argv += volumes.slot_args(spec)
    if incoming:
        argv += ["-incoming", "defer"]
    if jail is not None:
        argv = [*jail.command_prefix(spec), *argv, *jail.qemu_args()]
    return argv


def check_accel(settings: VmmSettings, spec: MachineSpec) -> None:
    if accel_mod.resolve(spec.accel) is Accel.TCG and not settings.allow_tcg:
        raise InvalidSpecError("this machine would run under TCG, QEMU's emulator, which is not a security "
                               "boundary for untrusted code; set CUBE_ALLOW_TCG=1 to accept that (hosts "
                               "without VT-x/AMD-V), or use a host with KVM")


def validate_spec(spec: MachineSpec) -> None:
    for label, path in (("kernel", spec.kernel), ("initramfs", spec.initramfs)):
        if not path.is_file() or path.stat().st_size == 0:
            raise InvalidSpecError(f"{label} {path} is missing or empty")
    for disk in spec.disks:
        if not disk.path.is_file():
            raise InvalidSpecError(f"disk {disk.serial} image {disk.path} does not exist")
    for image in volumes.images(spec):
        if not image.is_file():
            raise InvalidSpecError(f"volume image {image} does not exist")
    if spec.network is not None and _tap_exists(spec.network.netns, spec.network.tap) == spec.network.detached:
        where = f" in namespace {spec.network.netns}" if spec.network.netns else ""
        if spec.network.detached:  # QEMU would attach to it rather than make its own
            raise InvalidSpecError(f"tap device {spec.network.tap!r} exists{where}; a detached NIC needs a new name")
        raise InvalidSpecError(f"tap device {spec.network.tap!r} does not exist{where}")


def _tap_exists(ns: str | None, tap: str) -> bool:
    try:
        return netns.interface_exists(ns, tap)
    except netns.NamespaceNotFound as e:  # the caller named it: a bad spec, not an OS failure
        raise InvalidSpecError(str(e)) from None


class Machine:
    """Handle on one microVM. Obtain one from `boot()`, `attach()`, or vmm_core.snapshot."""

    def __init__(self, settings: VmmSettings, record: MachineRecord, paths: MachinePaths) -> None:
        self.settings = settings
        self.record = record
        self.paths = paths
        self.qmp: QMPClient | None = None
        self.control = ControlChannel(paths.control)

    @property
    def vm_id(self) -> str:
        return self.record.vm_id

    @property
    def spec(self) -> MachineSpec:
        return self.record.spec

    @property
    def pid(self) -> int:
        return self.record.pid

    def __repr__(self) -> str:
        return f"Machine({self.vm_id}, pid={self.pid})"

    # ---- lifecycle -------------------------------------------------------------------------

    @classmethod
    async def launch(cls, settings: VmmSettings, vm_id: str, spec: MachineSpec, *, incoming: bool = False,
                     share_memory: bool = True, labels: dict[str, str] | None = None,
                     prepare=None, rollback=None, memory_fd: int | None = None) -> Machine:
        """Start QEMU for `spec` in a fresh runtime dir and connect QMP. Used by boot and clones.

        `prepare(paths)` runs after the runtime dir exists and before QEMU starts (e.g. to create
        the copy-on-write overlay); `rollback(paths)` undoes it on failure, before the runtime dir
        is removed. On any failure nothing is left behind.

        `memory_fd`: the guest RAM is this descriptor's (a memfd the caller owns and keeps open),
        instead of `spec.memory_file`'s, which must still be set (it names the backend).
        """
        check_accel(settings, spec)
        if prepare is None:
            validate_spec(spec)
        paths = MachinePaths(settings.vms_dir / vm_id)
        if paths.dir.exists():
            raise InvalidSpecError(f"machine {vm_id} already exists")
        paths.dir.mkdir(parents=True)
        machine: Machine | None = None
        jail: Jail | None = None
        try:
            if prepare is not None:
                spec = prepare(paths) or spec
                validate_spec(spec)
            memfd = memory_fd
            if settings.jail:
                jail = Jail.for_launch(settings, vm_id, paths)
                jail.setup(settings, spec)
                if (memfd is None and spec.memory_file is not None and not share_memory
                        and spec.memory_file.parent != paths.dir):
                    # A template's memory, mapped privately: QEMU gets it write-sealed.
                    memfd = await asyncio.to_thread(sealed_fd, spec.memory_file)
            argv = build_argv(settings, spec, paths, share_memory=share_memory, incoming=incoming, jail=jail,
                              memory_path=f"/proc/self/fd/{memfd}" if memfd is not None else None)
            # A restored guest runs only once its state is loaded, after this returns: its QEMU
            # joins its cgroup while it starts up (see vmm_core/jail.py). A booting guest runs at
            # once: its QEMU starts inside.
            pid = await _spawn(argv, paths, spec.network.netns if spec.network else None, jail,
                               (memfd,) if memfd is not None else (), join_cgroup=not incoming)
            joining = asyncio.ensure_future(asyncio.to_thread(jail.started, pid)) if jail else None
            try:
                record = MachineRecord(vm_id, spec, pid, labels or {}, jail.uid if jail else None)
                record.dump(paths.record)
                machine = cls(settings, record, paths)
                await machine._connect_qmp()
            finally:
                if joining is not None:
                    await joining
            return machine
        except BaseException as e:
            if rollback is not None:
                rollback(paths)
            if machine is not None:
                await machine.kill()
            else:
                _kill_pidfile(paths)
                if jail is not None:
                    jail.release()
                shutil.rmtree(paths.dir, ignore_errors=True)
            if isinstance(e, (VmmError, asyncio.CancelledError)):
                raise
            if isinstance(e, ValueError):
                raise InvalidSpecError(str(e)) from e
            raise BootError(f"starting machine {vm_id} failed: {e}", console_tail=console_tail(paths.console)) from e

    @classmethod
    async def attach(cls, settings: VmmSettings, vm_id: str) -> Machine:
        """Re-attach to a machine started by an earlier controller process."""
        paths = MachinePaths(settings.vms_dir / vm_id)
        try:
            record = MachineRecord.load(paths.record)
        except (OSError, ValueError, KeyError) as e:
            raise MachineGoneError(f"machine {vm_id} has no usable record: {e}") from e
        if not pid_alive(record.pid) or not _pid_owns(record.pid, paths):
            raise MachineGoneError(f"machine {vm_id} (pid {record.pid}) is not running",
                                   console_tail=console_tail(paths.console))
        machine = cls(settings, record, paths)
        await machine._connect_qmp()
        return machine

    async def _connect_qmp(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        # A failed QMPClient.connect is costly (~ms of teardown); wait for the socket to exist.
        # The socket is created by another process (QEMU): there is nothing to await but the file.
        while not self.paths.qmp.exists() and pid_alive(self.pid) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.0005)
        while True:
            client = QMPClient(self.vm_id)
            try:
                await client.connect(str(self.paths.qmp))
                self.qmp = client
                return
            except (QMPError, OSError) as e:
                if not pid_alive(self.pid):
                    raise BootError(f"QEMU exited at start: {self.qemu_errors() or e}",
                                    console_tail=self.console_tail()) from e
                if time.monotonic() > deadline:
                    raise BootError(f"QMP socket did not answer: {e}", console_tail=self.console_tail()) from e
                # QEMU creates the socket within ~20 ms of exec; poll finely, it is on the clone path.
                await asyncio.sleep(0.001)

    async def execute(self, cmd: str, args: dict | None = None) -> object:
        if self.qmp is None:
            raise MachineGoneError(f"machine {self.vm_id} is not connected")
        try:
            return await self.qmp.execute(cmd, args)
        except (QMPError, OSError, EOFError) as e:
            if not pid_alive(self.pid):
                raise MachineGoneError(f"machine {self.vm_id} died during {cmd}",
                                       console_tail=self.console_tail()) from e
            raise VmmError(f"QMP {cmd} failed: {e}") from e

    async def query(self, cmd: str, args: dict | None = None) -> dict[str, Any]:
        """``execute`` for a command whose reply is a JSON object (``query-status``, ``query-migrate``)."""
        reply = await self.execute(cmd, args)
        if not isinstance(reply, dict):
            raise VmmError(f"QMP {cmd} returned {type(reply).__name__}, not an object")
        return reply

    def send_fd(self, fd: int) -> None:
        """Pass an open descriptor to QEMU (SCM_RIGHTS); name it next with the `getfd` command."""
        if self.qmp is None:
            raise MachineGoneError(f"machine {self.vm_id} has no QMP connection")
        try:
            self.qmp.send_fd_scm(fd)
        except OSError as e:
            raise MachineGoneError(f"machine {self.vm_id}: passing a descriptor failed: {e}") from e

    async def run_state(self) -> str:
        status = await self.query("query-status")
        return str(status["status"])

    async def pause(self) -> None:
        """Stop the vCPUs in place; memory and devices stay as they are."""
        await self.execute("stop")

    async def resume(self) -> None:
        await self.execute("cont")
        # The guest's wall clock stood still while paused.
        await self.control.sync_identity()

    async def wait_exit(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while pid_alive(self.pid):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def kill(self) -> None:
        """Stop the VMM process and remove every file this machine owns. Idempotent."""
        self.control.close()
        if self.qmp is not None:
            try:
                await asyncio.wait_for(self.qmp.disconnect(), 2)
            except Exception:  # the process is killed next; a broken QMP session does not matter
                pass
            self.qmp = None
        if pid_alive(self.pid) and _pid_owns(self.pid, self.paths):
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await self.wait_exit(10)
        self._release_jail()
        shutil.rmtree(self.paths.dir, ignore_errors=True)
        log.info("machine killed", extra={"vm_id": self.vm_id})

    def _release_jail(self) -> None:
        if self.record.uid is not None:
            Jail.of_record(self.settings, self.vm_id, self.paths, self.record.uid).release()

    async def quit(self) -> None:
        """Ask QEMU to exit (after a snapshot/save), without removing the runtime dir."""
        try:
            await self.execute("quit")
        except VmmError:
            pass
        if self.qmp is not None:
            try:
                await asyncio.wait_for(self.qmp.disconnect(), 2)
            except Exception:
                pass
            self.qmp = None
        self.control.close()
        if not await self.wait_exit(10):
            os.kill(self.pid, signal.SIGKILL)
            await self.wait_exit(5)

    # ---- observation -----------------------------------------------------------------------

    def console_tail(self, lines: int = 40) -> str:
        return console_tail(self.paths.console, lines)

    def trim_console(self) -> bool:
        """Bound the guest's console on the host (``settings.console_max_kb``); see trim_console."""
        return trim_console(self.paths.console, self.settings.console_max_kb << 10)

    def alive(self) -> bool:
        """Its QEMU still runs (and the pid is not another process's by now)."""
        return pid_alive(self.pid) and _pid_owns(self.pid, self.paths)

    def exit_cause(self) -> exits.MachineExit:
        """Why this machine's QEMU ended (call once it has, before ``kill`` removes the evidence)."""
        cgroup = None
        if self.record.uid is not None:
            try:
                cgroup = MachineCgroup.for_machine(self.vm_id, self.settings.cgroup_parent)
            except (OSError, ValueError):
                cgroup = None
        return exits.explain(self.paths, cgroup, console_tail(self.paths.qemu_log, 5, max_bytes=4096))

    def qemu_errors(self) -> str:
        """What QEMU itself printed (it prints only on errors)."""
        return console_tail(self.paths.qemu_log, 20).strip()

    async def wait_guest(self, timeout: float = 60.0) -> float:
        """Wait until the guest init answers on the control channel; returns the guest's uptime."""
        deadline = time.monotonic() + timeout
        while True:
            if not pid_alive(self.pid):
                raise MachineGoneError(f"machine {self.vm_id} exited: {self.qemu_errors()}",
                                       console_tail=self.console_tail())
            try:
                reply = await self.control.call("ping", timeout=max(0.1, min(2.0, deadline - time.monotonic())))
                return float(reply["uptime"])
            except (GuestTimeoutError, MachineGoneError):
                self.control.close()
                if time.monotonic() > deadline:
                    raise GuestTimeoutError(f"guest of {self.vm_id} did not come up within {timeout}s",
                                            console_tail=self.console_tail()) from None
                await asyncio.sleep(0.05)

    def writable_disk(self) -> Path | None:
        for d in self.spec.disks:
            if not d.readonly:
                return d.path
        return None

    def stats(self) -> MachineStats:
        from .accounting import process_cpu_seconds, process_memory
        from .disks import allocated_bytes

        mem = process_memory(self.pid)
        disk = self.writable_disk()
        return MachineStats(self.pid, mem.pss, mem.private_dirty, mem.rss, process_cpu_seconds(self.pid),
                            allocated_bytes(disk) if disk else 0)


def _reap_when_exits(pid: int, paths: MachinePaths) -> None:
    """Reap our QEMU child when it exits, without a thread per machine (pidfd in the event loop),
    and note its wait status for ``Machine.exit_cause``."""
    loop = asyncio.get_running_loop()
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return

    def reap() -> None:
        loop.remove_reader(fd)
        os.close(fd)
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done == pid:
            exits.record_status(paths, status)

    loop.add_reader(fd, reap)


async def _spawn(argv: list[str], paths: MachinePaths, ns: str | None, jail: Jail | None,
                 pass_fds: tuple[int, ...] = (), join_cgroup: bool = True) -> int:
    """Start QEMU detached (own session, output to qemu.log) and return its pid.

    The spawn happens on a worker thread that first enters the network namespace, if any: a child
    inherits the namespace of the thread that forks it, and without a preexec_fn subprocess can
    use vfork, which matters on the clone path (forking the whole Python process costs ~10 ms).
    A jailed spawn gets a thread of its own, which also enters the jail's mount namespace (and,
    with ``join_cgroup``, on v1, the machine's cgroup) before forking, and is discarded after.
    """
    def start() -> int:
        if jail is not None:
            try:
                jail.enter(join_cgroup)
            except OSError as e:
                raise JailError(f"entering the jail: {e}") from e
        with open(paths.qemu_log, "ab") as qlog:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=qlog, stderr=qlog,
                                    start_new_session=True, close_fds=True, pass_fds=pass_fds)
        return proc.pid

    loop = asyncio.get_running_loop()
    run = netns.call_on_own_thread if jail is not None else netns.call_in
    try:
        pid = await loop.run_in_executor(None, run, ns, start)
    except netns.NamespaceNotFound as e:
        raise InvalidSpecError(str(e)) from None
    _reap_when_exits(pid, paths)
    paths.pidfile.write_text(str(pid))  # before anything else can fail: a failed launch kills by it
    return pid


def _kill_pidfile(paths: MachinePaths) -> None:
    try:
        pid = int(paths.pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    if pid_alive(pid) and _pid_owns(pid, paths):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 5
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.01)


async def boot(settings: VmmSettings, vm_id: str, spec: MachineSpec, *,
               labels: dict[str, str] | None = None) -> Machine:
    """Cold-boot a machine. Returns once QEMU runs; wait for the guest with a probe or `control`."""
    return await Machine.launch(settings, vm_id, spec, labels=labels)


def forget(settings: VmmSettings, vm_id: str) -> None:
    """Remove what is left of a machine that cannot be attached to (its QEMU is gone, or it never
    wrote its record): any QEMU its pidfile still names, its jail (cgroup, uid) and its runtime
    dir. Idempotent."""
    paths = MachinePaths(settings.vms_dir / vm_id)
    _kill_pidfile(paths)
    release_leftovers(settings, vm_id, paths)
    shutil.rmtree(paths.dir, ignore_errors=True)


def list_machines(settings: VmmSettings) -> list[str]:
    if not settings.vms_dir.is_dir():
        return []
    return sorted(p.name for p in settings.vms_dir.iterdir() if (p / "machine.json").exists())
