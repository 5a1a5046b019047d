"""cube_common.procs: SIGTERM, a grace period, then SIGKILL, for children and for other processes."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time

from cube_common.procs import Stopped, stop_async_process, stop_pid, stop_process

# A child that says it is ready (so its signal handler is installed) and then sleeps.
_SLEEPER = "import signal, sys, time\n{setup}\nprint('ready', flush=True)\ntime.sleep(60)\n"
_IGNORES_TERM = "signal.signal(signal.SIGTERM, signal.SIG_IGN)"


def _start(ignore_term: bool = False) -> subprocess.Popen:
    code = _SLEEPER.format(setup=_IGNORES_TERM if ignore_term else "")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_a_process_that_obeys_sigterm_exits_within_the_grace():
    proc = _start()
    assert stop_process(proc, 10) is Stopped.EXITED
    assert proc.returncode == -15


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace():
    proc = _start(ignore_term=True)
    started = time.monotonic()
    assert stop_process(proc, 0.5) is Stopped.KILLED
    assert proc.returncode == -9 and time.monotonic() - started >= 0.5


def test_an_exited_process_is_left_alone():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert stop_process(proc, 1) is Stopped.ALREADY


def test_async_process():
    async def run() -> tuple[Stopped, Stopped, Stopped]:
        code = _SLEEPER.format(setup=_IGNORES_TERM)
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE)
        assert proc.stdout is not None and (await proc.stdout.readline()).strip() == b"ready"
        killed = await stop_async_process(proc, 0.3)
        again = await stop_async_process(proc, 0.3)
        polite = await asyncio.create_subprocess_exec(sys.executable, "-c", _SLEEPER.format(setup=""),
                                                      stdout=asyncio.subprocess.PIPE)
        assert polite.stdout is not None and (await polite.stdout.readline()).strip() == b"ready"
        return killed, again, await stop_async_process(polite, 10)

    assert asyncio.run(run()) == (Stopped.KILLED, Stopped.ALREADY, Stopped.EXITED)


def test_stop_pid_of_a_process_that_is_not_waited_for():
    # Children here, but reaped by threads of their own as their real parent would: stop_pid only
    # signals and polls.
    obeys, ignores = _start(), _start(ignore_term=True)
    try:
        for p in (obeys, ignores):
            threading.Thread(target=p.wait, daemon=True).start()
        assert stop_pid(obeys.pid, 10, poll=0.02) is Stopped.EXITED
        assert stop_pid(ignores.pid, 0.3, poll=0.02) is Stopped.KILLED
        ignores.wait(10)
        assert ignores.returncode == -9
    finally:
        for p in (obeys, ignores):
            if p.poll() is None:
                p.kill()


def test_stop_pid_of_a_child_of_ours_that_nobody_waits_for():
    # A child this process started and let go of, as deploy.cluster.up does with the cluster's
    # supervisor: once it exits it is a zombie, which signal 0 still reaches, until it is reaped.
    # It exited, so stop_pid says so at once, not after the whole grace (180 s for the cluster).
    obeys, ignores = _start(), _start(ignore_term=True)
    try:
        started = time.monotonic()
        assert stop_pid(obeys.pid, 30, poll=0.02) is Stopped.EXITED
        assert time.monotonic() - started < 10
        assert obeys.wait(10) == -15
        # A live child that ignores SIGTERM is still there after the grace, and is killed.
        started = time.monotonic()
        assert stop_pid(ignores.pid, 0.3, poll=0.02) is Stopped.KILLED
        assert time.monotonic() - started >= 0.3
        assert ignores.wait(10) == -9
    finally:
        for p in (obeys, ignores):
            if p.poll() is None:
                p.kill()


def test_stop_pid_of_no_such_process():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid is free (and not reused this soon)
    assert stop_pid(proc.pid, 1) is Stopped.ALREADY
