"""Processes through the unmodified SDK: output, exit codes, background + connect, stdin, kill,
env, cwd, users."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from e2b import CommandExitException, TimeoutException


def test_stdout_stderr_and_exit_code(sandbox):
    r = sandbox.commands.run("echo out; echo err >&2")
    assert (r.stdout, r.stderr, r.exit_code) == ("out\n", "err\n", 0)
    with pytest.raises(CommandExitException) as ei:
        sandbox.commands.run("echo partial; exit 7")
    assert ei.value.exit_code == 7
    assert ei.value.stdout == "partial\n"
    assert ei.value.error == "exit status 7"


def test_default_user_home_and_root(sandbox):
    r = sandbox.commands.run("whoami; pwd; echo $HOME")
    assert r.stdout.split() == ["user", "/home/user", "/home/user"]
    r = sandbox.commands.run("whoami; id -u", user="root")
    assert r.stdout.split() == ["root", "0"]


def test_env_and_cwd(sandbox):
    r = sandbox.commands.run("echo $A-$B; pwd", envs={"A": "1", "B": "two words"}, cwd="/tmp")
    assert r.stdout == "1-two words\n/tmp\n"


def test_missing_cwd_is_an_error(sandbox):
    from e2b import InvalidArgumentException

    with pytest.raises(InvalidArgumentException):
        sandbox.commands.run("true", cwd="/does/not/exist")


def test_large_output_is_complete(sandbox):
    r = sandbox.commands.run("head -c 3000000 /dev/zero | tr '\\0' 'x'")
    assert len(r.stdout) == 3_000_000


def test_background_disconnect_and_connect(sandbox, agent):
    h = sandbox.commands.run("for i in 1 2 3 4 5 6; do echo tick$i; sleep 0.5; done", background=True)
    pid = h.pid
    assert pid in [p.pid for p in sandbox.commands.list()]
    logged_before = Path(agent.log_path).read_text()
    h.disconnect()
    time.sleep(1.2)
    # A client leaving a stream is not the agent's error: nothing logged as one.
    logged = Path(agent.log_path).read_text()[len(logged_before):]
    assert "Error handling request" not in logged and "Traceback" not in logged, logged
    # The process kept running without a client; a new stream sees its later output and end.
    h2 = sandbox.commands.connect(pid)
    r = h2.wait()
    assert r.exit_code == 0
    assert "tick6" in r.stdout
    assert pid not in [p.pid for p in sandbox.commands.list()]


def test_list_reports_config_and_tag(sandbox):
    h = sandbox.commands.run("sleep 30", background=True, envs={"K": "V"}, cwd="/tmp")
    try:
        [info] = [p for p in sandbox.commands.list() if p.pid == h.pid]
        assert info.cmd == "/bin/bash"
        assert info.args[-1] == "sleep 30"
        assert info.envs.get("K") == "V"
        assert info.cwd == "/tmp"
    finally:
        assert sandbox.commands.kill(h.pid) is True


def test_stdin_send_and_close(sandbox):
    h = sandbox.commands.run("cat", background=True, stdin=True)
    sandbox.commands.send_stdin(h.pid, "hello ")
    sandbox.commands.send_stdin(h.pid, b"world\n")
    sandbox.commands.close_stdin(h.pid)
    r = h.wait()
    assert r.stdout == "hello world\n"


def test_stream_input(sandbox):
    h = sandbox.commands.run("wc -c", background=True, stdin=True)
    sandbox.commands.stream_input(h.pid, iter([b"abc", "def", b"\n"]))
    sandbox.commands.close_stdin(h.pid)
    assert h.wait().stdout.strip() == "7"


def test_kill(sandbox):
    h = sandbox.commands.run("sleep 60", background=True)
    assert sandbox.commands.kill(h.pid) is True
    with pytest.raises(CommandExitException) as ei:
        h.wait()
    assert ei.value.exit_code == -1
    assert ei.value.error is not None and "killed" in ei.value.error
    assert sandbox.commands.kill(h.pid) is False  # gone: not_found maps to False


def test_kill_takes_the_whole_command(sandbox):
    h = sandbox.commands.run("sleep 100 & sleep 101; wait", background=True)
    time.sleep(0.5)
    sandbox.commands.kill(h.pid)
    with pytest.raises(CommandExitException):
        h.wait()
    r = sandbox.commands.run("pgrep -x sleep -a || true", user="root")
    assert "sleep 100" not in r.stdout and "sleep 101" not in r.stdout


def test_timeout_kills_the_command(sandbox):
    start = time.monotonic()
    with pytest.raises(TimeoutException):
        sandbox.commands.run("sleep 30; echo never", timeout=1.5)
    assert time.monotonic() - start < 10
    time.sleep(0.3)
    assert not [p for p in sandbox.commands.list() if "sleep 30" in " ".join(p.args)]


def test_callbacks_stream_output(sandbox):
    seen: list[str] = []
    sandbox.commands.run("echo a; sleep 0.2; echo b >&2", on_stdout=seen.append, on_stderr=seen.append)
    assert seen == ["a\n", "b\n"]


async def test_async_sandbox_commands(agent):
    from e2b import AsyncSandbox

    sbx = await AsyncSandbox.create()
    r = await sbx.commands.run("echo async; whoami", user="root")
    assert r.stdout == "async\nroot\n"
    h = await sbx.commands.run("sleep 0.3; echo bg", background=True)
    assert (await h.wait()).stdout == "bg\n"


async def test_concurrent_calls(agent):
    import asyncio

    from e2b import AsyncSandbox

    sbx = await AsyncSandbox.create()
    results = await asyncio.gather(*[
        sbx.commands.run(f"sleep 0.2; echo {i}") for i in range(20)
    ])
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(20)]
