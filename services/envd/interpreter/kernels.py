"""One Jupyter kernel process inside the template root, and the jupyter_client connection to it.

Kernels are launched here rather than through jupyter_client's KernelManager: the manager finds
kernelspecs and provisioners through entry points and data directories of the agent's own Python,
which the agent can no longer see once it is inside the template root. Messaging is still
jupyter_client's (`AsyncKernelClient`), over IPC sockets in a per-kernel directory owned by the
kernel's user, so there are no TCP port races between kernels.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import os
import shutil
import signal
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
    BASH = "bash"

    @classmethod
    def parse(cls, raw: str | None) -> Language:
        name = (raw or "python").strip().lower()
        name = {"js": "javascript", "node": "javascript", "python3": "python", "py": "python",
                "sh": "bash", "shell": "bash"}.get(name, name)
        try:
            return cls(name)
        except ValueError as e:
            raise UnsupportedLanguage(raw or "") from e


class UnsupportedLanguage(ValueError):
    pass


class KernelStartError(RuntimeError):
    pass


@dataclass(frozen=True)
class KernelLaunch:
    """How to start kernels inside the root."""

    kernel_python: str
    runtime_dir: str
    js_kernel_path: str

    def argv(self, language: Language, connection_file: str) -> list[str]:
        py = self.kernel_python
        if language is Language.PYTHON:
            # IPython's history database: a SQLite write (and fsync) from a background thread after
            # every cell, which under TCG made each cell ~20 ms and the second one ~120 ms slower.
            # In, Out, _i<n> and %history for the running session live in memory and still work.
            return [py, "-m", "ipykernel_launcher", "-f", connection_file, "--HistoryManager.enabled=False"]
        if language is Language.BASH:
            return [py, "-m", "bash_kernel", "-f", connection_file]
        return [py, self.js_kernel_path, "-f", connection_file]


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

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _connection_info(self) -> dict:
        return {
            "transport": "ipc",
            "ip": os.path.join(self.dir, "k"),
            "shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4, "hb_port": 5,
            "key": uuid.uuid4().hex,
            "signature_scheme": "hmac-sha256",
            "kernel_name": self.language.value,
        }

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

    def interrupt(self) -> None:
        if self.alive():
            assert self.proc is not None
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
