"""Processes the agent starts for clients: spawning (pipes or a PTY), output fan-out, input,
signals, and the table that lets a client find a process again after it disconnected.

A process outlives the stream that started it; output produced while nobody is subscribed is
dropped, as upstream envd does. Each subscriber has a bounded queue and a slow subscriber slows
the reader down (back-pressure to the process) instead of growing the agent's memory.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import fcntl
import logging
import os
import signal
import struct
import subprocess
import termios
from dataclasses import dataclass, field

from .users import User

log = logging.getLogger("envd.processes")

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
READ_CHUNK = 64 * 1024
# Once the process has exited, output still held by its pipes (or by a forgotten background
# grandchild keeping them open) is read until EOF or until it goes quiet for this long.
DRAIN_IDLE_S = 0.1
SUBSCRIBER_QUEUE = 256


class SpawnError(Exception):
    pass


class OutputKind(enum.Enum):
    STDOUT = "stdout"
    STDERR = "stderr"
    PTY = "pty"


@dataclass(frozen=True)
class Output:
    kind: OutputKind
    data: bytes


@dataclass(frozen=True)
class Exit:
    exit_code: int
    exited: bool
    status: str
    error: str | None

    @classmethod
    def from_returncode(cls, rc: int) -> Exit:
        if rc >= 0:
            status = f"exit status {rc}"
            return cls(rc, True, status, status if rc else None)
        try:
            name = (signal.strsignal(-rc) or f"signal {-rc}").lower()
        except ValueError:
            name = f"signal {-rc}"
        status = f"signal: {name}"
        return cls(-1, False, status, status)


Event = Output | Exit


@dataclass(frozen=True)
class ProcessSpec:
    cmd: str
    args: tuple[str, ...]
    envs: dict[str, str]
    cwd: str | None
    tag: str | None
    user: User
    pty_size: tuple[int, int] | None  # (cols, rows)
    stdin: bool
    base_env: dict[str, str] = field(default_factory=dict)


class Subscription:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[Event] = asyncio.Queue(SUBSCRIBER_QUEUE)
        self.closed = False

    async def put(self, ev: Event) -> None:
        if not self.closed:
            await self.queue.put(ev)

    async def get(self) -> Event:
        return await self.queue.get()

    def close(self) -> None:
        self.closed = True
        # Unblock a reader that is waiting for room in this queue.
        while not self.queue.empty():
            self.queue.get_nowait()


def _wake(fut: asyncio.Future[None]) -> None:
    """Event-loop reader/writer callback: resolve ``fut`` once."""
    if not fut.done():
        fut.set_result(None)


def _set_winsize(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _make_controlling_tty() -> None:  # runs in the child, after setsid
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


async def _read_fd(fd: int, timeout: float | None = None) -> bytes | None:
    """Reads what is there; b"" at EOF (or EIO: a PTY whose slave side closed), None on timeout."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            return os.read(fd, READ_CHUNK)
        except BlockingIOError:
            pass
        except OSError as e:
            if e.errno == errno.EIO:
                return b""
            raise
        fut: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, _wake, fut)
        try:
            if timeout is None:
                await fut
            else:
                done, _ = await asyncio.wait({fut}, timeout=timeout)
                if not done:
                    return None
        finally:
            loop.remove_reader(fd)


async def _write_all(fd: int, data: bytes) -> None:
    loop = asyncio.get_running_loop()
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
            view = view[n:]
            continue
        except BlockingIOError:
            pass
        fut: asyncio.Future[None] = loop.create_future()
        loop.add_writer(fd, _wake, fut)
        try:
            await fut
        finally:
            loop.remove_writer(fd)


class ManagedProcess:
    def __init__(self, spec: ProcessSpec, on_end) -> None:
        self.spec = spec
        self.pid = 0
        self._popen: subprocess.Popen | None = None
        self._stdin_fd: int | None = None
        self._pty_fd: int | None = None
        self._out_fds: list[tuple[OutputKind, int]] = []
        self._subs: set[Subscription] = set()
        self._exit: Exit | None = None
        self._exited = asyncio.Event()
        self._done = asyncio.Event()
        self._on_end = on_end
        self._input_lock = asyncio.Lock()
        self._runner: asyncio.Future[None] | None = None  # keeps the task of _run() referenced

    @property
    def tag(self) -> str | None:
        return self.spec.tag

    @property
    def is_pty(self) -> bool:
        return self.spec.pty_size is not None

    @property
    def result(self) -> Exit | None:
        return self._exit if self._done.is_set() else None

    # -- lifecycle ----------------------------------------------------------------------------

    def spawn(self) -> None:
        spec = self.spec
        env = dict(spec.base_env)
        env.update(spec.envs)
        cwd = spec.cwd or spec.user.home
        if not os.path.isdir(cwd):
            if spec.cwd:
                raise SpawnError(f"cwd '{spec.cwd}' does not exist or is not a directory")
            cwd = "/"
        env.setdefault("PWD", cwd)
        ids: dict = {}
        if os.geteuid() == 0 and spec.user.uid != 0:
            ids = {"user": spec.user.uid, "group": spec.user.gid,
                   "extra_groups": list(spec.user.groups)}
        close_after: list[int] = []
        argv0 = _shell_fallback(spec.cmd)
        try:
            if spec.pty_size is not None:
                master, slave = os.openpty()
                close_after.append(slave)
                cols, rows = spec.pty_size
                _set_winsize(slave, cols or 80, rows or 24)
                os.set_blocking(master, False)
                self._pty_fd = master
                self._out_fds = [(OutputKind.PTY, master)]
                popen = subprocess.Popen(
                    [argv0, *spec.args], env=env, cwd=cwd, stdin=slave, stdout=slave,
                    stderr=slave, start_new_session=True, preexec_fn=_make_controlling_tty,
                    close_fds=True, **ids,
                )
            else:
                out_r, out_w = os.pipe()
                err_r, err_w = os.pipe()
                close_after += [out_w, err_w]
                stdin_arg: int = subprocess.DEVNULL
                if spec.stdin:
                    in_r, in_w = os.pipe()
                    close_after.append(in_r)
                    os.set_blocking(in_w, False)
                    self._stdin_fd = in_w
                    stdin_arg = in_r
                for fd in (out_r, err_r):
                    os.set_blocking(fd, False)
                self._out_fds = [(OutputKind.STDOUT, out_r), (OutputKind.STDERR, err_r)]
                popen = subprocess.Popen(
                    [argv0, *spec.args], env=env, cwd=cwd, stdin=stdin_arg, stdout=out_w,
                    stderr=err_w, start_new_session=True, close_fds=True, **ids,
                )
        except (OSError, subprocess.SubprocessError) as e:
            self._close_fds()
            raise SpawnError(f"cannot start {spec.cmd!r}: {e}") from e
        finally:
            for fd in close_after:
                os.close(fd)
        self._popen = popen
        self.pid = popen.pid
        self._runner = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        pumps = [asyncio.ensure_future(self._pump(kind, fd)) for kind, fd in self._out_fds]
        try:
            await self._wait_exit(loop)
            await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            self._close_fds()
            assert self._exit is not None
            for sub in list(self._subs):
                await sub.put(self._exit)
            self._done.set()
            self._on_end(self)

    async def _wait_exit(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._popen is not None
        try:
            pidfd = os.pidfd_open(self.pid)
        except OSError:
            pidfd = None
        if pidfd is not None:
            fut: asyncio.Future[None] = loop.create_future()
            loop.add_reader(pidfd, _wake, fut)
            try:
                await fut
            finally:
                loop.remove_reader(pidfd)
                os.close(pidfd)
            rc = self._popen.wait()
        else:
            # No pidfd (old kernel): nothing to wait on but the child's status.
            while (polled := self._popen.poll()) is None:  # noqa: ASYNC110 - the fallback polls by design
                await asyncio.sleep(0.05)
            rc = polled
        self._exit = Exit.from_returncode(rc)
        self._exited.set()

    async def _pump(self, kind: OutputKind, fd: int) -> None:
        exited = asyncio.ensure_future(self._exited.wait())
        try:
            while True:
                read = asyncio.ensure_future(_read_fd(fd))
                done, _ = await asyncio.wait({read, exited}, return_when=asyncio.FIRST_COMPLETED)
                if read not in done:
                    read.cancel()
                    await asyncio.gather(read, return_exceptions=True)
                    break
                data = read.result()
                if not data:
                    return
                await self._broadcast(Output(kind, data))
        finally:
            exited.cancel()
        # The process is gone: take what its pipes still hold, but do not wait for a background
        # grandchild that inherited them.
        while True:
            data = await _read_fd(fd, DRAIN_IDLE_S)
            if not data:
                return
            await self._broadcast(Output(kind, data))

    async def _broadcast(self, ev: Event) -> None:
        for sub in list(self._subs):
            await sub.put(ev)

    def _close_fds(self) -> None:
        fds = [fd for _, fd in self._out_fds]
        if self._stdin_fd is not None:
            fds.append(self._stdin_fd)
        self._stdin_fd = None
        self._out_fds = []
        self._pty_fd = None
        for fd in set(fds):
            try:
                os.close(fd)
            except OSError:
                pass

    async def wait(self) -> Exit:
        await self._done.wait()
        assert self._exit is not None
        return self._exit

    # -- clients ------------------------------------------------------------------------------

    def subscribe(self) -> Subscription:
        sub = Subscription()
        if self._done.is_set():
            assert self._exit is not None
            sub.queue.put_nowait(self._exit)
        else:
            self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)
        sub.close()

    async def write_stdin(self, data: bytes) -> None:
        if self.is_pty:
            raise ValueError("process has a PTY; send input as pty")
        if self._stdin_fd is None:
            raise ValueError("stdin of this process is not open")
        async with self._input_lock:
            await _write_all(self._stdin_fd, data)

    async def write_pty(self, data: bytes) -> None:
        if self._pty_fd is None:
            raise ValueError("process has no PTY")
        async with self._input_lock:
            await _write_all(self._pty_fd, data)

    def close_stdin(self) -> None:
        if self.is_pty:
            raise ValueError("process has a PTY; it has no separate stdin")
        if self._stdin_fd is not None:
            os.close(self._stdin_fd)
            self._stdin_fd = None

    def resize(self, cols: int, rows: int) -> None:
        if self._pty_fd is None:
            raise ValueError("process has no PTY")
        _set_winsize(self._pty_fd, cols, rows)

    def send_signal(self, sig: int) -> None:
        """Signals the whole process group, so `kill` also ends what the command started."""
        if self._exited.is_set():
            return
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            os.kill(self.pid, sig)


class ProcessTable:
    def __init__(self) -> None:
        self._by_pid: dict[int, ManagedProcess] = {}

    def start(self, spec: ProcessSpec) -> ManagedProcess:
        proc = ManagedProcess(spec, self._ended)
        proc.spawn()
        self._by_pid[proc.pid] = proc
        log.info("process started", extra={"pid": proc.pid, "cmd": spec.cmd, "user": spec.user.name,
                                          "pty": spec.pty_size is not None, "tag": spec.tag})
        return proc

    def _ended(self, proc: ManagedProcess) -> None:
        self._by_pid.pop(proc.pid, None)
        log.info("process ended", extra={"pid": proc.pid, "status": proc._exit.status if proc._exit else None})

    def by_pid(self, pid: int) -> ManagedProcess | None:
        return self._by_pid.get(pid)

    def by_tag(self, tag: str) -> ManagedProcess | None:
        for p in self._by_pid.values():
            if p.tag == tag:
                return p
        return None

    def all(self) -> list[ManagedProcess]:
        return list(self._by_pid.values())

    async def shutdown(self) -> None:
        for p in self.all():
            p.send_signal(signal.SIGKILL)
        for p in self.all():
            try:
                await asyncio.wait_for(p.wait(), 2)
            except TimeoutError:
                pass


def _shell_fallback(cmd: str) -> str:
    """The SDK runs every command as `/bin/bash -l -c ...` (and PTYs as `/bin/bash -i -l`). Many
    small images (busybox, alpine) have no bash but a POSIX `/bin/sh` that takes the same flags:
    use it rather than failing, so such templates still run commands."""
    if cmd == "/bin/bash" and not os.path.exists("/bin/bash") and os.path.exists("/bin/sh"):
        return "/bin/sh"
    return cmd
