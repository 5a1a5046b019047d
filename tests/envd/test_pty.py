"""Interactive terminals: create, input, resize, kill."""

from __future__ import annotations

import threading
import time

from e2b import CommandExitException, PtySize


def _collector():
    buf = bytearray()
    lock = threading.Lock()

    def on_data(data: bytes):
        with lock:
            buf.extend(data)

    def text():
        with lock:
            return buf.decode("utf-8", "replace")

    return on_data, text


def _wait_for(text, needle: str, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in text():
            return text()
        time.sleep(0.05)
    raise AssertionError(f"{needle!r} not in terminal output: {text()[-500:]!r}")


def test_pty_input_resize_and_kill(sandbox):
    on_data, text = _collector()
    h = sandbox.pty.create(PtySize(rows=24, cols=80), timeout=0)
    t = threading.Thread(target=lambda: _wait_quietly(h, on_data), daemon=True)
    t.start()
    sandbox.pty.send_stdin(h.pid, b"tty; echo marker-$((6*7))\n")
    out = _wait_for(text, "marker-42")
    assert "/dev/pts/" in out
    sandbox.pty.send_stdin(h.pid, b"stty size\n")
    _wait_for(text, "24 80")
    sandbox.pty.resize(h.pid, PtySize(rows=40, cols=100))
    sandbox.pty.send_stdin(h.pid, b"stty size\n")
    _wait_for(text, "40 100")
    assert sandbox.pty.kill(h.pid) is True
    t.join(10)
    assert not t.is_alive()


def _wait_quietly(handle, on_pty):
    try:
        handle.wait(on_pty=on_pty)
    except CommandExitException:
        pass


def test_pty_exit_code_and_env(sandbox):
    on_data, text = _collector()
    h = sandbox.pty.create(PtySize(rows=10, cols=50), envs={"GREETING": "hola"}, timeout=30)
    sandbox.pty.send_stdin(h.pid, b"echo $GREETING $TERM; exit 3\n")
    try:
        h.wait(on_pty=on_data)
        raise AssertionError("exit 3 should raise")
    except CommandExitException as e:
        assert e.exit_code == 3
    assert "hola xterm-256color" in text()
