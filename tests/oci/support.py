"""Test helpers for the image layer: an OCI layout writer for images umoci cannot express, tar
layers built entry by entry, tree comparison, and `run` for the tools the tests drive. The
registries the tests pull from are in `testkit.registry`."""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import re
import stat
import subprocess
import tarfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path


def run(*argv: str, timeout: float = 120) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    return r.stdout


# -- OCI layouts made by hand ------------------------------------------------------------------------

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"


class LayoutWriter:
    """Writes blobs, manifests and indexes into an OCI image layout (creating it if needed),
    for images umoci cannot express (other architectures, indexes, broken ones)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        (path / "blobs/sha256").mkdir(parents=True, exist_ok=True)
        if not (path / "oci-layout").exists():
            (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        if not (path / "index.json").exists():
            (path / "index.json").write_text('{"schemaVersion":2,"manifests":[]}')

    def blob(self, data: bytes, media_type: str, **extra) -> dict:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        (self.path / "blobs/sha256" / digest[7:]).write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data), **extra}

    def image(self, layers: list[bytes], *, arch: str = "amd64", config: dict | None = None,
              compress: bool = True, diff_ids: list[str] | None = None) -> dict:
        """A manifest for `layers` (uncompressed tars), returning its descriptor."""
        descs = []
        for tar in layers:
            blob = gzip.compress(tar, mtime=0) if compress else tar
            descs.append(self.blob(blob, LAYER_GZIP if compress else LAYER_TAR))
        cfg = {"architecture": arch, "os": "linux", "config": config or {},
               "rootfs": {"type": "layers", "diff_ids": diff_ids if diff_ids is not None else
                          ["sha256:" + hashlib.sha256(t).hexdigest() for t in layers]}}
        config_desc = self.blob(json.dumps(cfg).encode(), OCI_CONFIG)
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_desc,
                    "layers": descs}
        return self.blob(json.dumps(manifest).encode(), OCI_MANIFEST)

    def index(self, entries: list[tuple[dict, str]]) -> dict:
        """An index over (manifest descriptor, "os/arch") pairs."""
        manifests = []
        for desc, platform in entries:
            os_, arch = platform.split("/")
            manifests.append({**desc, "platform": {"os": os_, "architecture": arch}})
        doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        return self.blob(json.dumps(doc).encode(), OCI_INDEX)

    def manifest_of(self, tag: str) -> dict:
        for m in json.loads((self.path / "index.json").read_text())["manifests"]:
            if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
                return {k: m[k] for k in ("mediaType", "digest", "size")}
        raise KeyError(tag)

    def tag(self, desc: dict, name: str) -> None:
        index = json.loads((self.path / "index.json").read_text())
        index["manifests"] = [m for m in index["manifests"] if m.get("annotations", {}).get(
            "org.opencontainers.image.ref.name") != name]
        index["manifests"].append({**desc, "annotations": {"org.opencontainers.image.ref.name": name}})
        (self.path / "index.json").write_text(json.dumps(index))


@dataclass
class Entry:
    """A tar entry to build test layers with."""

    name: str
    type: bytes = tarfile.REGTYPE
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, bytes] | None = None


def make_tar(entries: list[Entry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type = e.type
            info.mode = e.mode
            info.uid, info.gid = e.uid, e.gid
            info.mtime = 1_700_000_000
            info.linkname = e.linkname
            info.devmajor, info.devminor = e.devmajor, e.devminor
            if e.xattrs:
                info.pax_headers = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape")
                                    for k, v in e.xattrs.items()}
            if e.type == tarfile.REGTYPE:
                info.size = len(e.data)
                tf.addfile(info, io.BytesIO(e.data))
            else:
                tf.addfile(info)
    return buf.getvalue()


# -- comparing trees --------------------------------------------------------------------------------

def snapshot_tree(root: Path) -> dict[str, tuple]:
    """path -> (type, mode, uid, gid, size-or-target-or-rdev, content hash, xattrs, inode group)."""
    out: dict[str, tuple] = {}
    inodes: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            kind = stat.S_IFMT(st.st_mode)
            what: str | tuple[int, int] | None  # link target, content hash or (major, minor)
            if stat.S_ISLNK(st.st_mode):
                what = os.readlink(p)
                xattrs = {}
            else:
                xattrs = {k: os.getxattr(p, k, follow_symlinks=False)
                          for k in os.listxattr(p, follow_symlinks=False)}
                if stat.S_ISREG(st.st_mode):
                    what = hashlib.sha256(Path(p).read_bytes()).hexdigest()
                elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                    what = (os.major(st.st_rdev), os.minor(st.st_rdev))
                else:
                    what = None
            link_group = None
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                link_group = inodes.setdefault(st.st_ino, rel)
            out[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, what,
                        tuple(sorted(xattrs.items())), link_group)
    return out


def declared_tree(tree) -> dict[str, tuple]:
    """`snapshot_tree`'s shape, from an unpacked `oci.ImageTree`: the content of the host tree with
    the metadata the image declares (which the host files do not carry)."""
    out: dict[str, tuple] = {}
    inodes: dict[int, str] = {}
    for rel, st, meta in tree.walk():
        if rel == ".":
            continue
        assert meta is not None, f"{rel}: no declared metadata"
        p = tree.root / rel
        what: str | tuple[int, int] | None
        if meta.kind == stat.S_IFLNK:
            what = os.readlink(p)
        elif meta.kind == stat.S_IFREG:
            what = hashlib.sha256(p.read_bytes()).hexdigest()
        elif meta.rdev is not None:
            what = meta.rdev
        else:
            what = None
        link_group = None
        if meta.kind == stat.S_IFREG and st.st_nlink > 1:
            link_group = inodes.setdefault(st.st_ino, rel)
        xattrs = () if meta.kind == stat.S_IFLNK else tuple(sorted(meta.xattrs))
        out[rel] = (meta.kind, meta.mode if meta.kind != stat.S_IFLNK else stat.S_IMODE(st.st_mode),
                    meta.uid, meta.gid, what, xattrs, link_group)
    return out


_LS_RECORD = re.compile(rb"/(\d+)/([0-7]+)/(\d+)/(\d+)/([^/]*)/(\d*)/\n")
_DEV_RE = re.compile(r"Device major/minor number: (\d+):(\d+)")


def _debugfs(image: Path, commands: list[str]) -> str:
    r = subprocess.run(["debugfs", "-f", "-", str(image)], input="\n".join(commands) + "\n",
                       capture_output=True, text=True, errors="surrogateescape", timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def ext4_tree(image: Path, work: Path) -> dict[str, tuple]:
    """`snapshot_tree`'s shape, read from an ext4 image with debugfs (never mounted, nothing of it
    made on the host but the regular files' bytes under `work`). Without lost+found."""
    work.mkdir(parents=True, exist_ok=True)
    entries: dict[str, tuple[int, int, int, int]] = {}  # rel -> (ino, mode, uid, gid)
    level = [("", 2)]
    while level:
        below = []
        for rel_dir, ino in level:
            listing = subprocess.run(["debugfs", "-R", f"ls -p <{ino}>", str(image)], capture_output=True,
                                     timeout=60).stdout
            for m in _LS_RECORD.finditer(listing):
                name = os.fsdecode(m[5])
                if name in (".", "..") or (not rel_dir and name == "lost+found"):
                    continue
                rel = f"{rel_dir}/{name}" if rel_dir else name
                child, mode = int(m[1]), int(m[2], 8)
                entries[rel] = (child, mode, int(m[3]), int(m[4]))
                if stat.S_ISDIR(mode):
                    below.append((rel, child))
        level = below
    dumps = [f"dump <{ino}> {work}/{ino}" for ino, mode, _, _ in entries.values() if stat.S_ISREG(mode)]
    _debugfs(image, dumps)
    counts: dict[int, int] = {}
    for ino, *_ in entries.values():
        counts[ino] = counts.get(ino, 0) + 1
    out: dict[str, tuple] = {}
    groups: dict[int, str] = {}
    for rel in sorted(entries):
        ino, mode, uid, gid = entries[rel]
        info = _debugfs(image, [f"stat <{ino}>", f"ea_list <{ino}>"])
        what: str | tuple[int, int] | None = None
        if stat.S_ISREG(mode):
            what = hashlib.sha256((work / str(ino)).read_bytes()).hexdigest()
        elif stat.S_ISLNK(mode):
            what = info.split('Fast link dest: "', 1)[1].split('"\n', 1)[0]
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            dev = _DEV_RE.search(info)
            assert dev is not None, info
            what = (int(dev[1]), int(dev[2]))  # decimal first, then "(hex ...)"
        xattrs = []
        listed = info.split("debugfs: ea_list", 1)[1]
        for line in listed.split("Extended attributes:", 1)[1].splitlines() if "Extended attributes:" in listed else ():
            attr = re.match(r"^\s+(\S+) \((\d+)\)", line)
            if attr:
                value = work / f"x{ino}"
                _debugfs(image, [f"ea_get -f {value} <{ino}> {attr[1]}"])
                xattrs.append((attr[1], value.read_bytes()))
        link_group = groups.setdefault(ino, rel) if stat.S_ISREG(mode) and counts[ino] > 1 else None
        out[rel] = (stat.S_IFMT(mode), stat.S_IMODE(mode), uid, gid, what, tuple(sorted(xattrs)), link_group)
    return out


def host_tree_is_inert(root: Path) -> list[str]:
    """What in an unpacked host tree is not plain: setuid/setgid/sticky bits, device nodes, FIFOs,
    sockets, xattrs, files not owned by us, group/other permissions."""
    problems = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames + ([] if dirpath != str(root) else ["."]):
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            kind = stat.S_IFMT(st.st_mode)
            if kind not in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK):
                problems.append(f"{p}: type {kind:o}")
            if st.st_mode & 0o7000:
                problems.append(f"{p}: mode {stat.S_IMODE(st.st_mode):o}")
            if kind != stat.S_IFLNK and st.st_mode & 0o077:
                problems.append(f"{p}: group/other access {stat.S_IMODE(st.st_mode):o}")
            if st.st_uid != os.geteuid():
                problems.append(f"{p}: owner {st.st_uid}")
            if kind != stat.S_IFLNK and os.listxattr(p, follow_symlinks=False):
                problems.append(f"{p}: xattrs {os.listxattr(p, follow_symlinks=False)}")
    return problems


@contextlib.asynccontextmanager
async def http_server(handle) -> AsyncIterator[str]:
    """An aiohttp server on 127.0.0.1 answering every GET with ``handle(request)``; yields
    ``host:port``."""
    from aiohttp import web

    from testkit.ports import free_port

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await runner.cleanup()
