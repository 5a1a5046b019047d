"""One Jupyter kernel process inside the template root, and the jupyter_client connection to it.

Kernels are launched here rather than through jupyter_client's KernelManager: the manager finds
kernelspecs and provisioners through entry points and data directories of the agent's own Python,
which the agent can no longer see once it is inside the template root. Messaging is still
jupyter_client's (`AsyncKernelClient`).

One kernel per language family, each a real Jupyter kernel: ipykernel (python), bash_kernel,
Deno's own (`deno jupyter`: javascript and typescript, as E2B serves both, with ES modules and
top-level await), IRkernel (r) and JJava (java, JShell in the kernel's JVM). Python and bash talk
over IPC sockets in the kernel's directory (owned by its user); Deno and JJava only speak TCP, so
those kernels (and R, for one code path) get five free ports on the guest's loopback, which nobody
outside the guest can reach; the kernel's HMAC key is in its 0600 connection file either way.

A language whose runtime the root lacks (a template without Java, say) is refused when a context
asks for it, with a message naming what is missing, never by a kernel that fails to start.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import uuid
from dataclasses import dataclass
from queue import Empty

from jupyter_client.asynchronous.client import AsyncKernelClient

from ..users import User

log = logging.getLogger("envd.kernels")

KERNEL_READY_TIMEOUT_S = 120.0


class Language(enum.Enum):
    PYTHON = "python"
    JAVASCRIPT = "javascript"
    TYPESCRIPT = "typescript"
    R = "r"
    JAVA = "java"
    BASH = "bash"

    @classmethod
    def parse(cls, raw: str | None) -> Language:
        name = (raw or "python").strip().lower()
        name = _ALIASES.get(name, name)
        try:
            return cls(name)
        except ValueError as e:
            raise UnsupportedLanguage(raw or "") from e


_ALIASES = {"js": "javascript", "node": "javascript", "deno": "typescript", "ts": "typescript",
            "python3": "python", "py": "python", "sh": "bash", "shell": "bash", "ir": "r"}
# The default contexts the agent starts at boot, as E2B's interpreter does; the host starts the
# others' for the default template's snapshot (cubelet templates._settle).
BOOT_LANGUAGES = (Language.PYTHON, Language.JAVASCRIPT)
# Deno's kernel is the runtime of both (E2B, too, serves typescript with its javascript kernel).
DENO_LANGUAGES = (Language.JAVASCRIPT, Language.TYPESCRIPT)
# Kernels that only bind TCP (Deno's and JJava's ZeroMQ); R takes either, and TCP keeps one path.
TCP_LANGUAGES = (Language.JAVASCRIPT, Language.TYPESCRIPT, Language.R, Language.JAVA)
# Kernels whose runtime ends on SIGINT (Deno) or ignores it (the JVM): they are interrupted with
# Jupyter's interrupt_request on the control channel (their kernelspecs' interrupt_mode "message").
MESSAGE_INTERRUPT = (Language.JAVASCRIPT, Language.TYPESCRIPT, Language.JAVA)


class UnsupportedLanguage(ValueError):
    pass


class LanguageUnavailable(ValueError):
    """A language Cube serves whose runtime this template's root does not have."""


class KernelStartError(RuntimeError):
    pass


@dataclass(frozen=True)
class KernelLaunch:
    """How to start kernels inside the root: each runtime's path there (a bare name is looked up
    on the root's PATH)."""

    kernel_python: str
    runtime_dir: str
    deno: str = "deno"
    r: str = "R"
    java: str = "java"
    java_kernel_jar: str = "/usr/local/share/jupyter/kernels/java/jjava.jar"
    # JJava evaluates cells with JShell inside its own JVM, which needs jdk.jshell opened to it (its
    # launcher jar would add that by starting a second JVM); java.lang is opened for the reseed of
    # Math.random (snippets.py). The JVM is sized for an idle sandbox: one compiler tier and
    # thread, the serial collector, no perf-data file (a periodic writer), and a heap ceiling
    # well inside a sandbox's memory.
    java_options: tuple[str, ...] = ("--add-opens", "jdk.jshell/jdk.jshell=ALL-UNNAMED",
                                     "--add-opens", "java.base/java.lang=ALL-UNNAMED",
                                     "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-XX:CICompilerCount=1",
                                     "-XX:-UsePerfData", "-Xss1m", "-XX:MaxRAMPercentage=50")

    def executable(self, language: Language) -> str:
        if language is Language.PYTHON or language is Language.BASH:
            return self.kernel_python
        if language in DENO_LANGUAGES:
            return self.deno
        return self.r if language is Language.R else self.java

    def missing(self, language: Language) -> str | None:
        """What the root lacks to run this language's kernel, or None. Looked up where the kernel
        will run, so call it once the agent is inside the root."""
        exe = self.executable(language)
        if not (os.access(exe, os.X_OK) if os.sep in exe else shutil.which(exe)):
            return exe
        if language is Language.JAVA and not os.access(self.java_kernel_jar, os.R_OK):
            return self.java_kernel_jar
        return None

    def argv(self, language: Language, connection_file: str) -> list[str]:
        py = self.kernel_python
        if language is Language.PYTHON:
            # IPython's history database: a SQLite write (and fsync) from a background thread after
            # every cell, which under TCG made each cell ~20 ms and the second one ~120 ms slower.
            # In, Out, _i<n> and %history for the running session live in memory and still work.
            return [py, "-m", "ipykernel_launcher", "-f", connection_file, "--HistoryManager.enabled=False"]
        if language is Language.BASH:
            return [py, "-m", "bash_kernel", "-f", connection_file]
        if language in DENO_LANGUAGES:
            return [self.deno, "jupyter", "--kernel", "--conn", connection_file]
        if language is Language.R:
            return [self.r, "--slave", "-e", "IRkernel::main()", "--args", connection_file]
        return [self.java, *self.java_options, "-jar", self.java_kernel_jar, connection_file]


def _free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (bound and released: the kernel binds them next)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Kernel:
    def __init__(self, language: Language, launch: KernelLaunch, user: User, cwd: str,
                 env: dict[str, str]) -> None:
        self.language = language
        self.launch = launch
        self.user = user
        self.cwd = cwd
        self.env = env
        self.id = uuid.uuid4().hex
        self.dir = os.path.join(launch.runtime_dir, "kernels", self.id)
        self.proc: subprocess.Popen | None = None
        self.client: AsyncKernelClient | None = None
        self.frozen = False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_status(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def _connection_info(self) -> dict:
        names = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
        if self.language in TCP_LANGUAGES:
            where = {"transport": "tcp", "ip": "127.0.0.1", **dict(zip(names, _free_ports(5), strict=True))}
        else:
            where = {"transport": "ipc", "ip": os.path.join(self.dir, "k"), **{n: i + 1 for i, n in enumerate(names)}}
        return {**where, "key": uuid.uuid4().hex, "signature_scheme": "hmac-sha256",
                "kernel_name": self.language.value}

    def _spawn(self) -> dict:
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        os.chown(self.dir, self.user.uid, self.user.gid)
        info = self._connection_info()
        conn = os.path.join(self.dir, "connection.json")
        fd = os.open(conn, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(info, f)
        os.chown(conn, self.user.uid, self.user.gid)
        logf = open(os.path.join(self.dir, "kernel.log"), "ab")
        ids: dict = {}
        if os.geteuid() == 0 and self.user.uid != 0:
            ids = {"user": self.user.uid, "group": self.user.gid, "extra_groups": list(self.user.groups)}
        cwd = self.cwd if os.path.isdir(self.cwd) else "/"
        try:
            self.proc = subprocess.Popen(
                self.launch.argv(self.language, conn), env=self.env, cwd=cwd,
                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True,
                close_fds=True, **ids,
            )
        except OSError as e:
            raise KernelStartError(f"cannot start the {self.language.value} kernel: {e}") from e
        finally:
            logf.close()
        return info

    def _log_tail(self) -> str:
        try:
            with open(os.path.join(self.dir, "kernel.log"), "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 2000))
                return f.read().decode("utf-8", "replace").strip()
        except OSError:
            return ""

    async def start(self) -> None:
        info = self._spawn()
        client = AsyncKernelClient()
        client.load_connection_info(info)
        client.start_channels(hb=False)
        self.client = client
        try:
            await self._wait_ready(KERNEL_READY_TIMEOUT_S)
        except BaseException:
            await self.stop()
            raise
        log.info("kernel ready", extra={"kernel": self.id, "language": self.language.value,
                                        "pid": self.proc.pid if self.proc else None})

    async def _wait_ready(self, timeout: float) -> None:
        """Any kernel_info reply on shell, then any message on iopub: only then is the iopub
        subscription known to be live (earlier output would be lost). Requests are resent
        sparingly: a slow-starting kernel answering a backlog of them would never catch up."""
        assert self.client is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        next_request = 0.0
        while True:
            if not self.alive():
                raise KernelStartError(
                    f"the {self.language.value} kernel exited during startup: {self._log_tail()[-800:]}")
            if loop.time() > deadline:
                raise KernelStartError(f"the {self.language.value} kernel did not answer in {timeout:.0f}s")
            if loop.time() >= next_request:
                self.client.kernel_info()
                next_request = loop.time() + 5.0
            try:
                reply = await self.client.get_shell_msg(timeout=0.5)
            except Empty:
                continue
            if reply.get("msg_type") != "kernel_info_reply":
                continue
            try:
                await self.client.get_iopub_msg(timeout=1.0)
            except Empty:
                next_request = 0.0
                continue
            break
        while True:  # flush startup chatter and stale replies
            try:
                await self.client.get_iopub_msg(timeout=0.1)
            except Empty:
                break
        while True:
            try:
                await self.client.get_shell_msg(timeout=0.05)
            except Empty:
                return

    def freeze(self) -> None:
        """Stop the kernel's processes (SIGSTOP): an idle kernel nobody has used yet then costs no
        CPU at all, where JJava alone polls its sockets ~45 times a second. Its sockets keep
        what arrives meanwhile; `thaw` resumes it."""
        if self.alive() and not self.frozen:
            assert self.proc is not None
            try:
                os.killpg(self.proc.pid, signal.SIGSTOP)
                self.frozen = True
            except (ProcessLookupError, PermissionError):
                pass

    def thaw(self) -> None:
        if self.frozen and self.proc is not None:
            self.frozen = False
            try:
                os.killpg(self.proc.pid, signal.SIGCONT)
            except (ProcessLookupError, PermissionError):
                pass

    def interrupt(self) -> None:
        if not self.alive():
            return
        assert self.proc is not None
        if self.language in MESSAGE_INTERRUPT:
            if self.client is not None:
                self.client.control_channel.send(self.client.session.msg("interrupt_request", {}))
            return
        try:
            os.killpg(self.proc.pid, signal.SIGINT)
        except (ProcessLookupError, PermissionError):
            pass

    async def stop(self) -> None:
        if self.client is not None:
            try:
                self.client.stop_channels()
            except Exception:
                pass
            self.client = None
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            loop = asyncio.get_running_loop()
            try:
                await asyncio.wait_for(loop.run_in_executor(None, self.proc.wait), 5)
            except TimeoutError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)
