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
- Digests are artifact_files.py's, cached in the build's ``manifest.json``: a template's files are
  never written after its snapshot is taken.
"""
from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from vmm_core import Snapshot, SnapshotKind, VmmError

from .artifact_files import CACHE, ArtifactFile, UnreadableFile, describe, read_cache, stat_key
from .templates import Template

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


def manifest(tpl: Template) -> Manifest:
    """``tpl``'s artifacts with their digests: from the cache where it still holds, hashed (and
    cached) where not. Blocking, and seconds for a template's first manifest: call it off the loop."""
    try:
        files = describe(sources(tpl), tpl.build_dir, {"template_id": tpl.template_id})
    except UnreadableFile as e:
        raise ManifestError(f"template {tpl.template_id}: {e}") from e
    return Manifest(tpl.template_id, tpl.build_key, files)


def known_files(templates: Iterable[Template]) -> dict[str, ArtifactFile]:
    """Files this node already holds, by digest: the cached digests of its templates that still
    match their files. What a pull hard-links instead of fetching (the base image and kernel that
    many templates share, above all)."""
    out: dict[str, ArtifactFile] = {}
    for tpl in templates:
        cached = read_cache(tpl.build_dir / CACHE, ARTIFACTS)
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
            if path is not None and st is not None and entry.get("key") == stat_key(st):
                out.setdefault(str(entry.get("sha256")),
                               ArtifactFile(name, path, st.st_size, str(entry["sha256"]), stat.S_IMODE(st.st_mode)))
    return out
