"""Hostile images, built here and served by the test registry: each gives a clear build error
(UnsafeLayer, InvalidImage, ImageTooLarge) or a safe result, and nothing of them appears on the
host outside the test's state directory. A safe result is checked on both sides: the host tree
holds nothing but plain private files, and the template's ext4 image holds what the image declares.

The corpus: a setuid binary, device nodes and security/trusted xattrs; `../` and absolute paths;
hard links out of the root (directly, with `..`, through a symlink); a symlink written through;
a gzip bomb (64 MiB of zeros in a 64 KiB layer, against a 16 MiB layer limit, as 64 files and
as one) and an image over
its total limit; too many entries; long paths and names; an oversized PAX header; a sparse
member. A manifest larger than 4 MiB (the test registry will not store one) and hostile
registries are in test_image_egress.py; the image's users (/etc/passwd as a symlink to /dev/zero
or to the host's /etc/shadow) in test_image_templates.py.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import subprocess
import tarfile
import uuid
from pathlib import Path

import pytest

from services.cubelet.oci import (
    DEFAULT_LIMITS,
    ImageRef,
    ImageTooLarge,
    InvalidImage,
    Limits,
    Meta,
    UnsafeLayer,
    apply_metadata,
    fetch_image,
)
from tests.oci.conftest import assert_nothing_left
from tests.oci.support import Entry, LayoutWriter, ext4_tree, host_tree_is_inert, make_tar, run
from vmm_core import ext4_from_dir

pytestmark = pytest.mark.timeout(120)
DIR, SYM, LNK, CHR, BLK, FIFO = (tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE,
                                 tarfile.BLKTYPE, tarfile.FIFOTYPE)
MARK = uuid.uuid4().hex[:12]
OUTSIDE = Path(f"/tmp/cube-hostile-{MARK}")  # where an escaping write would land
SMALL = Limits(max_layer_bytes=16 << 20, max_image_bytes=24 << 20, max_entries=1000)
# security.capability v2: CAP_NET_RAW (13) permitted and effective.
CAP = b"\x01\x00\x00\x02" + (1 << 13).to_bytes(4, "little") + bytes(12)


def _sparse_tar() -> bytes:
    """A GNU sparse member ('S'): tarfile cannot write one, so a regular header is retyped."""
    raw = bytearray(make_tar([Entry("sparse", data=b"x" * 100)]))
    # The first header is the PAX one make_tar writes; find the member's own ustar header.
    offset = next(i for i in range(0, len(raw), 512) if raw[i:i + 6] == b"sparse")
    raw[offset + 156:offset + 157] = b"S"
    raw[offset + 148:offset + 156] = b" " * 8
    raw[offset + 148:offset + 155] = f"{sum(raw[offset:offset + 512]):06o}\0".encode()
    return bytes(raw)


def _corpus() -> dict[str, list[list[Entry]] | bytes]:
    return {
        "privileged": [[
            Entry("./", DIR, mode=0o755),
            Entry("bin/", DIR, mode=0o755),
            Entry("bin/suid", data=b"#!/bin/sh\n", mode=0o4755),
            Entry("bin/sgid", data=b"#!/bin/sh\n", mode=0o2755, gid=50),
            Entry("bin/ping", data=b"ping", mode=0o755, xattrs={
                "security.capability": CAP, "security.selinux": b"system_u:object_r:bin_t:s0",
                "trusted.overlay.opaque": b"y", "user.origin": b"test"}),
            Entry("tmp/", DIR, mode=0o1777),
            Entry("dev/", DIR, mode=0o755),
            Entry("dev/mem", CHR, mode=0o666, devmajor=1, devminor=1),   # /dev/mem on the host
            Entry("dev/sda", BLK, mode=0o666, devmajor=8, devminor=0),
            Entry("dev/kmsg", CHR, mode=0o644, devmajor=1, devminor=11, uid=5, gid=6),
            Entry("dev/fifo", FIFO, mode=0o600),
            Entry("home/app/", DIR, mode=0o700, uid=1000, gid=1000),
            Entry("home/app/secret", data=b"s", mode=0o400, uid=1000, gid=1000),
        ]],
        "dotdot": [[Entry(f"../escape-{MARK}", data=b"x")]],
        "dotdot-inner": [[Entry(f"a/b/../../../escape-{MARK}", data=b"x")]],
        "absolute": [[Entry(f"{OUTSIDE}/absolute", data=b"x")]],
        "hardlink-absolute": [[Entry("h", LNK, linkname="/etc/shadow")]],
        "hardlink-dotdot": [[Entry("h", LNK, linkname="../../../../etc/shadow")]],
        "hardlink-via-symlink": [[Entry("e", SYM, linkname="/etc"), Entry("h", LNK, linkname="e/shadow")]],
        "write-through-symlink": [[Entry("out", SYM, linkname=str(OUTSIDE)),
                                   Entry("rel", SYM, linkname="../../../../../../tmp")],
                                  [Entry("out/pwned", data=b"x"), Entry(f"rel/cube-hostile-{MARK}-rel", data=b"x")]],
        "bomb": [[Entry(f"zeros{i}", data=bytes(1 << 20)) for i in range(64)]],
        "bomb-one-file": [[Entry("zeros", data=bytes(64 << 20))]],
        "over-image-limit": [[Entry("a", data=bytes(12 << 20))], [Entry("b", data=bytes(12 << 20))]],
        "many-entries": [[Entry(f"d/{i}", data=b"") for i in range(1500)]],
        "long-path": [[Entry("a/" * 2100 + "f", data=b"x")]],
        "long-name": [[Entry("n" * 300, data=b"x")]],
        "big-header": [[Entry("f", data=b"x", xattrs={"user.big": b"v" * (2 << 20)})]],
        "sparse": _sparse_tar(),
    }


@pytest.fixture(scope="module")
def hostile(oci_env, tmp_path_factory) -> dict[str, ImageRef]:
    work = tmp_path_factory.mktemp("hostile")
    w = LayoutWriter(work / "layout")
    for name, layers in _corpus().items():
        tars = [layers] if isinstance(layers, bytes) else [make_tar(entries) for entries in layers]
        w.tag(w.image(tars), name)
    refs = {}
    for name in _corpus():
        run("skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{w.path}:{name}",
            f"docker://{oci_env.anon.host}/hostile/{name}:1")
        refs[name] = ImageRef.parse(f"{oci_env.anon.host}/hostile/{name}:1", insecure=True)
    return refs


@pytest.fixture(scope="module")
def shadow() -> tuple[int, str]:
    st = os.stat("/etc/shadow")
    return st.st_mtime_ns, hashlib.sha256(Path("/etc/shadow").read_bytes()).hexdigest()


def nothing_escaped(tmp_path: Path, shadow: tuple[int, str]) -> list[str]:
    """Where an escape from the unpack root would have written, and the host file a hard link
    out of the root would have named."""
    found = [str(p) for p in (OUTSIDE, tmp_path / f"escape-{MARK}", tmp_path.parent / f"escape-{MARK}",
                              Path("/") / f"escape-{MARK}", Path(f"/tmp/cube-hostile-{MARK}-rel"))
             if os.path.lexists(p)]
    st = os.stat("/etc/shadow")
    if (st.st_mtime_ns, hashlib.sha256(Path("/etc/shadow").read_bytes()).hexdigest()) != shadow:
        found.append("/etc/shadow changed")
    return found


async def build(ref: ImageRef, tmp_path: Path, cache, oci_env, limits: Limits = DEFAULT_LIMITS):
    """What the cubelet does with an image: fetch, unpack, mkfs.ext4 -d, apply the metadata."""
    unpacked = await fetch_image(ref, tmp_path / "root", cache, access=oci_env.access, limits=limits)
    image = await asyncio.to_thread(ext4_from_dir, unpacked.root, tmp_path / "image.ext4")
    await asyncio.to_thread(apply_metadata, unpacked.tree, image)
    fsck = await asyncio.to_thread(subprocess.run, ["e2fsck", "-fn", str(image)], capture_output=True,
                                   text=True, timeout=60)
    assert fsck.returncode == 0, fsck.stdout
    return unpacked, image


async def test_privileged_files_live_only_in_the_image(oci_env, hostile, cache, tmp_path, shadow):
    unpacked, image = await build(hostile["privileged"], tmp_path, cache, oci_env)
    # Host: plain, private, ours; no setuid, device, FIFO or xattr; the tree's top is 0700.
    assert host_tree_is_inert(unpacked.root) == []
    assert stat.S_IMODE(os.lstat(unpacked.root).st_mode) == 0o700
    # Image: all of it, except the xattrs a root filesystem has no business carrying.
    ext4 = await asyncio.to_thread(ext4_tree, image, tmp_path / "dump")
    assert ext4["bin/suid"][:4] == (stat.S_IFREG, 0o4755, 0, 0)
    assert ext4["bin/sgid"][:4] == (stat.S_IFREG, 0o2755, 0, 50)
    assert ext4["bin/ping"][5] == (("security.capability", CAP), ("user.origin", b"test"))
    assert ext4["tmp"][:2] == (stat.S_IFDIR, 0o1777)
    assert ext4["dev/mem"][:5] == (stat.S_IFCHR, 0o666, 0, 0, (1, 1))
    assert ext4["dev/sda"][:5] == (stat.S_IFBLK, 0o666, 0, 0, (8, 0))
    assert ext4["dev/kmsg"][:5] == (stat.S_IFCHR, 0o644, 5, 6, (1, 11))
    assert ext4["dev/fifo"][:2] == (stat.S_IFIFO, 0o600)
    assert ext4["home/app"][:4] == (stat.S_IFDIR, 0o700, 1000, 1000)
    assert ext4["home/app/secret"][:4] == (stat.S_IFREG, 0o400, 1000, 1000)
    # Directory entries know the types too (readdir's d_type: overlayfs finds whiteouts by it).
    listing = (await asyncio.to_thread(subprocess.run, ["debugfs", "-R", "ls -l /dev", str(image)],
                                       capture_output=True, text=True)).stdout
    assert " 20666 (3) " in listing and " 60666 (4) " in listing and " 10600 (5) " in listing
    assert nothing_escaped(tmp_path, shadow) == []


@pytest.mark.parametrize("name, error, match", [
    ("dotdot", UnsafeLayer, r"climbs out with '\.\.'"),
    ("dotdot-inner", UnsafeLayer, r"climbs out with '\.\.'"),
    ("absolute", UnsafeLayer, "absolute path"),
    ("hardlink-absolute", UnsafeLayer, "absolute path '/etc/shadow'"),
    ("hardlink-dotdot", UnsafeLayer, r"climbs out with '\.\.'"),
    # Resolved inside the root, where there is no etc/shadow.
    ("hardlink-via-symlink", InvalidImage, "hard link 'h' to missing 'e/shadow'"),
    ("long-path", ImageTooLarge, "a path of 4201 bytes"),
    ("long-name", ImageTooLarge, "a file name of 300 bytes"),
    ("big-header", ImageTooLarge, "a tar header of"),
    ("sparse", InvalidImage, "sparse tar members are not supported"),
])
async def test_refused(oci_env, hostile, cache, tmp_path, shadow, name, error, match):
    dest = tmp_path / "root"
    with pytest.raises(error, match=match):
        await fetch_image(hostile[name], dest, cache, access=oci_env.access)
    assert_nothing_left(dest, cache)
    assert nothing_escaped(tmp_path, shadow) == []


async def test_write_through_symlinks_stays_inside(oci_env, hostile, cache, tmp_path, shadow):
    unpacked, _ = await build(hostile["write-through-symlink"], tmp_path, cache, oci_env)
    # Both links are followed as the guest would follow them: from the image's own root.
    inside = unpacked.root / str(OUTSIDE).lstrip("/") / "pwned"
    assert inside.read_bytes() == b"x"
    assert (unpacked.root / f"tmp/cube-hostile-{MARK}-rel").read_bytes() == b"x"
    assert os.readlink(unpacked.root / "out") == str(OUTSIDE)
    assert nothing_escaped(tmp_path, shadow) == []


@pytest.mark.parametrize("name, match", [
    ("bomb", "expands to more than 16777216 bytes .the limit of one layer."),
    ("bomb-one-file", "'zeros' is 67108864 bytes .limit of one layer 16777216."),
    ("over-image-limit", "the image expands to more than 25165824 bytes .the limit of one image."),
    ("many-entries", "more than 1000 entries"),
])
async def test_limits(oci_env, hostile, cache, tmp_path, shadow, name, match):
    dest = tmp_path / "root"
    with pytest.raises(ImageTooLarge, match=match):
        await fetch_image(hostile[name], dest, cache, access=oci_env.access, limits=SMALL)
    assert_nothing_left(dest, cache)
    assert nothing_escaped(tmp_path, shadow) == []


async def test_bomb_is_small_on_disk(oci_env, hostile, cache, tmp_path):
    """The bomb's blob is tiny, and the default limits take it whole (64 MiB is a bomb only
    against SMALL): the limits, not the unpacker, decide."""
    image = await pull_image_of(hostile["bomb"], cache, oci_env)
    layer = image.manifest.layers[0]
    assert layer.size < 256 << 10
    unpacked = await fetch_image(hostile["bomb"], tmp_path / "root", cache, access=oci_env.access)
    assert sum(p.stat().st_size for p in unpacked.root.iterdir()) == 64 << 20
    assert unpacked.tree.declared(unpacked.root / "zeros0") == Meta(stat.S_IFREG, 0o644)
    assert unpacked.tree.bytes > 64 << 20


async def test_compressed_layer_over_the_limit_is_not_downloaded(oci_env, hostile, cache, tmp_path):
    mark = oci_env.anon.mark()
    with pytest.raises(ImageTooLarge, match="bytes compressed, more than the limit of one layer"):
        await fetch_image(hostile["privileged"], tmp_path / "root", cache, access=oci_env.access,
                          limits=Limits(max_layer_bytes=100))
    gets = [p for m, p, s in oci_env.anon.requests_since(mark) if "/blobs/" in p and m == "GET"]
    layers = (await pull_image_of(hostile["privileged"], cache, oci_env)).manifest.layers
    assert gets and not [p for p in gets for d in layers if d.digest in p]  # the config only


async def pull_image_of(ref: ImageRef, cache, oci_env):
    from services.cubelet.oci import pull_image

    return await pull_image(ref, cache, access=oci_env.access)
