"""The unpacker on hand-made layers: traversal refused, links confined to the root, whiteout
semantics, replacement rules, metadata (declared, not applied to host files), compression and
diff_id checks."""
from __future__ import annotations

import gzip
import hashlib
import os
import stat
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest

from services.cubelet.oci import DigestMismatch, ImageTree, InvalidImage, Meta, UnsafeLayer, unpack_layer
from services.cubelet.oci.unpack import UnpackCancelled
from tests.oci.support import Entry, host_tree_is_inert, make_tar

pytestmark = pytest.mark.timeout(60)
DIR, SYM, LNK, CHR, FIFO = tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE


@pytest.fixture
def tree(tmp_path):
    r = tmp_path / "root"
    r.mkdir()
    return ImageTree(r)


@pytest.fixture
def root(tree):
    return tree.root


def apply(tmp_path: Path, tree: ImageTree, entries: list[Entry], compress: str = "", **kw):
    raw = make_tar(entries)
    blob = tmp_path / f"layer-{hashlib.sha256(raw).hexdigest()[:8]}"
    if compress == "gzip":
        blob.write_bytes(gzip.compress(raw))
    elif compress == "zstd":
        blob.write_bytes(subprocess.run(["zstd", "-q", "-c"], input=raw, capture_output=True,
                                        check=True).stdout)
    else:
        blob.write_bytes(raw)
    kw.setdefault("diff_id", "sha256:" + hashlib.sha256(raw).hexdigest())
    return unpack_layer(blob, tree, **kw)


@pytest.mark.parametrize("name", ["../evil", "a/../../evil", "/etc/evil", "./../evil"])
def test_path_traversal_refused(tmp_path, tree, root, name):
    with pytest.raises(UnsafeLayer):
        apply(tmp_path, tree, [Entry(name, data=b"x")])
    assert not (tmp_path / "evil").exists()


@pytest.mark.parametrize("target", ["../../outside", "/etc/passwd", "a/../../x"])
def test_hard_link_escaping_refused(tmp_path, tree, root, target):
    with pytest.raises(UnsafeLayer):
        apply(tmp_path, tree, [Entry("h", LNK, linkname=target)])


def test_hard_link_to_missing_file(tmp_path, tree, root):
    with pytest.raises(InvalidImage, match="missing"):
        apply(tmp_path, tree, [Entry("h", LNK, linkname="nope")])


def test_symlinked_dirs_stay_inside_root(tmp_path, tree, root):
    outside = tmp_path / "outside"
    outside.mkdir()
    apply(tmp_path, tree, [Entry("abs", SYM, linkname=str(outside)),
                           Entry("rel", SYM, linkname="../../../../outside"),
                           Entry("loop", SYM, linkname="loop")])
    # Writing through them is resolved as if root were "/": both land inside the root.
    apply(tmp_path, tree, [Entry("abs/f1", data=b"1"), Entry("rel/f2", data=b"2"),
                           Entry("h", LNK, linkname="abs/f1")])
    assert list(outside.iterdir()) == []
    assert (root / str(outside).lstrip("/") / "f1").read_bytes() == b"1"
    assert (root / "outside/f2").read_bytes() == b"2"
    assert os.lstat(root / "h").st_ino == os.lstat(root / str(outside).lstrip("/") / "f1").st_ino
    with pytest.raises(UnsafeLayer, match="too many symlinks"):
        apply(tmp_path, tree, [Entry("loop/x", data=b"x")])


def test_existing_symlink_is_replaced_not_followed(tmp_path, tree, root):
    target = tmp_path / "victim"
    target.write_text("keep")
    apply(tmp_path, tree, [Entry("f", SYM, linkname=str(target))])
    apply(tmp_path, tree, [Entry("f", data=b"new")])
    assert target.read_text() == "keep"
    assert not os.path.islink(root / "f") and (root / "f").read_bytes() == b"new"


def test_whiteouts_and_opaque_directories(tmp_path, tree, root):
    apply(tmp_path, tree, [Entry("d", DIR, mode=0o755), Entry("d/a", data=b"a"), Entry("d/b", data=b"b"),
                           Entry("o", DIR, mode=0o755), Entry("o/x", data=b"x"),
                           Entry("o/sub", DIR, mode=0o755), Entry("o/sub/y", data=b"y"),
                           Entry("p", DIR, mode=0o755), Entry("p/old", data=b"old"),
                           Entry("tree", DIR, mode=0o755), Entry("tree/deep", DIR, mode=0o755),
                           Entry("tree/deep/f", data=b"f")])
    st = apply(tmp_path, tree, [
        Entry("d/.wh.a"),
        Entry("tree/.wh.deep"),
        Entry("o/.wh..wh..opq"), Entry("o/new", data=b"n"),
        # Same-layer entries written *before* the opaque marker survive it.
        Entry("p/fresh", data=b"fresh"), Entry("p/.wh..wh..opq"),
        Entry("missing/.wh.x"),  # whiteout under a directory that does not exist: no-op
        Entry(".wh..wh.plnk"),   # aufs bookkeeping: ignored
    ])
    assert sorted(os.listdir(root / "d")) == ["b"]
    assert os.listdir(root / "tree") == []
    assert sorted(os.listdir(root / "o")) == ["new"]
    assert sorted(os.listdir(root / "p")) == ["fresh"]
    assert not (root / "missing").exists()
    assert st.whiteouts == 5


def test_replacements(tmp_path, tree, root):
    apply(tmp_path, tree, [Entry("d", DIR), Entry("d/f", data=b"1"), Entry("f", data=b"2"),
                           Entry("l", SYM, linkname="f")])
    apply(tmp_path, tree, [Entry("d", data=b"now a file"), Entry("f", DIR, mode=0o711),
                           Entry("l", data=b"was a link")])
    assert (root / "d").read_bytes() == b"now a file"
    declared = tree.declared(root / "f")
    assert stat.S_ISDIR(os.lstat(root / "f").st_mode) and declared is not None
    assert (declared.kind, declared.mode) == (stat.S_IFDIR, 0o711)
    assert (root / "l").read_bytes() == b"was a link" and not os.path.islink(root / "l")
    # A directory entry over an existing directory keeps its content and takes the new metadata.
    apply(tmp_path, tree, [Entry("f", DIR, mode=0o700, uid=5, gid=6), Entry("f/x", data=b"")])
    apply(tmp_path, tree, [Entry("f", DIR, mode=0o755, uid=7, gid=8)])
    declared = tree.declared(root / "f")
    assert declared is not None and (declared.mode, declared.uid, declared.gid) == (0o755, 7, 8)
    assert os.listdir(root / "f") == ["x"]


def test_metadata_is_declared_not_applied(tmp_path, tree, root):
    apply(tmp_path, tree, [
        Entry("./", DIR, mode=0o755, uid=9, gid=9),
        Entry("suid", data=b"#!", mode=0o4755, uid=0, gid=0),
        Entry("owned", data=b"o", mode=0o2640, uid=1001, gid=1002, xattrs={
            "user.bin": b"\x00\xff\xfe binary",
            "security.capability": b"\x01\x00\x00\x02" + bytes(16),
            "trusted.overlay.opaque": b"y", "security.selinux": b"unconfined_u"}),
        Entry("link", SYM, linkname="/nowhere", uid=3, gid=4),
        Entry("null", CHR, mode=0o666, devmajor=1, devminor=3),
        Entry("pipe", FIFO, mode=0o600),
        Entry("implicit/parent/file", data=b"p"),
        Entry("hard", LNK, linkname="owned"),
    ])
    d = tree.declared
    assert d(root) == Meta(stat.S_IFDIR, 0o755, 9, 9)
    assert d(root / "suid") == Meta(stat.S_IFREG, 0o4755)
    owned = d(root / "owned")
    assert owned is not None and (owned.mode, owned.uid, owned.gid) == (0o2640, 1001, 1002)
    assert dict(owned.xattrs) == {"user.bin": b"\x00\xff\xfe binary",
                                  "security.capability": b"\x01\x00\x00\x02" + bytes(16)}
    assert d(root / "hard") is owned and os.lstat(root / "owned").st_nlink == 2
    assert os.lstat(root / "owned").st_mtime == 1_700_000_000
    assert d(root / "link") == Meta(stat.S_IFLNK, 0o777, 3, 4)
    assert os.readlink(root / "link") == "/nowhere"
    assert d(root / "null") == Meta(stat.S_IFCHR, 0o666, rdev=(1, 3))
    assert d(root / "pipe") == Meta(stat.S_IFIFO, 0o600)
    assert d(root / "implicit") == Meta(stat.S_IFDIR, 0o755)
    # On the host: plain files, directories and links only, ours, private, without xattrs.
    assert host_tree_is_inert(root) == []
    assert stat.S_IMODE(os.lstat(root).st_mode) == 0o700
    assert stat.S_ISREG(os.lstat(root / "null").st_mode) and os.lstat(root / "null").st_size == 0


@pytest.mark.parametrize("compress", ["", "gzip", "zstd"])
def test_compression_and_diff_id(tmp_path, tree, root, compress):
    entries = [Entry("a", data=os.urandom(3 << 20)), Entry("b", data=b"b")]
    positions: list[int] = []
    stats = apply(tmp_path, tree, entries, compress, on_progress=positions.append)
    assert stats.files == 2 and (root / "b").read_bytes() == b"b"
    assert positions and positions[-1] == os.path.getsize(next(tmp_path.glob("layer-*")))
    with pytest.raises(DigestMismatch, match="diff_id"):
        apply(tmp_path, tree, entries, compress, diff_id="sha256:" + "1" * 64)


def test_corrupt_compressed_stream(tmp_path, tree, root):
    blob = tmp_path / "bad"
    data = bytearray(gzip.compress(make_tar([Entry("a", data=os.urandom(1 << 20))])))
    data[len(data) // 2:len(data) // 2 + 64] = bytes(64)
    blob.write_bytes(bytes(data))
    with pytest.raises(InvalidImage, match=r"corrupt compressed layer|not a valid tar"):
        unpack_layer(blob, tree)


def test_cancel(tmp_path, tree, root):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(UnpackCancelled):
        apply(tmp_path, tree, [Entry("a", data=b"a")], cancel=cancel)


def test_empty_blob_is_an_empty_layer(tmp_path, tree, root):
    blob = tmp_path / "empty"
    blob.write_bytes(b"")
    assert unpack_layer(blob, tree).entries == 0
