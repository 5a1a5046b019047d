"""A template with no Python, no libc and no users: only a static busybox. The agent brings its
own runtime, enters that root, creates the default user and serves processes and files there."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

import httpx
import pytest

from cube_common.procs import stop_process
from services.envd.devroot import REPO, _port_free

PORT = 49883
URL = f"http://127.0.0.1:{PORT}"


@pytest.fixture(scope="module")
def minimal_agent():
    busybox = shutil.which("busybox")
    if busybox is None or os.geteuid() != 0:
        pytest.skip("needs root and a static busybox")
    if not _port_free(PORT):
        pytest.fail(f"port {PORT} is in use")
    root = tempfile.mkdtemp(prefix="cube-envd-min-", dir="/var/tmp")
    os.chmod(root, 0o755)  # mkdtemp makes it private; a root filesystem is world-readable
    os.makedirs(f"{root}/bin")
    shutil.copy(busybox, f"{root}/bin/busybox")
    for applet in ("sh", "cat", "echo", "id", "whoami", "pwd", "ls", "sleep", "wc", "stty", "env"):
        os.symlink("busybox", f"{root}/bin/{applet}")
    # No /bin/bash: the SDK's `/bin/bash -l -c` commands run on the image's /bin/sh (busybox).
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.envd", "--root", root, "--host", "127.0.0.1",
         "--envd-port", str(PORT), "--no-interpreter", "--runtime-dir", "/run/envd"],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, "agent exited during startup"
            try:
                if httpx.get(URL + "/health").status_code == 204:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "agent did not come up"
            time.sleep(0.1)
        yield root
    finally:
        stop_process(proc, 15)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def min_sandbox(minimal_agent):
    from e2b import Sandbox

    return Sandbox.create(sandbox_url=URL)


def test_default_user_created(minimal_agent):
    with open(f"{minimal_agent}/etc/passwd") as f:
        passwd = f.read()
    assert "root:x:0:0:" in passwd and "\nuser:x:" in passwd
    assert os.path.isdir(f"{minimal_agent}/home/user")


def test_commands_run_in_the_template(min_sandbox):
    r = min_sandbox.commands.run("echo hi; whoami; pwd; ls /")
    lines = r.stdout.split()
    assert lines[:3] == ["hi", "user", "/home/user"]
    assert "bin" in lines and "work" not in lines  # the host's tree is out of sight
    assert min_sandbox.commands.run("whoami", user="root").stdout == "root\n"


def test_files_in_the_template(min_sandbox, minimal_agent):
    min_sandbox.files.write("/home/user/x/note.txt", "in the template")
    with open(f"{minimal_agent}/home/user/x/note.txt") as f:
        assert f.read() == "in the template"
    assert min_sandbox.files.read("note.txt".join(["/home/user/x/", ""])) == "in the template"
    entries = min_sandbox.files.list("/home/user/x")
    assert [(e.name, e.owner) for e in entries] == [("note.txt", "user")]


def test_pty_in_the_template(min_sandbox):
    from e2b import PtySize

    out = bytearray()
    h = min_sandbox.pty.create(PtySize(rows=12, cols=34), timeout=20)
    min_sandbox.pty.send_stdin(h.pid, b"stty size; exit\n")
    h.wait(on_pty=out.extend)
    assert b"12 34" in out


def test_every_surface_after_chroot(min_sandbox):
    """Each code path once, inside a root where a lazy import of the agent would fail."""
    from e2b import CommandExitException, NotFoundException

    fs = min_sandbox.files
    assert fs.make_dir("/home/user/d") is True
    w = fs.watch_dir("/home/user/d", recursive=True, include_entry=True)
    fs.write("/home/user/d/a.txt", b"x" * 10, gzip=True, metadata={"k": "v"})
    fs.write_files([{"path": "/home/user/d/b.txt", "data": "b"}, {"path": "/home/user/d/c.txt", "data": "c"}])
    assert fs.get_info("/home/user/d/a.txt").metadata == {"k": "v"}
    fs.rename("/home/user/d/b.txt", "/home/user/d/bb.txt")
    fs.remove("/home/user/d/c.txt")
    assert not fs.exists("/home/user/d/c.txt")
    with pytest.raises(NotFoundException):
        fs.read("/home/user/d/c.txt")
    time.sleep(0.3)
    assert {e.name for e in w.get_new_events()} >= {"a.txt", "bb.txt", "c.txt"}
    w.stop()
    assert len(fs.list("/home/user", depth=2)) >= 3
    h = min_sandbox.commands.run("cat", background=True, stdin=True)
    min_sandbox.commands.send_stdin(h.pid, "piped\n")
    min_sandbox.commands.close_stdin(h.pid)
    assert h.wait().stdout == "piped\n"
    h = min_sandbox.commands.run("sleep 30", background=True)
    assert h.pid in [p.pid for p in min_sandbox.commands.list()]
    min_sandbox.commands.kill(h.pid)
    with pytest.raises(CommandExitException):
        h.wait()
    with pytest.raises(CommandExitException):
        min_sandbox.commands.run("exit 4")
    r = httpx.post(URL + "/filesystem.Filesystem/Stat", content=b"{bad",
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert httpx.post(URL + "/init", json={"envVars": {"Z": "1"}, "timestamp": time.time()}).status_code == 204
    assert min_sandbox.commands.run("echo $Z").stdout == "1\n"
