"""A volume's ext4 image read and changed through debugfs, never mounted
(services/cubelet/volume_fs.py), on real images made with mkfs.ext4 in a tmp dir (no root).

- Every operation: stat (file, directory, fast and slow symlinks, a fifo), list by depth, make_dir
  with and without force, update_metadata, remove (files, links, whole trees), read and write.
- Error paths: a missing path or parent, a file used as a directory, removing '/', names with
  spaces, quotes and unicode work, a newline or an over-long name is refused before debugfs runs.
- Guest-made content (mkfs.ext4 -d from a host directory): names with newlines and fake debugfs
  prompts list correctly, hard links survive the removal of another name.
- A full filesystem on write leaves no partial file and keeps the old content; a 5 MB file round
  trips byte for byte in bounded memory; a journal left by a crashed guest is replayed first.
- Paths up to PATH_MAX work; one debugfs' line buffer cannot hold is refused; an error is classified
  by debugfs' message, not by a path that happens to read like one; a stalled debugfs is killed.
- After every change, ``e2fsck -fn`` finds the filesystem clean.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
import tracemalloc
from pathlib import Path

import pytest

from cube_common.volumes import MAX_PATH
from sdk.gen.cube.v1 import cubelet_pb2 as pb
from services.cubelet import volume_fs
from services.cubelet.volume_fs import Corrupt, Exists, Invalid, NoSpace, NotFound, VolumeFs

pytestmark = pytest.mark.skipif(shutil.which("debugfs", path="/usr/sbin:/sbin:" + os.environ["PATH"]) is None,
                                reason="needs e2fsprogs (debugfs, mkfs.ext4)")

SBIN = "/usr/sbin:/sbin:" + os.environ["PATH"]
DEBUGFS = shutil.which("debugfs", path=SBIN) or "debugfs"
E2FSCK = shutil.which("e2fsck", path=SBIN) or "e2fsck"
MKFS = shutil.which("mkfs.ext4", path=SBIN) or "mkfs.ext4"


def make_image(path: Path, size_mb: int = 32, content: Path | None = None) -> Path:
    """As the cubelet makes a volume, optionally filled from a host directory (as a guest would)."""
    extra = ["-d", str(content)] if content else []
    subprocess.run([MKFS, "-q", "-F", "-E", "root_owner=1000:1000", "-L", "cube-vol", *extra,
                    str(path), f"{size_mb}M"], check=True, capture_output=True)
    return path


def fsck_clean(img: Path) -> None:
    r = subprocess.run([E2FSCK, "-fn", str(img)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def vfs(img: Path) -> VolumeFs:
    return VolumeFs(img, debugfs=DEBUGFS, e2fsck=E2FSCK, timeout=30)


@pytest.fixture
def img(tmp_path: Path) -> Path:
    return make_image(tmp_path / "vol.ext4")


@pytest.fixture
def src(tmp_path: Path):
    """Host files holding content to write."""
    def make(data: bytes, name: str = "src") -> Path:
        p = tmp_path / name
        p.write_bytes(data)
        return p
    return make


def read(fs: VolumeFs, path: str) -> bytes:
    return b"".join(fs.read_file(path))


# -- stat and list ---------------------------------------------------------------------------------

def test_stat_reports_each_type_with_owner_mode_size_and_times(tmp_path):
    content = tmp_path / "content"
    (content / "dir").mkdir(parents=True)
    (content / "dir" / "file").write_bytes(b"x" * 1234)
    os.chmod(content / "dir" / "file", 0o640)
    os.symlink("/dir/file", content / "short")
    long_target = "/" + "t" * 100
    os.symlink(long_target, content / "long")
    os.mkfifo(content / "fifo")
    img = make_image(tmp_path / "vol.ext4", content=content)
    fs = vfs(img)

    root = fs.stat("/")
    assert (root.name, root.path, root.type) == ("/", "/", pb.VOLUME_ENTRY_TYPE_DIRECTORY)
    f = fs.stat("/dir/file")
    assert (f.name, f.path, f.type, f.size, f.mode) == ("file", "/dir/file", pb.VOLUME_ENTRY_TYPE_FILE,
                                                        1234, 0o640)
    assert (f.uid, f.gid) == (os.getuid(), os.getgid())  # mkfs -d copies the host's owner
    assert abs(f.mtime.seconds - time.time()) < 120 and f.ctime.seconds and f.atime.seconds
    assert fs.stat("dir").type == pb.VOLUME_ENTRY_TYPE_DIRECTORY  # normalised: relative is absolute
    short, long = fs.stat("/short"), fs.stat("/long")
    assert (short.type, short.target) == (pb.VOLUME_ENTRY_TYPE_SYMLINK, "/dir/file")
    assert (long.type, long.target) == (pb.VOLUME_ENTRY_TYPE_SYMLINK, long_target)
    assert fs.stat("/fifo").type == pb.VOLUME_ENTRY_TYPE_UNSPECIFIED
    with pytest.raises(NotFound):
        fs.stat("/nope")
    with pytest.raises(Invalid):  # a file used as a directory
        fs.stat("/dir/file/x")
    with pytest.raises(Invalid):
        fs.stat("/a/../b")


def test_list_goes_depth_levels_down_sorted_without_the_directory_itself(img, src):
    fs = vfs(img)
    fs.make_dir("/a/b/c", force=True)
    fs.write_file("/a/f1", src(b"1"))
    fs.write_file("/a/b/f2", src(b"22"))
    fs.write_file("/a/b/c/f3", src(b"333"))
    assert [e.path for e in fs.list("/a")] == ["/a/b", "/a/f1"]
    assert [e.path for e in fs.list("/a", 0)] == ["/a/b", "/a/f1"]  # the proto's 0 means 1
    assert [(e.path, e.size) for e in fs.list("/a", 2) if e.type == pb.VOLUME_ENTRY_TYPE_FILE] == [
        ("/a/b/f2", 2), ("/a/f1", 1)]
    assert [e.path for e in fs.list("/a", 10)] == ["/a/b", "/a/b/c", "/a/b/c/f3", "/a/b/f2", "/a/f1"]
    assert [e.name for e in fs.list("/")] == ["a", "lost+found"]
    with pytest.raises(Invalid, match="not a directory"):
        fs.list("/a/f1")
    with pytest.raises(NotFound):
        fs.list("/missing")


def test_a_listing_stops_at_its_bound(img, src, monkeypatch):
    fs = vfs(img)
    for i in range(6):
        fs.write_file(f"/f{i}", src(b""))
    monkeypatch.setattr(volume_fs, "MAX_LIST", 5)
    with pytest.raises(Invalid, match="more than 5 entries"):
        fs.list("/")


def test_guest_made_names_with_newlines_and_fake_prompts_list_and_remove(tmp_path):
    """A guest may name files anything but '/' and NUL: debugfs prints them raw."""
    content = tmp_path / "content"
    d = content / "d"
    d.mkdir(parents=True)
    tricky = ["new\nline", "x\ndebugfs: ls -p <2>\n\ndebugfs: inode_dump <2>\n", "quote\"d", "<2>", "\t tab"]
    for i, name in enumerate(tricky):
        (d / name).write_bytes(b"y" * i)
    (d / "sub").mkdir()
    (d / "sub" / "deep\nname").write_bytes(b"z")
    os.link(d / "quote\"d", content / "outside")  # a hard link out of the tree
    img = make_image(tmp_path / "vol.ext4", content=content)
    fs = vfs(img)
    names = sorted(e.name for e in fs.list("/d", 3))
    assert names == sorted([*tricky, "sub", "deep\nname"])
    assert fs.stat("/d/<2>").size == 3  # a name like an inode number is still a name
    assert read(fs, '/d/quote"d') == b"yy"
    fs.remove("/d")
    assert [e.name for e in fs.list("/")] == ["lost+found", "outside"]
    assert read(fs, "/outside") == b"yy"  # its other name kept the inode
    fsck_clean(img)


# -- make_dir, update_metadata ---------------------------------------------------------------------

def test_make_dir_needs_its_parent_unless_forced(img, src):
    fs = vfs(img)
    with pytest.raises(NotFound):
        fs.make_dir("/p/q")
    d = fs.make_dir("/p")
    assert (d.type, d.uid, d.gid, d.mode) == (pb.VOLUME_ENTRY_TYPE_DIRECTORY, 1000, 1000, 0o755)
    with pytest.raises(Exists):
        fs.make_dir("/p")
    assert fs.make_dir("/p", force=True).path == "/p"
    deep = fs.make_dir("/p/x/y/z", uid=0, gid=5, mode=0o2750, force=True)
    assert (deep.uid, deep.gid, deep.mode) == (0, 5, 0o2750)
    assert (fs.stat("/p/x").uid, fs.stat("/p/x").mode) == (0, 0o2750)  # parents made alike
    fs.write_file("/p/file", src(b"f"))
    with pytest.raises(Exists, match="not a directory"):
        fs.make_dir("/p/file", force=True)
    with pytest.raises(Invalid):
        fs.make_dir("/p/file/sub", force=True)
    fsck_clean(img)


def test_update_metadata_changes_only_what_is_given_and_keeps_the_type(img, src):
    fs = vfs(img)
    fs.write_file("/f", src(b"data"), uid=10, gid=20, mode=0o600)
    e = fs.update_metadata("/f", mode=0o4755)
    assert (e.type, e.mode, e.uid, e.gid) == (pb.VOLUME_ENTRY_TYPE_FILE, 0o4755, 10, 20)
    e = fs.update_metadata("/f", uid=70000, gid=4_000_000_000)  # beyond 16 bits: the high halves
    assert (e.uid, e.gid, e.mode) == (70000, 4_000_000_000, 0o4755)
    assert fs.update_metadata("/", mode=0o777).type == pb.VOLUME_ENTRY_TYPE_DIRECTORY
    with pytest.raises(Invalid):
        fs.update_metadata("/f", mode=0o170000)
    with pytest.raises(Invalid):
        fs.update_metadata("/f", uid=-1)
    with pytest.raises(NotFound):
        fs.update_metadata("/nope", mode=0o644)
    assert read(fs, "/f") == b"data"
    fsck_clean(img)


# -- remove ----------------------------------------------------------------------------------------

def test_remove_files_links_and_trees_but_not_the_root(img, src, tmp_path):
    fs = vfs(img)
    fs.make_dir("/t/a/b", force=True)
    for p in ("/t/f", "/t/a/g", "/t/a/b/h", "/keep"):
        fs.write_file(p, src(b"x" * 5000))
    subprocess.run([DEBUGFS, "-w", "-R", "symlink /t/a/ln /keep", str(img)], check=True, capture_output=True)
    fs.remove("/t/a/ln")
    assert fs.stat("/keep").size == 5000  # a symlink's removal leaves its target
    fs.remove("/t/f")
    with pytest.raises(NotFound):
        fs.stat("/t/f")
    fs.remove("/t")
    assert [e.name for e in fs.list("/")] == ["keep", "lost+found"]
    assert fs.stat("/").uid == 1000
    with pytest.raises(Invalid, match="root"):
        fs.remove("/")
    with pytest.raises(NotFound):
        fs.remove("/t")
    fsck_clean(img)


def test_removing_a_file_with_an_xattr_block_releases_the_block(img, src, tmp_path):
    """debugfs does not free an inode's extended-attribute block: e2fsck -fp does, afterwards."""
    fs = vfs(img)
    fs.write_file("/x", src(b"x"))
    (tmp_path / "val").write_bytes(b"v" * 800)  # too big for the inode: an EA block
    subprocess.run([DEBUGFS, "-w", "-R", f"ea_set -f {tmp_path / 'val'} /x user.big", str(img)],
                   check=True, capture_output=True)
    fs.remove("/x")
    fsck_clean(img)


# -- names -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["with space", "tab\there", "ünïcødé ✓", 'quo"te', "<2>", "-rf", "#hash"])
def test_names_debugfs_would_split_are_quoted(img, src, name):
    fs = vfs(img)
    d = fs.make_dir(f"/{name}")
    assert d.name == name
    e = fs.write_file(f"/{name}/{name}", src(b"content"))
    assert (e.name, e.path) == (name, f"/{name}/{name}")
    assert [x.path for x in fs.list(f"/{name}")] == [f"/{name}/{name}"]
    assert read(fs, f"/{name}/{name}") == b"content"
    fs.update_metadata(f"/{name}/{name}", mode=0o600)
    fs.remove(f"/{name}")
    assert [x.name for x in fs.list("/")] == ["lost+found"]
    fsck_clean(img)


def test_names_debugfs_cannot_express_are_refused_before_anything_runs(img, src):
    fs = vfs(img)
    for bad in ("/new\nline", "/car\rriage", "/" + "n" * 256, "/nul\x00"):
        for call in (lambda p: fs.stat(p), lambda p: fs.make_dir(p, force=True), lambda p: fs.remove(p),
                     lambda p: fs.write_file(p, src(b"x")), lambda p: fs.read_file(p),
                     lambda p: fs.list(p), lambda p: fs.update_metadata(p, mode=0o600)):
            with pytest.raises(Invalid):
                call(bad)
    assert [x.name for x in fs.list("/")] == ["lost+found"]
    fs.make_dir("/" + "n" * 255)  # exactly the limit is fine


# -- read and write --------------------------------------------------------------------------------

def test_write_creates_with_defaults_and_replaces_keeping_owner(img, src):
    fs = vfs(img)
    before = int(time.time())
    e = fs.write_file("/new.txt", src(b"one"))
    assert (e.type, e.size, e.uid, e.gid, e.mode) == (pb.VOLUME_ENTRY_TYPE_FILE, 3, 1000, 1000, 0o644)
    assert before <= e.mtime.seconds <= time.time() and e.ctime.seconds == e.mtime.seconds
    fs.update_metadata("/new.txt", uid=7, mode=0o600)
    e = fs.write_file("/new.txt", src(b"second version"))
    assert (e.size, e.uid, e.gid, e.mode) == (14, 7, 1000, 0o600)
    assert read(fs, "/new.txt") == b"second version"
    assert [x.name for x in fs.list("/")] == ["lost+found", "new.txt"]  # no temporary left
    with pytest.raises(NotFound):
        fs.write_file("/no/parent/f", src(b"x"))
    e = fs.write_file("/no/parent/f", src(b"x"), uid=3, gid=4, force=True)
    assert (e.uid, e.gid, e.mode) == (3, 4, 0o644)
    assert (fs.stat("/no").uid, fs.stat("/no").mode) == (3, 0o755)
    with pytest.raises(Invalid, match="is a directory"):
        fs.write_file("/no", src(b"x"))
    with pytest.raises(Invalid, match="is a directory"):
        fs.read_file("/no")
    with pytest.raises(Invalid):
        fs.write_file("/new.txt/x", src(b"x"))
    with pytest.raises(NotFound):
        fs.read_file("/missing")
    assert read(fs, "/no/parent/f") == b"x"
    fs.write_file("/empty", src(b""))
    assert read(fs, "/empty") == b""
    fsck_clean(img)


def test_a_5mb_file_round_trips_in_bounded_memory(tmp_path):
    img = make_image(tmp_path / "vol.ext4", 64)
    fs = vfs(img)
    data = os.urandom(5 << 20)
    (tmp_path / "src").write_bytes(data)
    fs.write_file("/big.bin", tmp_path / "src")
    del data
    tracemalloc.start()
    try:
        n = 0
        for chunk in fs.read_file("/big.bin", chunk_size=64 << 10):
            assert len(chunk) <= 64 << 10
            n += len(chunk)  # one chunk alive at a time, as a streaming caller holds them
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n == 5 << 20
    assert peak < 1 << 20, peak  # chunks, never the file
    # Content compared outside the memory measurement.
    assert read(fs, "/big.bin") == (tmp_path / "src").read_bytes()
    # A consumer that stops early leaves no debugfs behind.
    it = fs.read_file("/big.bin", chunk_size=4096)
    assert len(next(iter(it))) == 4096
    it.close()
    fsck_clean(img)


def test_a_full_filesystem_leaves_no_partial_file_and_keeps_the_old_one(tmp_path, src):
    img = make_image(tmp_path / "vol.ext4", 8)
    fs = vfs(img)
    fs.write_file("/keep", src(b"old content"))
    big = src(os.urandom(12 << 20), "big")
    with pytest.raises(NoSpace):
        fs.write_file("/big", big)
    with pytest.raises(NoSpace):
        fs.write_file("/keep", big)
    assert [e.name for e in fs.list("/")] == ["keep", "lost+found"]
    assert read(fs, "/keep") == b"old content"
    fsck_clean(img)
    fs.write_file("/small", src(b"fits"))  # the space came back
    fsck_clean(img)


# -- the image itself ------------------------------------------------------------------------------

def test_a_journal_left_by_a_crashed_guest_is_replayed_before_reading(img, src, tmp_path):
    """A transaction committed to the journal but not written back, as a guest killed mid-way
    leaves it: debugfs alone would read the stale block."""
    fs = vfs(img)
    fs.write_file("/f", src(b"stale" * 200))
    blocks = subprocess.run([DEBUGFS, "-R", "blocks /f", str(img)], capture_output=True, text=True,
                            check=True).stdout.split()
    fresh = b"fresh" * 200 + b"\0" * (1024 - 1000)  # 1 KiB blocks on so small a filesystem
    (tmp_path / "blk").write_bytes(fresh)
    subprocess.run([DEBUGFS, "-w", "-f", "-", str(img)], check=True, capture_output=True,
                   input=f"jo\njw -b {blocks[0]} {tmp_path / 'blk'}\njc\n".encode())
    feats = subprocess.run(["dumpe2fs", "-h", str(img)], capture_output=True, text=True,
                           env={**os.environ, "PATH": SBIN}).stdout
    assert "needs_recovery" in feats
    assert read(fs, "/f") == b"fresh" * 200
    feats = subprocess.run(["dumpe2fs", "-h", str(img)], capture_output=True, text=True,
                           env={**os.environ, "PATH": SBIN}).stdout
    assert "needs_recovery" not in feats
    fsck_clean(img)


def test_a_missing_or_foreign_image_is_an_error(tmp_path):
    with pytest.raises(NotFound):
        vfs(tmp_path / "none.ext4").stat("/")
    junk = tmp_path / "junk.ext4"
    junk.write_bytes(os.urandom(1 << 20))
    with pytest.raises(Corrupt):
        vfs(junk).stat("/")


def test_long_paths_up_to_the_limit_work_and_longer_ones_are_refused(img, src):
    fs = vfs(img)
    deep = "".join("/" + chr(ord("a") + i) * 250 for i in range(4))  # 1004 bytes, under MAX_PATH
    assert fs.make_dir(deep, force=True).path == deep
    assert fs.write_file(deep + "/f", src(b"deep")).size == 4
    assert [e.path for e in fs.list(deep)] == [deep + "/f"]
    # Quoted for debugfs, each '"' doubles: the longest path still fits its command line.
    quotes = "".join("/" + '"' * 200 for _ in range(5))
    assert fs.make_dir(quotes, force=True).path == quotes
    with pytest.raises(Invalid, match="longer than"):
        fs.make_dir("/" + "x/" * (MAX_PATH // 2) + "x", force=True)
    fs.remove("/aaaa" + "a" * 246)
    fs.remove("/" + '"' * 200)
    fsck_clean(img)


def test_a_stalled_debugfs_is_killed_after_the_timeout(img, src, tmp_path):
    """A crafted image could make debugfs loop: every run, and every wait for streamed content,
    is bounded by the timeout."""
    vfs(img).write_file("/f", src(b"x" * 10000))
    fake = tmp_path / "debugfs"
    fake.write_text(f'#!/bin/sh\n[ "$1" = "-R" ] && exec sleep 30\nexec {DEBUGFS} "$@"\n')
    fake.chmod(0o755)
    fs = VolumeFs(img, debugfs=str(fake), e2fsck=E2FSCK, timeout=0.5)
    start = time.monotonic()
    with pytest.raises(volume_fs.Failed, match="nothing for"):
        read(fs, "/f")
    assert time.monotonic() - start < 5
    slow = tmp_path / "slow"
    slow.write_text("#!/bin/sh\nexec sleep 30\n")
    slow.chmod(0o755)
    with pytest.raises(volume_fs.Failed, match="timed out"):
        VolumeFs(img, debugfs=str(slow), timeout=0.5).stat("/f")


def test_reads_come_in_full_chunks(img, src):
    fs = vfs(img)
    fs.write_file("/f", src(os.urandom(300_000)))
    sizes = [len(c) for c in fs.read_file("/f", chunk_size=100_000)]
    assert sizes == [100_000] * 3
    sizes = [len(c) for c in fs.read_file("/f", chunk_size=128 << 10)]
    assert sizes == [128 << 10, 128 << 10, 300_000 - (256 << 10)]


def test_errors_are_classified_by_debugfs_message_not_by_the_path_it_repeats(img, src):
    fs = vfs(img)
    for name in ("Could not allocate block in ext2 filesystem", "Ext2 file already exists",
                 "Ext2 inode is not a directory", "corrupt checksum"):
        with pytest.raises(NotFound):
            fs.stat(f"/{name}/{name}")
        fs.make_dir(f"/{name}")
        with pytest.raises(Exists):
            fs.make_dir(f"/{name}")
        assert fs.write_file(f"/{name}/{name}", src(b"ok")).size == 2
    fsck_clean(img)
