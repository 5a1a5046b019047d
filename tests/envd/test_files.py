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


def test_writing_to_a_device_or_through_a_dangling_link(sandbox):
    sandbox.files.write("/dev/null", "discarded", user="root")  # O_TRUNC-like: ignored on a device
    sandbox.commands.run("mkdir -p /home/user/dl && ln -sfn made.txt /home/user/dl/link")
    sandbox.files.write("/home/user/dl/link", "through the link")
    assert sandbox.files.read("/home/user/dl/made.txt") == "through the link"
    assert sandbox.files.get_info("/home/user/dl/link").type == FileType.FILE


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


def test_symlinks_report_their_target_like_upstream(sandbox):
    """Upstream envd reports a link as what it points to (the SDK's own test_file_symlink expects
    FileType.FILE), with the fully resolved target; a link it cannot resolve has no type (so
    files.list leaves it out) and names itself as target."""
    sandbox.files.write("/home/user/ln/target.txt", "t")
    sandbox.commands.run("chmod 640 target.txt && ln -sfn target.txt link && ln -sfn link chain"
                         " && ln -sfn /home/user/ln dirlink && ln -sfn nowhere dangling", cwd="/home/user/ln")
    info = sandbox.files.get_info("/home/user/ln/link")
    assert info.type == FileType.FILE
    assert info.symlink_target == "/home/user/ln/target.txt"
    assert info.name == "link" and info.path == "/home/user/ln/link"
    assert info.permissions == "Lrwxrwxrwx"  # Go's FileMode string of the link itself
    assert info.mode == 0o640  # the target's permission bits
    assert sandbox.files.get_info("/home/user/ln/chain").symlink_target == "/home/user/ln/target.txt"
    # Relative paths resolve from the home directory, as in the SDK's own test.
    assert sandbox.files.get_info("ln/link").symlink_target == "/home/user/ln/target.txt"
    dangling = sandbox.files.get_info("/home/user/ln/dangling")
    assert dangling.type is None and dangling.symlink_target == "/home/user/ln/dangling"
    listed = {e.name: e for e in sandbox.files.list("/home/user/ln")}
    assert listed["dirlink"].type == FileType.DIR
    assert listed["dirlink"].symlink_target == "/home/user/ln"
    assert listed["link"].type == FileType.FILE
    assert "dangling" not in listed
    assert listed["target.txt"].symlink_target is None and listed["target.txt"].permissions == "-rw-r-----"
    # A link into a directory is listed through, under the path asked for.
    assert {e.path for e in sandbox.files.list("/home/user/ln/dirlink")} >= {"/home/user/ln/dirlink/target.txt"}


def test_permissions_are_gos_file_mode_strings(sandbox):
    tmp = sandbox.files.get_info("/tmp")
    assert (tmp.type, tmp.permissions, tmp.mode) == (FileType.DIR, "dtrwxrwxrwx", 0o777)
    null = sandbox.files.get_info("/dev/null")
    assert null.permissions == "Dcrw-rw-rw-"


def test_overwrite_replaces_metadata(sandbox):
    """Upstream rewrites a file's whole metadata set on every upload: an overwrite without
    metadata clears what the previous upload stored (O_TRUNC keeps the inode's xattrs)."""
    path = "/home/user/md/f.txt"
    assert sandbox.files.write(path, "1", metadata={"a": "1", "b": "2"}).metadata == {"a": "1", "b": "2"}
    assert sandbox.files.get_info(path).metadata == {"a": "1", "b": "2"}
    info = sandbox.files.write(path, "2", metadata={"b": "3"})
    assert info.metadata == {"b": "3"}
    assert sandbox.files.get_info(path).metadata == {"b": "3"}
    info = sandbox.files.write(path, "3")
    assert info.metadata is None
    assert sandbox.files.get_info(path).metadata is None
    assert sandbox.files.read(path) == "3"
    # Octet-stream uploads (gzip, streams) follow the same rule.
    sandbox.files.write(path, b"4", gzip=True, metadata={"c": "4"})
    sandbox.files.write(path, io.BytesIO(b"5"))
    assert sandbox.files.get_info(path).metadata is None
    # Other tools' xattrs are none of envd's business and stay.
    sandbox.commands.run(f"python3 -c \"import os; os.setxattr('{path}', 'user.other', b'x')\"")
    sandbox.files.write(path, "6", metadata={"d": "5"})
    r = sandbox.commands.run(f"python3 -c \"import os; print(sorted(os.listxattr('{path}')))\"")
    assert r.stdout.strip() == "['user.e2b.d', 'user.other']"


def test_bad_metadata_is_refused_like_upstream(agent):
    r = httpx.post(ENVD + "/files", params={"path": "/home/user/md/bad.txt"}, content=b"x",
                   headers={b"Content-Type": b"application/octet-stream", b"X-Metadata-K": "caf\u00e9".encode()})
    assert r.status_code == 400 and r.json()["message"].startswith("invalid metadata:"), r.text
    r = httpx.post(ENVD + "/files", params={"path": "/home/user/md/bad.txt"}, content=b"x",
                   headers={"Content-Type": "application/octet-stream", "X-Metadata-" + "k" * 247: "v"})
    assert r.status_code == 400 and "exceeds 246 bytes" in r.json()["message"], r.text
    r = httpx.post(ENVD + "/files", params={"path": "/home/user/md/bad.txt"}, content=b"x",
                   headers={"Content-Type": "application/octet-stream",
                            **{f"X-Metadata-K{i}": "v" * 400 for i in range(10)}})
    assert r.status_code == 400 and "total metadata size" in r.json()["message"], r.text


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


def _events(handle, want: int, timeout: float = 10) -> list[tuple[str, FilesystemEventType]]:
    """Polls until `want` events arrived, then once more to catch any extra one."""
    events: list = []
    deadline = time.monotonic() + timeout
    while len(events) < want and time.monotonic() < deadline:
        events += handle.get_new_events()
        time.sleep(0.05)
    time.sleep(0.3)
    events += handle.get_new_events()
    return [(e.name, e.type) for e in events]


def test_watch_create_then_write_makes_upstreams_three_events(sandbox):
    """The SDK's own test_watch_iterated expects exactly three events for files.write of a new
    file, with no wait between the write and the poll: upstream creates it (CREATE), chowns it
    to the user (CHMOD) and writes it (WRITE)."""
    sandbox.files.make_dir("/home/user/w3")
    handle = sandbox.files.watch_dir("/home/user/w3")
    try:
        sandbox.files.write("/home/user/w3/f.txt", "content")
        immediate = handle.get_new_events()  # no sleep: what the SDK's test does
        assert [(e.name, e.type) for e in immediate] == [
            ("f.txt", FilesystemEventType.CREATE), ("f.txt", FilesystemEventType.CHMOD),
            ("f.txt", FilesystemEventType.WRITE)]
        # An overwrite: chown (CHMOD), truncate and write (WRITE; the kernel may merge the two).
        sandbox.files.write("/home/user/w3/f.txt", "new content")
        events = _events(handle, 2)
        assert events[0] == ("f.txt", FilesystemEventType.CHMOD)
        assert set(events[1:]) == {("f.txt", FilesystemEventType.WRITE)}
        # Metadata is an xattr: one more CHMOD at the end, as upstream's.
        sandbox.files.write("/home/user/w3/g.txt", "g", metadata={"k": "v"})
        assert _events(handle, 4) == [
            ("g.txt", FilesystemEventType.CREATE), ("g.txt", FilesystemEventType.CHMOD),
            ("g.txt", FilesystemEventType.WRITE), ("g.txt", FilesystemEventType.CHMOD)]
    finally:
        handle.stop()


def test_watch_recursive_create_then_write(sandbox):
    """The SDK's test_watch_recursive_directory_changes: three events, the first a CREATE named
    relative to the watched directory; and a directory made by make_dir is made and chowned."""
    sandbox.files.make_dir("/home/user/wr/nested")
    handle = sandbox.files.watch_dir("/home/user/wr", recursive=True)
    try:
        sandbox.files.write("/home/user/wr/nested/f.txt", "content")
        events = [(e.name, e.type) for e in handle.get_new_events()]
        assert len(events) == 3 and events[0] == ("nested/f.txt", FilesystemEventType.CREATE), events
        assert sandbox.files.make_dir("/home/user/wr/new") is True
        sandbox.files.write("/home/user/wr/new/g.txt", "g")
        events = _events(handle, 5)
        assert events[:2] == [("new", FilesystemEventType.CREATE), ("new", FilesystemEventType.CHMOD)]
        assert ("new/g.txt", FilesystemEventType.WRITE) in events
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
        if ev.name == "f.txt" and ev.type == FilesystemEventType.WRITE:
            seen.set()

    handle = await sbx.files.watch_dir("/home/user/aw", on_event, include_entry=True)
    try:
        await sbx.files.write("/home/user/aw/f.txt", "hi")
        await asyncio.wait_for(seen.wait(), 10)
        assert [(e.name, e.type) for e in got] == [
            ("f.txt", FilesystemEventType.CREATE), ("f.txt", FilesystemEventType.CHMOD),
            ("f.txt", FilesystemEventType.WRITE)]
        assert all(e.entry is not None and e.entry.path == "/home/user/aw/f.txt" for e in got)
        await sbx.files.remove("/home/user/aw/f.txt")
        await asyncio.sleep(0.3)
        removed = got[-1]
        assert (removed.name, removed.type, removed.entry) == ("f.txt", FilesystemEventType.REMOVE, None)
    finally:
        await handle.stop()


def test_watch_missing_dir(sandbox):
    with pytest.raises(NotFoundException):
        sandbox.files.watch_dir("/home/user/not-here")


def test_plain_http_health():
    r = httpx.get(ENVD + "/health")
    assert r.status_code == 204
