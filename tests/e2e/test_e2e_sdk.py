"""The unmodified Python SDKs (`e2b` 2.63.0, `e2b_code_interpreter` 2.11.5) against the node that
`make up` brought up, configured only by the environment `make env` prints."""
from __future__ import annotations

import asyncio
import base64
import os
import re
import time

import pytest
from e2b import CommandExitException, NotFoundException, SandboxNotFoundException, SandboxQuery, SandboxState
from e2b_code_interpreter import AsyncSandbox, Sandbox

from tests.e2e import cluster
from tests.e2e.run import RUN_ID, tag
from tests.support.prometheus import scrape


def assert_gone(sid: str, timeout: float = 30.0) -> None:
    """Killed/expired means gone everywhere: API, etcd, VM, cubelet and CubeVS state."""
    with pytest.raises(SandboxNotFoundException):
        Sandbox.get_info(sid)
    cluster.wait_until(lambda: not cluster.traces_of(sid), timeout, what=f"{sid} gone everywhere")


def test_sync_create_run_code_kill(sandboxes):
    sbx = sandboxes.create({"case": "sync"})
    sid = sbx.sandbox_id
    assert sid.isalnum() and sid.islower() and len(sid) >= 16
    assert sbx.sandbox_domain == "cube.localhost"
    info = sbx.get_info()
    assert info.state == SandboxState.RUNNING and info.template_id == "code-interpreter"
    assert info.metadata == tag({"case": "sync"})
    assert info.end_at > info.started_at
    ex = sbx.run_code("print('hello from cube')")
    assert ex.error is None and ex.logs.stdout == ["hello from cube\n"] and ex.logs.stderr == []
    # The sandbox really is a VM of its own: its QEMU runs, its route is in etcd.
    vm = next(v for v in cluster.vms().values() if v.sandbox_id == sid)
    assert vm.alive and vm.tap in cluster.taps()
    assert cluster.etcd_routes()[sid]["state"] == "ROUTE_STATE_RUNNING"
    assert sbx.kill() is True
    assert_gone(sid)
    assert Sandbox.kill(sid) is False  # kill twice: the second finds nothing


def test_return_values(sandboxes):
    sbx = sandboxes.create()
    assert sbx.run_code("1 + 1").text == "2"
    assert sbx.run_code("'a' * 3").text == "aaa"
    ex = sbx.run_code("{'k': [1, 2.5, None]}")
    assert ex.text == "{'k': [1, 2.5, None]}" and ex.results[0].is_main_result
    ex = sbx.run_code("import sys\nprint('out'); print('err', file=sys.stderr)\n42")
    assert ex.logs.stdout == ["out\n"] and ex.logs.stderr == ["err\n"] and ex.text == "42"
    ex = sbx.run_code("def f(x):\n    return x / 0\nf(7)")
    assert ex.error is not None and ex.error.name == "ZeroDivisionError" and "division by zero" in ex.error.value
    plain = re.sub(r"\x1b\[[0-9;]*m", "", ex.error.traceback)  # Jupyter colours it, as on E2B
    assert "f(7)" in plain and "return x / 0" in plain and ex.results == []
    ex = sbx.run_code("import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})")
    assert ex.error is None and "<table" in ex.results[0].html and ">y<" in ex.results[0].html
    ex = sbx.run_code("import matplotlib.pyplot as plt\nplt.plot([3, 1, 2])\nplt.show()")
    pngs = [r.png for r in ex.results if r.png]
    assert ex.error is None and len(pngs) == 1 and base64.b64decode(pngs[0]).startswith(b"\x89PNG\r\n\x1a\n")
    seen = []
    ex = sbx.run_code("for i in range(3):\n    print(i, flush=True)", on_stdout=lambda m: seen.append(m.line))
    assert "".join(seen).split() == ["0", "1", "2"]
    ex = sbx.run_code("N=20; echo $((N+22))", language="bash")
    assert ex.error is None and "42" in "".join(ex.logs.stdout)
    ex = sbx.run_code("[1, 2, 3].map(v => v * 2)", language="javascript")
    assert ex.text == "[ 2, 4, 6 ]"


def test_commands(sandboxes):
    sbx = sandboxes.create()
    r = sbx.commands.run("echo hi; echo oops >&2; id -un; pwd")
    assert r.exit_code == 0 and r.stdout.split() == ["hi", "user", "/home/user"] and r.stderr == "oops\n"
    with pytest.raises(CommandExitException) as ei:
        sbx.commands.run("exit 3")
    assert ei.value.exit_code == 3
    r = sbx.commands.run("echo $GREETING-$PWD", envs={"GREETING": "hello"}, cwd="/tmp")
    assert r.stdout.strip() == "hello-/tmp"
    assert sbx.commands.run("id -u", user="root").stdout.strip() == "0"
    lines: list[str] = []
    sbx.commands.run("for i in 1 2 3; do echo line$i; done", on_stdout=lines.append)
    assert "".join(lines).split() == ["line1", "line2", "line3"]
    h = sbx.commands.run("sleep 600", background=True)
    assert any(p.pid == h.pid for p in sbx.commands.list())
    assert h.kill() is True
    deadline = time.monotonic() + 10
    while any(p.pid == h.pid for p in sbx.commands.list()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(p.pid == h.pid for p in sbx.commands.list())
    # Env vars given at create time reach commands and the kernel.
    sbx2 = sandboxes.create(envs={"CUBE_E2E": RUN_ID})
    assert sbx2.commands.run("echo $CUBE_E2E").stdout.strip() == RUN_ID
    assert sbx2.run_code("import os\nos.environ['CUBE_E2E']").text == RUN_ID


def test_files(sandboxes):
    sbx = sandboxes.create()
    info = sbx.files.write("/home/user/dir/a.txt", "alpha")
    assert info.path == "/home/user/dir/a.txt"
    assert sbx.files.read("/home/user/dir/a.txt") == "alpha"
    blob = os.urandom(1 << 20)
    sbx.files.write("/home/user/dir/blob.bin", blob)
    assert bytes(sbx.files.read("/home/user/dir/blob.bin", format="bytes")) == blob
    assert sbx.commands.run("sha256sum /home/user/dir/blob.bin").stdout.split()[0] == __import__(
        "hashlib").sha256(blob).hexdigest()
    sbx.files.write_files([{"path": "/home/user/dir/b.txt", "data": "beta"},
                           {"path": "/home/user/dir/sub/c.txt", "data": b"gamma"}])
    names = sorted(e.name for e in sbx.files.list("/home/user/dir"))
    assert names == ["a.txt", "b.txt", "blob.bin", "sub"]
    assert sbx.files.exists("/home/user/dir/sub/c.txt") and not sbx.files.exists("/home/user/nope")
    assert sbx.files.make_dir("/home/user/made") is True
    sbx.files.rename("/home/user/dir/b.txt", "/home/user/made/b2.txt")
    assert sbx.files.read("/home/user/made/b2.txt") == "beta" and not sbx.files.exists("/home/user/dir/b.txt")
    sbx.files.remove("/home/user/dir/a.txt")
    with pytest.raises(NotFoundException):
        sbx.files.read("/home/user/dir/a.txt")
    # Written through the file API, seen by code and commands alike, owned by the user.
    assert sbx.run_code("open('/home/user/dir/sub/c.txt').read()").text == "gamma"
    assert sbx.commands.run("stat -c %U /home/user/made/b2.txt").stdout.strip() == "user"


def test_multi_turn_state_with_pandas(sandboxes):
    sbx = sandboxes.create()
    assert sbx.run_code("import pandas as pd\ndf = pd.DataFrame({'x': range(10)})\nlen(df)").text == "10"
    assert sbx.run_code("df['y'] = df['x'] ** 2\nint(df['y'].sum())").text == "285"
    sbx.files.write("/home/user/extra.csv", "x,y\n10,100\n11,121\n")
    ex = sbx.run_code("df = pd.concat([df, pd.read_csv('/home/user/extra.csv')], ignore_index=True)\n"
                      "df.shape")
    assert ex.text == "(12, 2)"
    assert sbx.run_code("int(df.loc[df.x > 9, 'y'].sum())").text == "221"
    ctx = sbx.create_code_context()
    assert sbx.run_code("'df' in globals()", context=ctx).text == "False"  # a new context is fresh
    assert sbx.run_code("'df' in globals()").text == "True"


async def test_async_create_run_code_kill(sandboxes):
    sbx = await sandboxes.acreate({"case": "async"})
    ex = await sbx.run_code("x = 41\nx + 1")
    assert ex.text == "42"
    r = await sbx.commands.run("echo async")
    assert r.stdout == "async\n"
    await sbx.files.write("/home/user/async.txt", "a")
    assert await sbx.files.read("/home/user/async.txt") == "a"
    assert (await sbx.get_info()).metadata == tag({"case": "async"})
    assert await sbx.kill() is True
    assert await AsyncSandbox.kill(sbx.sandbox_id) is False
    await asyncio.to_thread(assert_gone, sbx.sandbox_id)


async def test_ten_concurrent_async_sandboxes(sandboxes):
    n = 10

    async def one(i: int):
        sbx = await sandboxes.acreate({"case": "concurrent", "i": str(i)})
        ex = await sbx.run_code(f"v = {i} * 1000\nv + 1")
        await sbx.files.write("/home/user/who.txt", str(i))
        r = await sbx.commands.run("cat /home/user/who.txt")
        return sbx, ex.text, r.stdout

    t0 = time.monotonic()
    results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), 400)
    elapsed = time.monotonic() - t0
    ids = [s.sandbox_id for s, _, _ in results]
    assert len(set(ids)) == n
    for i, (_sbx, text, out) in enumerate(results):
        assert text == str(i * 1000 + 1) and out == str(i)
    # All ten are VMs of their own, listed by the API with their metadata.
    listed = Sandbox.list(query=SandboxQuery(metadata=tag({"case": "concurrent"}))).next_items()
    assert sorted(s.sandbox_id for s in listed) == sorted(ids)
    assert sorted(int(s.metadata["i"]) for s in listed) == list(range(n))
    running_vms = {v.sandbox_id for v in cluster.vms().values() if v.alive}
    assert set(ids) <= running_vms
    # Each sees only its own state.
    texts = await asyncio.gather(*(s.run_code("v") for s, _, _ in results))
    assert [t.text for t in texts] == [str(i * 1000) for i in range(n)]
    killed = await asyncio.gather(*(s.kill() for s, _, _ in results))
    assert killed == [True] * n
    print(f"10 concurrent create+run_code+files+command: {elapsed:.1f}s")
    for sid in ids:
        await asyncio.to_thread(assert_gone, sid)


def test_connect_by_id(sandboxes):
    sbx = sandboxes.create()
    sbx.run_code("secret = 'kept'")
    sbx.files.write("/home/user/c.txt", "c")
    other = Sandbox.connect(sbx.sandbox_id)
    assert other.sandbox_id == sbx.sandbox_id
    assert other.run_code("secret").text == "kept"
    assert other.files.read("/home/user/c.txt") == "c"
    assert other.commands.run("echo ok").stdout == "ok\n"
    # Connecting never shortens the lifetime (E2B: the TTL is only extended).
    end_before = sbx.get_info().end_at
    Sandbox.connect(sbx.sandbox_id, timeout=10)
    assert sbx.get_info().end_at >= end_before

    async def via_async():
        a = await AsyncSandbox.connect(sbx.sandbox_id)
        return (await a.run_code("secret")).text

    assert asyncio.run(via_async()) == "kept"
    with pytest.raises(SandboxNotFoundException):
        Sandbox.connect("nosuchsandbox0000000")


def test_list_with_metadata_filters(sandboxes):
    a = sandboxes.create({"team": "red", "size": "s"})
    b = sandboxes.create({"team": "red", "size": "l"})
    c = sandboxes.create({"team": "blue b", "size": "s"})  # a space: the SDK double-encodes it

    def ids(meta, **kw):
        out, pager = [], Sandbox.list(query=SandboxQuery(metadata=tag(meta), **kw))
        while pager.has_next:
            out += [s.sandbox_id for s in pager.next_items()]
        return sorted(out)

    assert ids({"team": "red"}) == sorted([a.sandbox_id, b.sandbox_id])
    assert ids({"size": "s"}) == sorted([a.sandbox_id, c.sandbox_id])
    assert ids({"team": "red", "size": "l"}) == [b.sandbox_id]
    assert ids({"team": "blue b"}) == [c.sandbox_id]
    assert ids({"team": "green"}) == []
    assert ids({}, state=[SandboxState.PAUSED]) == []
    # Paging: one per page, the SDK follows X-Next-Token.
    pager = Sandbox.list(query=SandboxQuery(metadata=tag()), limit=1)
    pages = []
    while pager.has_next:
        items = pager.next_items()
        assert len(items) <= 1
        pages += [s.sandbox_id for s in items]
    assert sorted(pages) == sorted([a.sandbox_id, b.sandbox_id, c.sandbox_id])
    listed = {s.sandbox_id: s for s in Sandbox.list(query=SandboxQuery(metadata=tag())).next_items()}
    assert listed[c.sandbox_id].metadata == tag({"team": "blue b", "size": "s"})
    assert listed[a.sandbox_id].state == SandboxState.RUNNING
    b.kill()
    assert ids({"team": "red"}) == [a.sandbox_id]


def test_set_timeout_expiry(sandboxes):
    short = sandboxes.create({"case": "expiry"}, timeout=120)
    keep = sandboxes.create({"case": "extend"}, timeout=6)
    short.set_timeout(3)
    keep.set_timeout(120)
    info = short.get_info()
    assert (info.end_at - info.started_at).total_seconds() < 120
    t0 = time.monotonic()
    deadline = t0 + 30
    while short.is_running() and time.monotonic() < deadline:
        time.sleep(0.5)
    gone_after = time.monotonic() - t0
    assert not short.is_running(), "the sandbox still answers 30 s after its 3 s timeout"
    with pytest.raises(SandboxNotFoundException):
        short.get_info()
    assert_gone(short.sandbox_id)
    assert 2.0 <= gone_after < 20, gone_after
    time.sleep(max(0.0, 8 - (time.monotonic() - t0)))  # well past keep's original 6 s
    assert keep.is_running() and keep.commands.run("echo alive").stdout == "alive\n"
    # A sandbox created with a short timeout expires by itself too.
    brief = sandboxes.create({"case": "brief"}, timeout=2)
    cluster.wait_until(lambda: not brief.is_running(), 30, what="2 s sandbox expired")
    assert_gone(brief.sandbox_id)


def test_pause_resume_keeps_files_memory_and_processes(sandboxes):
    sbx = sandboxes.create({"case": "pause"})
    sid = sbx.sandbox_id
    sbx.run_code("cycles = 0\nhistory = []")
    sbx.commands.run("bash -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.2; done'",
                     background=True)
    cluster.wait_until(lambda: sbx.files.exists("/tmp/counter"), 30, what="counter started")
    last_count = int(sbx.files.read("/tmp/counter"))
    for cycle in range(1, 6):
        sbx.files.write(f"/home/user/cycle-{cycle}.txt", f"written before pause {cycle}")
        assert sbx.run_code(f"cycles += 1\nhistory.append({cycle})\ncycles").text == str(cycle)
        assert sbx.pause() is True
        info = Sandbox.get_info(sid)
        assert info.state == SandboxState.PAUSED
        assert not any(v.sandbox_id == sid and v.alive for v in cluster.vms().values()), "paused but QEMU runs"
        assert Sandbox.pause(sid) is False  # already paused: 409
        listed = Sandbox.list(query=SandboxQuery(metadata=tag({"case": "pause"}), state=[SandboxState.PAUSED]))
        assert [s.sandbox_id for s in listed.next_items()] == [sid]

        sbx = Sandbox.connect(sid)  # resumes
        assert Sandbox.get_info(sid).state == SandboxState.RUNNING
        for c in range(1, cycle + 1):
            assert sbx.files.read(f"/home/user/cycle-{c}.txt") == f"written before pause {c}"
        assert sbx.run_code("cycles, history").text == f"({cycle}, {list(range(1, cycle + 1))})"
        count = int(sbx.files.read("/tmp/counter"))
        assert count >= last_count, f"cycle {cycle}: counter went back from {last_count} to {count}"
        cluster.wait_until(lambda sbx=sbx, count=count: int(sbx.files.read("/tmp/counter")) > count, 15,
                           what=f"the background counter to keep counting after resume {cycle}")
        last_count = int(sbx.files.read("/tmp/counter"))
    assert sbx.kill() is True
    assert_gone(sid)


def test_auto_resume_on_traffic(sandboxes):
    """A paused sandbox created with lifecycle auto_resume wakes up on its own traffic (the SDK:
    "auto-resume wakes a paused sandbox on inbound traffic by restoring its memory snapshot in
    place"): the same SDK object keeps working after a pause, without connect(). One without
    auto_resume stays paused and its traffic says so."""
    from e2b import SandboxException

    sbx = sandboxes.create({"case": "autoresume"}, lifecycle={"on_timeout": "pause", "auto_resume": True})
    sid = sbx.sandbox_id
    sbx.run_code("state = 41")
    sbx.files.write("/home/user/kept.txt", "kept")
    assert sbx.pause() is True
    assert Sandbox.get_info(sid).state == SandboxState.PAUSED
    # envd traffic (a file read, a GET) resumes it and is answered ...
    assert sbx.files.read("/home/user/kept.txt") == "kept"
    assert Sandbox.get_info(sid).state == SandboxState.RUNNING
    # ... and so is the code interpreter's streaming POST, with the kernel's memory intact, and a
    # Connect-RPC command.
    assert sbx.pause() is True
    assert sbx.run_code("state + 1").text == "42"
    assert sbx.pause() is True
    assert sbx.commands.run("cat /home/user/kept.txt").stdout == "kept"
    assert Sandbox.get_info(sid).state == SandboxState.RUNNING

    plain = sandboxes.create({"case": "no-autoresume"})
    assert plain.pause() is True
    with pytest.raises(SandboxException) as ei:
        plain.files.read("/etc/hostname")
    assert "paused" in str(ei.value).lower(), ei.value
    assert Sandbox.get_info(plain.sandbox_id).state == SandboxState.PAUSED
    assert sbx.kill() is True and plain.kill() is True
    assert_gone(sid)
    assert_gone(plain.sandbox_id)


def test_kill_and_connect_unknown_id():
    assert Sandbox.kill("nosuchsandbox0000000") is False
    with pytest.raises(SandboxNotFoundException):
        Sandbox.connect("nosuchsandbox0000000")
    with pytest.raises(SandboxNotFoundException):
        Sandbox.get_info("nosuchsandbox0000000")
    with pytest.raises(SandboxNotFoundException):
        Sandbox.set_timeout("nosuchsandbox0000000", 30)


def test_killed_sandbox_traffic_fails_cleanly(sandboxes):
    """After a kill the SDK's sandbox traffic gets the proxy's 'not found' answer, not a hang."""
    from e2b import SandboxException, TimeoutException

    sbx = sandboxes.create()
    sbx.kill()
    t0 = time.monotonic()
    with pytest.raises(SandboxException) as ei:
        sbx.commands.run("true")
    assert "not found" in str(ei.value).lower() or "not running" in str(ei.value).lower(), ei.value
    assert not sbx.is_running()
    with pytest.raises((SandboxException, TimeoutException)):
        sbx.run_code("1")
    assert time.monotonic() - t0 < 30


def test_command_running_when_its_sandbox_is_killed(sandboxes):
    """A foreground command streaming when its sandbox is killed ends at once with the SDK's
    "killed or reached its end of life" SandboxNotRunningException, not a client timeout: the
    proxy closes its connection to the gone guest once its routes drop the sandbox, Envoy resets
    the stream, and the SDK's health probe meets "was not found"."""
    import threading

    from e2b.exceptions import SandboxNotRunningException

    sbx = sandboxes.create({"case": "kill-mid-command"})
    started = threading.Event()
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = sbx.commands.run("echo started; sleep 120", timeout=300,
                                                 on_stdout=lambda _: started.set())
        except Exception as e:  # noqa: BLE001 - inspected below
            outcome["error"] = e

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    assert started.wait(60), outcome
    t0 = time.monotonic()
    assert Sandbox.kill(sbx.sandbox_id) is True
    worker.join(60)
    assert not worker.is_alive(), "the command's stream outlived its sandbox"
    err = outcome.get("error")
    assert isinstance(err, SandboxNotRunningException), outcome
    assert "killed or reached its end of life" in str(err), err
    print(f"stream ended {time.monotonic() - t0:.2f}s after the kill call")
    assert_gone(sbx.sandbox_id)


def test_envd_details_as_e2b(sandboxes):
    """The guest's envd through the proxy behaves as E2B's does where the SDK's own tests look:
    a create-then-write makes three watch events, a symlink reports its target's type and
    resolved path, an overwrite without metadata clears the old metadata, and an expired signed
    URL says so."""
    import httpx
    from e2b import FileType
    from e2b.sandbox.filesystem.watch_handle import FilesystemEventType as Ev

    sbx = sandboxes.create({"case": "envd-details"})
    sbx.files.make_dir("/home/user/w")
    handle = sbx.files.watch_dir("/home/user/w")
    sbx.files.write("/home/user/w/f.txt", "content")
    assert [(e.name, e.type) for e in handle.get_new_events()] == [
        ("f.txt", Ev.CREATE), ("f.txt", Ev.CHMOD), ("f.txt", Ev.WRITE)]
    handle.stop()

    sbx.commands.run("ln -s f.txt link", cwd="/home/user/w")
    info = sbx.files.get_info("w/link")
    assert (info.type, info.symlink_target) == (FileType.FILE, "/home/user/w/f.txt")

    sbx.files.write("/home/user/w/f.txt", "1", metadata={"k": "v"})
    assert sbx.files.write("/home/user/w/f.txt", "2").metadata is None
    assert sbx.files.get_info("/home/user/w/f.txt").metadata is None

    url = sbx.download_url("/home/user/w/f.txt", use_signature_expiration=-10)
    r = httpx.get(url, timeout=30)  # SSL_CERT_FILE from `make env` trusts the proxy
    assert (r.status_code, r.json()) == (401, {"code": 401, "message": "signature is already expired"}), r.text
    r = httpx.get(sbx.download_url("/home/user/w/f.txt", use_signature_expiration=60), timeout=30)
    assert (r.status_code, r.text) == (200, "2")


def test_python_and_python3_are_on_path(sandboxes):
    sbx = sandboxes.create({"case": "python-on-path"})
    r = sbx.commands.run("python -c 'import sys; print(sys.version_info[0])' && python3 --version")
    assert r.stdout.split()[0] == "3" and r.stdout.split()[1] == "Python", r.stdout


def test_a_create_that_finds_the_pool_empty_restores_into_a_qemu_started_ahead(sandboxes):
    """Beside its clones the pool keeps one QEMU started and waiting per template: a create that
    finds no pooled clone restores into it (step `clone.standby`, path `standby`) instead of
    starting QEMU, and is a sandbox like any other; the pool then starts another."""
    metrics = f"http://127.0.0.1:{cluster.CFG.cubelet_metrics_port}/metrics"

    def pool() -> tuple[int, int, int]:
        page = scrape(metrics)
        return (int(page.value("cube_cubelet_warm_pool_ready", template="code-interpreter")),
                int(page.value("cube_cubelet_warm_pool_target", template="code-interpreter")),
                int(page.value("cube_cubelet_warm_pool_standby", template="code-interpreter")))

    cluster.wait_until(lambda: (p := pool())[0] >= p[1] and p[2] == 1, timeout=180, what="a full pool and a standby")
    ready = pool()[0]
    offset = cluster.log_offset("cubelet")

    async def burst() -> list[AsyncSandbox]:  # two more than the pool holds, at once (a refill may land)
        return await asyncio.gather(*(sandboxes.acreate({"case": f"standby-{i}"}, envs={"WHO": f"create-{i}"})
                                      for i in range(ready + 2)))

    made = asyncio.run(burst())
    ids = {s.sandbox_id for s in made}
    who = {s.sandbox_id: f"create-{i}" for i, s in enumerate(made)}
    running = {e["sandbox_id"]: e for e in cluster.json_lines(cluster.log_since("cubelet", offset))
               if e.get("msg") == "sandbox running" and e.get("sandbox_id") in ids}
    assert set(running) == ids, running
    restored = [sid for sid, e in running.items() if "clone.standby" in e.get("steps_ms", {})]
    assert len(restored) >= 1, {sid: e.get("steps_ms") for sid, e in running.items()}
    sbx = Sandbox.connect(restored[0])
    assert sbx.run_code("import os; print(os.environ['WHO'])").logs.stdout == [f"{who[restored[0]]}\n"]
    assert sbx.commands.run("echo ok").stdout == "ok\n"
    cluster.wait_until(lambda: pool()[2] == 1, timeout=60, what="the pool's next standby")


def test_warm_pool_serves_a_create_after_a_quiet_period(sandboxes):
    """The cubelet keeps restored clones of each template ready; a create that comes once the pool
    has had time to refill is served from it (the master logs `from_warm_pool`)."""
    off_master, off_cubelet = cluster.log_offset("master"), cluster.log_offset("cubelet")
    sandboxes.create({"case": "pool-drain"}).kill()
    time.sleep(30)  # a refill is one clone restore and warm-up: seconds, even under TCG
    sbx = sandboxes.create({"case": "pool-hit"})
    created = [entry for entry in cluster.json_lines(cluster.log_since("master", off_master))
               if entry.get("msg") == "created" and entry.get("sandbox_id") == sbx.sandbox_id]
    pool_log = [f"{entry.get('ts')} {entry.get('msg')} {entry.get('template_id', '')} {entry.get('error', '')}"
                for entry in cluster.json_lines(cluster.log_since("cubelet", off_cubelet))
                if "warm_pool" in entry.get("logger", "")]
    assert len(created) == 1, created
    assert created[0].get("from_warm_pool") is True, (
        f"create 30 s after the previous one was not served from the warm pool: {created[0]}\n"
        "cubelet warm-pool log:\n" + "\n".join(pool_log))
    assert sbx.run_code("print(1)").logs.stdout == ["1\n"]
