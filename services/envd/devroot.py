"""Running the agent on a developer's host: a throwaway overlay of `/` as the template root.

Used by the tests, the benchmark and `scripts/envd_dev.sh` (`python -m services.envd.devroot`).
The overlay's lower layer is the host's `/` and its upper layer a temporary directory, so the
agent (and the users, processes and kernels it creates) change nothing on the host. Needs root.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field

from cube_common.envd import ENVD_PORT, INTERPRETER_PORT
from cube_common.procs import stop_process

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MNT_DETACH = 2


class PortBusy(RuntimeError):
    pass


def _port_free(port: int) -> bool:
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        s = socket.socket(family, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
        except OSError as e:
            if family == socket.AF_INET6 and e.errno == 99:  # no IPv6 loopback here
                continue
            return False
        finally:
            s.close()
    return True


def _umount(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(path.encode(), 0) != 0:
        libc.umount2(path.encode(), MNT_DETACH)


@dataclass
class DevRoot:
    envd_port: int = ENVD_PORT
    interpreter_port: int = INTERPRETER_PORT
    kernel_python: str = os.path.join(REPO, ".venv", "bin", "python")
    # The venv's Deno and JJava (requirements.lock); R and Java come from the host, if it has them.
    deno: str = os.path.join(REPO, ".venv", "bin", "deno")
    java_kernel_jar: str = os.path.join(REPO, ".venv", "share", "jupyter", "kernels", "java", "jjava.jar")
    extra_args: list[str] = field(default_factory=list)
    log_path: str | None = None
    tmp: str = ""
    root: str = ""
    proc: subprocess.Popen | None = None

    def __enter__(self) -> DevRoot:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, ready_timeout: float = 60.0) -> None:
        if os.geteuid() != 0:
            raise PermissionError("the dev root needs root (overlay mount, chroot)")
        for port in (self.envd_port, self.interpreter_port):
            if not _port_free(port):
                raise PortBusy(f"port {port} is in use; stop whatever listens there (another envd?)")
        self.tmp = tempfile.mkdtemp(prefix="cube-envd-", dir="/var/tmp")
        upper, work, self.root = (os.path.join(self.tmp, d) for d in ("upper", "work", "root"))
        for d in (upper, work, self.root):
            os.mkdir(d)
        subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir=/,upperdir={upper},workdir={work}", self.root],
            check=True,
        )
        try:
            # The kernels run as `user`; the venv's interpreter lives under /root on this host.
            os.chmod(os.path.join(self.root, "root"), 0o711)
            self._spawn()
            self._wait_ready(ready_timeout)
        except BaseException:
            self.stop()
            raise

    def _spawn(self) -> None:
        # A fresh /tmp in the root, unless this checkout (and so the kernels' interpreter) lives
        # under /tmp: a tmpfs there would hide it. The overlay keeps writes off the host anyway.
        under_tmp = any(os.path.realpath(p).startswith("/tmp/") for p in (REPO, self.kernel_python))
        cmd = [
            sys.executable, "-m", "services.envd", "--root", self.root, "--host", "127.0.0.1,::1",
            "--envd-port", str(self.envd_port), "--interpreter-port", str(self.interpreter_port),
            "--kernel-python", self.kernel_python, "--deno", self.deno, "--java-kernel-jar", self.java_kernel_jar,
            *([] if under_tmp else ["--tmpfs-tmp"]), *self.extra_args,
        ]
        out = open(self.log_path, "ab") if self.log_path else None
        env = dict(os.environ, PYTHONPATH=REPO)
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=out)
        if out:
            out.close()

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.envd_port}/health"
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"envd exited during startup (status {self.proc and self.proc.returncode})")
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 204:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"envd did not answer {url} in {timeout}s")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _leftover_pids(self) -> list[int]:
        pids = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                if os.readlink(f"/proc/{d}/root").startswith(self.root):
                    pids.append(int(d))
            except OSError:
                continue
        return pids

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 15)
        self.proc = None
        if self.root:
            for pid in self._leftover_pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            for _ in range(50):
                if not self._leftover_pids():
                    break
                time.sleep(0.1)
            if os.path.ismount(self.root):
                _umount(self.root)
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = ""


def main() -> None:
    p = argparse.ArgumentParser(description="Run envd in the foreground over a throwaway overlay of /.")
    p.add_argument("extra", nargs="*", help="extra agent flags (after --)")
    a = p.parse_args()
    dev = DevRoot(extra_args=a.extra)
    stopping = False

    def on_signal(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        dev.start()
        print(f"envd on http://localhost:{dev.envd_port} and :{dev.interpreter_port} "
              f"(root {dev.root}); Ctrl-C stops it. Try: E2B_DEBUG=true E2B_API_KEY=x python ...",
              file=sys.stderr, flush=True)
        while not stopping and dev.proc is not None and dev.proc.poll() is None:
            time.sleep(0.2)
    finally:
        dev.stop()


if __name__ == "__main__":
    main()
