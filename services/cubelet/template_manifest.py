"""What a ready template is on disk, file by file, with the content digest of each file.

A template's current build (services/cubelet/templates.py) travels between nodes as a fixed set of
named artifacts, ``ARTIFACTS``: its root filesystem image, the snapshot's metadata, device state,
memory and frozen writable layer, and the guest artifacts the snapshot's machine names (kernel,
initramfs, base image). A restored guest has the base image's and the root image's pages in its
memory, so a node that runs a pulled snapshot must run it on these very bytes, not on its own
build of "the same" artifact: they travel with the template.

Invariants:
- A name is only ever a key of ``ARTIFACTS``. Each side maps it to a path of its own (``sources``
  on the serving node, ``ARTIFACTS[name]`` under the build dir on the receiving one), so no path
  crosses the wire in either direction.
- The pristine qcow2 overlay is not an artifact: it names its backing file by absolute path. A
  receiving node makes its own (pull.py).
- A digest is the SHA-256 of a file's whole content (a sparse file's holes read as zeros), computed
  once and cached in the build's ``manifest.json`` keyed by the file's (inode, size, mtime). A
  template's files are never written after its snapshot is taken, so a cached digest stays true
  until the file is replaced, which changes the key. A corruption that keeps size and mtime is not
  seen here; the receiving node checks every byte it gets against the digest.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from vmm_core import Snapshot, SnapshotKind, VmmError

from .templates import Template

log = logging.getLogger("cubelet.template_manifest")

CHUNK = 1 << 20  # what is read, hashed, sent and written at once: memory per transfer, each side
CACHE = "manifest.json"

# Artifact name -> where a pulled template keeps it, relative to its build dir. (A node that built
# the template itself finds kernel, initramfs and base image in its artifact cache instead.)
ARTIFACTS: dict[str, str] = {
    "image.ext4": "image.ext4",
    "snapshot.json": "snapshot/snapshot.json",
    "state": "snapshot/state",
    "memory": "snapshot/memory",
    "disk.img": "snapshot/disk.img",
    "kernel": "guest/vmlinuz",
    "initramfs": "guest/initramfs",
    "base.img": "guest/base.img",
}
# The disks of every template machine, in their (positional) order: vmm_core/artifacts.py.
DISK_SERIALS = ("cube-base", "cube-tpl", "cube-rw")


class ManifestError(Exception):
    """The template's files are not what a ready template is made of."""


@dataclass(frozen=True)
class ArtifactFile:
    name: str  # a key of ARTIFACTS
    path: Path  # where it is on this node
    size: int
    sha256: str
    mode: int  # permission bits


@dataclass(frozen=True)
class Manifest:
    template_id: str
    build_key: str
    files: tuple[ArtifactFile, ...]

    def get(self, name: str) -> ArtifactFile | None:
        return next((f for f in self.files if f.name == name), None)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def check_disks(snap: Snapshot) -> None:
    """The machine a template snapshot recreates has the standard three disks, in order."""
    disks = snap.spec.disks
    if tuple(d.serial for d in disks) != DISK_SERIALS or [d.readonly for d in disks] != [True, True, False]:
        raise ManifestError(f"snapshot {snap.dir} has disks {[d.serial for d in disks]}, not {list(DISK_SERIALS)}")


def sources(tpl: Template) -> dict[str, Path]:
    """Where each artifact of ``tpl``'s current build is on this node (nothing is read but the
    snapshot's metadata)."""
    try:
        snap = tpl.load_snapshot()
    except VmmError as e:
        raise ManifestError(str(e)) from e
    if snap.kind is not SnapshotKind.TEMPLATE:
        raise ManifestError(f"{snap.dir} is a {snap.kind.value} snapshot, not a template's")
    check_disks(snap)
    base, image, _ = snap.spec.disks
    return {"image.ext4": image.path, "snapshot.json": snap.meta, "state": snap.state, "memory": snap.memory,
            "disk.img": snap.disk, "kernel": snap.spec.kernel, "initramfs": snap.spec.initramfs,
            "base.img": base.path}


def data_ranges(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """The (start, end) ranges of ``fd`` that hold data, up to ``size``: a sparse file's holes left
    out (all of it where the filesystem cannot tell)."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # nothing but a hole is left
                return
            yield pos, size  # EINVAL: no SEEK_DATA here
            return
        if start >= size:
            return
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end
        pos = end


def sha256_of(path: Path) -> str:
    """The file's digest, read CHUNK at a time. Blocking."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def _stat_key(st: os.stat_result) -> list[int]:
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def _read_cache(path: Path) -> dict[str, dict]:
    try:
        raw = json.loads(path.read_text())
        return {k: v for k, v in raw.get("artifacts", {}).items() if k in ARTIFACTS and isinstance(v, dict)}
    except (OSError, ValueError, AttributeError):
        return {}


def write_cache(build_dir: Path, digests: dict[str, tuple[Path, str]]) -> None:
    """Record the digests of the files of a build (name -> (path, sha256)), keyed by their stat now."""
    entries = {name: {"key": _stat_key(os.stat(path)), "sha256": digest} for name, (path, digest) in digests.items()}
    tmp = build_dir / f".{CACHE}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"artifacts": entries}, f, indent=1)
    os.replace(tmp, build_dir / CACHE)


def manifest(tpl: Template) -> Manifest:
    """``tpl``'s artifacts with their digests: from the cache where it still holds, hashed (and
    cached) where not. Blocking, and seconds for a template's first manifest: call it off the loop."""
    paths = sources(tpl)
    cached = _read_cache(tpl.build_dir / CACHE)
    files: list[ArtifactFile] = []
    digests: dict[str, tuple[Path, str]] = {}
    hashed, cacheable = False, True
    for name, path in paths.items():
        try:
            st = os.stat(path)
            hit = cached.get(name, {})
            if hit.get("key") == _stat_key(st) and isinstance(hit.get("sha256"), str):
                digest = hit["sha256"]
            else:
                digest = sha256_of(path)
                hashed = True
                log.info("template artifact hashed", extra={"template_id": tpl.template_id, "artifact": name,
                                                             "bytes": st.st_size})
                # Changed while it was read: served all the same (the receiver checks every byte),
                # but the digest of a moving file is never cached.
                cacheable = cacheable and _stat_key(os.stat(path)) == _stat_key(st)
        except OSError as e:
            raise ManifestError(f"template {tpl.template_id}: its {name} ({path}) is unreadable: {e}") from e
        digests[name] = (path, digest)
        files.append(ArtifactFile(name, path, st.st_size, digest, stat.S_IMODE(st.st_mode)))
    if hashed and cacheable:
        try:
            write_cache(tpl.build_dir, digests)
        except OSError as e:  # a cache that cannot be written costs a re-hash next time, nothing more
            log.warning("template digest cache not written", extra={"template_id": tpl.template_id,
                                                                   "error": str(e)})
    return Manifest(tpl.template_id, tpl.build_key, tuple(files))


def known_files(templates: Iterable[Template]) -> dict[str, ArtifactFile]:
    """Files this node already holds, by digest: the cached digests of its templates that still
    match their files. What a pull hard-links instead of fetching (the base image and kernel that
    many templates share, above all)."""
    out: dict[str, ArtifactFile] = {}
    for tpl in templates:
        cached = _read_cache(tpl.build_dir / CACHE)
        if not cached:
            continue
        try:
            paths = sources(tpl)
        except ManifestError:
            continue
        for name, entry in cached.items():
            path = paths.get(name)
            try:
                st = os.stat(path) if path is not None else None
            except OSError:
                continue
            if path is not None and st is not None and entry.get("key") == _stat_key(st):
                out.setdefault(str(entry.get("sha256")),
                               ArtifactFile(name, path, st.st_size, str(entry["sha256"]), stat.S_IMODE(st.st_mode)))
    return out
