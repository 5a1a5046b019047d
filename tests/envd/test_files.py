"""Files through the unmodified SDK: reads, writes (multipart, octet-stream, gzip, many at once),
a 200 MB transfer with bounded agent memory, listing, stat, rename, remove, make_dir, watches."""

from __future__ import annotations

import hashlib
import io
import os
import time

import httpx
import pytest
from e2b import FileType, InvalidArgumentException, NotFoundException
from e2b.sandbox.filesystem.watch_handle import FilesystemEventType

from .conftest import ENVD, reset_peak_rss, rss_kb


def test_text_and_bytes_roundtrip(sandbox):
    info = sandbox.files.write("/home/user/t/hello.txt", "héllo\n")
    assert (info.name, info.path, info.type) == ("hello.txt", "/home/user/t/hello.txt", FileType.FILE)
    assert sandbox.files.read("/home/user/t/hello.txt") == "héllo\n"
    blob = bytes(range(256)) * 10
    sandbox.files.write("/home/user/t/blob.bin", blob)
    assert sandbox.files.read("/home/user/t/blob.bin", format="bytes") == blob
    assert b"".join(sandbox.files.read("/home/user/t/blob.bin", format="stream")) == blob


def test_relative_paths_and_ownership(sandbox, root_path):
    sandbox.files.write("rel.txt", "x")
    st = os.stat(root_path("/home/user/rel.txt"))
    r = sandbox.commands.run("id -u user")
    assert st.st_uid == int(r.stdout)
    sandbox.files.write("/root/r.txt", "y", user="root")
    assert os.stat(root_path("/root/r.txt")).st_uid == 0
    assert sandbox.files.read("/root/r.txt", user="root") == "y"


def test_user_cannot_write_where_it_has_no_permission(sandbox):
    from e2b import SandboxException

    with pytest.raises(SandboxException):
        sandbox.files.write("/etc/cube-denied.txt", "nope")
    assert not sandbox.files.exists("/etc/cube-denied.txt", user="root")


def test_gzip_octet_stream_and_metadata(sandbox):
    data = b"compressible " * 10_000
    info = sandbox.files.write("/home/user/t/g.bin", data, gzip=True, metadata={"Owner": "tests"})
    assert info.metadata == {"owner": "tests"}
    assert sandbox.files.read("/home/user/t/g.bin", format="bytes") == data
    assert sandbox.files.get_info("/home/user/t/g.bin").metadata == {"owner": "tests"}
    sandbox.files.write("/home/user/t/s.bin", io.BytesIO(b"streamed"))
    assert sandbox.files.read("/home/user/t/s.bin") == "streamed"


def test_write_many_files_at_once(sandbox):
    infos = sandbox.files.write_files([
        {"path": "/home/user/multi/a.txt", "data": "A"},
        {"path": "/home/user/multi/sub/b.txt", "data": b"B"},
    ])
    assert sorted(i.path for i in infos) == ["/home/user/multi/a.txt", "/home/user/multi/sub/b.txt"]
    assert sandbox.files.read("/home/user/multi/sub/b.txt") == "B"


def test_list_depth_exists_get_info(sandbox):
    sandbox.files.write("/home/user/tree/a/b/c.txt", "deep")
    sandbox.files.write("/home/user/tree/top.txt", "12345")
    names1 = {e.path for e in sandbox.files.list("/home/user/tree")}
    assert names1 == {"/home/user/tree/a", "/home/user/tree/top.txt"}
    names3 = {e.path for e in sandbox.files.list("/home/user/tree", depth=3)}
    assert "/home/user/tree/a/b/c.txt" in names3 and "/home/user/tree/a/b" in names3
    info = sandbox.files.get_info("/home/user/tree/top.txt")
    assert info.size == 5 and info.type == FileType.FILE
    assert info.owner == "user" and info.permissions == "-rw-r--r--" and info.mode == 0o644
    assert abs(info.modified_time.timestamp() - time.time()) < 120
    assert sandbox.files.exists("/home/user/tree/a")
    assert not sandbox.files.exists("/home/user/tree/nope")
    with pytest.raises(NotFoundException):
        sandbox.files.get_info("/home/user/tree/nope")
    with pytest.raises(NotFoundException):
        sandbox.files.list("/home/user/nope")


def test_symlinks_are_reported(sandbox):
    sandbox.files.write("/home/user/ln/target.txt", "t")
    sandbox.commands.run("ln -sfn target.txt /home/user/ln/link && ln -sfn /home/user/ln /home/user/ln/dirlink")
    info = sandbox.files.get_info("/home/user/ln/link")
    assert info.type == FileType.SYMLINK
    assert info.symlink_target == "/home/user/ln/target.txt"
    listed = {e.name: e for e in sandbox.files.list("/home/user/ln")}
    assert listed["dirlink"].type == FileType.SYMLINK
    assert listed["target.txt"].symlink_target is None


def test_rename_remove_make_dir(sandbox):
    sandbox.files.write("/home/user/mv/a.txt", "a")
    moved = sandbox.files.rename("/home/user/mv/a.txt", "/home/user/mv/b.txt")
    assert moved.path == "/home/user/mv/b.txt"
    assert sandbox.files.read("/home/user/mv/b.txt") == "a"
    with pytest.raises(NotFoundException):
        sandbox.files.rename("/home/user/mv/a.txt", "/home/user/mv/c.txt")
    assert sandbox.files.make_dir("/home/user/mv/d/e") is True
    assert sandbox.files.make_dir("/home/user/mv/d/e") is False
    sandbox.files.remove("/home/user/mv")
    assert not sandbox.files.exists("/home/user/mv")
    sandbox.files.remove("/home/user/mv")  # removing what is gone is fine


def test_read_errors(sandbox):
    with pytest.raises(NotFoundException):
        sandbox.files.read("/home/user/missing.txt")
    with pytest.raises(InvalidArgumentException):
        sandbox.files.read("/home/user")


def test_200mb_streamed_with_bounded_agent_memory(sandbox, agent, tmp_path):
    size = 200 * 1024 * 1024
    src = tmp_path / "big.bin"
    chunk = os.urandom(1024 * 1024)
    h = hashlib.sha256()
    with open(src, "wb") as f:
        for _ in range(size // len(chunk)):
            f.write(chunk)
            h.update(chunk)
    before = rss_kb(agent.pid)
    reset_peak_rss(agent.pid)
    with open(src, "rb") as f:
        sandbox.files.write("/home/user/big.bin", f, request_timeout=600)
    got = hashlib.sha256()
    n = 0
    with sandbox.files.read("/home/user/big.bin", format="stream", request_timeout=600) as stream:
        for part in stream:
            got.update(part)
            n += len(part)
    peak = rss_kb(agent.pid, "VmHWM")
    assert n == size
    assert got.hexdigest() == h.hexdigest()
    growth_mb = (peak - before) / 1024
    assert growth_mb < 64, f"agent RSS grew by {growth_mb:.1f} MB during a 200 MB transfer"
    sandbox.files.remove("/home/user/big.bin")


def test_watch_dir_polling(sandbox):
    sandbox.files.make_dir("/home/user/w")
    handle = sandbox.files.watch_dir("/home/user/w", recursive=True)
    try:
        sandbox.files.write("/home/user/w/new.txt", "1")
        sandbox.commands.run("mkdir /home/user/w/sub && echo x > /home/user/w/sub/inner.txt"
                             " && chmod 600 /home/user/w/new.txt && mv /home/user/w/new.txt /home/user/w/moved.txt"
                             " && rm /home/user/w/moved.txt")
        deadline = time.monotonic() + 10
        events = []
        while time.monotonic() < deadline:
            events += handle.get_new_events()
            kinds = {(e.name, e.type) for e in events}
            if ("moved.txt", FilesystemEventType.REMOVE) in kinds:
                break
            time.sleep(0.2)
        kinds = {(e.name, e.type) for e in events}
        assert ("new.txt", FilesystemEventType.CREATE) in kinds
        assert ("new.txt", FilesystemEventType.WRITE) in kinds
        assert ("new.txt", FilesystemEventType.CHMOD) in kinds
        assert ("new.txt", FilesystemEventType.RENAME) in kinds
        assert ("moved.txt", FilesystemEventType.CREATE) in kinds
        assert ("sub/inner.txt", FilesystemEventType.CREATE) in kinds
        assert ("moved.txt", FilesystemEventType.REMOVE) in kinds
    finally:
        handle.stop()


async def test_watch_dir_stream(agent):
    import asyncio

    from e2b import AsyncSandbox

    sbx = await AsyncSandbox.create()
    await sbx.files.make_dir("/home/user/aw")
    got = []
    seen = asyncio.Event()

    def on_event(ev):
        got.append(ev)
        if ev.name == "f.txt" and ev.type == FilesystemEventType.CREATE:
            seen.set()

    handle = await sbx.files.watch_dir("/home/user/aw", on_event, include_entry=True)
    try:
        await sbx.files.write("/home/user/aw/f.txt", "hi")
        await asyncio.wait_for(seen.wait(), 10)
        created = next(e for e in got if e.name == "f.txt" and e.type == FilesystemEventType.CREATE)
        assert created.entry is not None and created.entry.path == "/home/user/aw/f.txt"
    finally:
        await handle.stop()


def test_watch_missing_dir(sandbox):
    with pytest.raises(NotFoundException):
        sandbox.files.watch_dir("/home/user/not-here")


def test_plain_http_health():
    r = httpx.get(ENVD + "/health")
    assert r.status_code == 204
