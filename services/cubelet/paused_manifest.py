"""What a paused sandbox is on disk, file by file, for a node asked to resume it elsewhere.

A pause (SandboxManager.pause) leaves a vmm_core SAVED snapshot in ``<paused_dir>/<sandbox_id>``:
``snapshot.json`` (the machine, naming this node's template files), ``state`` (RAM and devices)
and ``disk.qcow2`` (the sandbox's writable overlay, reading through its template's disk). These
three files travel under the names of ``ARTIFACTS``; the rest of what the machine needs is its
template's, which the receiving node has (or pulls: pull.py) in the same build. A filesystem-only
pause leaves a DISK snapshot: the same without ``state`` (``DISK_ARTIFACTS``).

Invariants:
- A name is only ever one of ``ARTIFACTS``, each a file name in the sandbox's own saved dir; a peer
  names a sandbox id (checked) and a name of that table, never a path.
- The build a sandbox was paused from is read from its saved machine, whose template image is
  ``<templates_dir>/<template_id>/builds/<build_key>/image.ext4``: the machine cloned from that
  build, its overlay reads through that build's disk, and its memory holds pages of its images. A
  saved machine naming anything else is not served.
- A save is identified by the digest of its ``snapshot.json`` (``save_id``): written once by the
  save, never rewritten on this node, and different for every save (it holds the save's time). A
  fetch names it, so a sandbox resumed (and paused again) meanwhile is never served in pieces of
  two saves.
- Digests are artifact_files.py's, cached in the saved dir (``manifest.json``; the saved dir goes
  as a whole when the sandbox resumes or is killed).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vmm_core import Snapshot, SnapshotKind, VmmError

from .artifact_files import ArtifactFile, UnreadableFile, describe, sha256_of
from .template_manifest import DISK_SERIALS
from .templates import valid_template_id

ARTIFACTS = ("snapshot.json", "state", "disk.qcow2")
DISK_ARTIFACTS = ("snapshot.json", "disk.qcow2")  # a filesystem-only pause's
_TEMPLATE_IMAGE = "image.ext4"


class PausedStateError(Exception):
    """The saved state is not what a paused sandbox's is made of."""


@dataclass(frozen=True)
class PausedFiles:
    template_id: str
    build_key: str
    save_id: str
    files: tuple[ArtifactFile, ...]


def paused_from(snap: Snapshot, templates_dir: Path) -> tuple[str, str]:
    """The (template id, build key) the saved machine was cloned from."""
    image = next((d.path for d in snap.spec.disks if d.serial == DISK_SERIALS[1]), None)
    if image is None or image.name != _TEMPLATE_IMAGE:
        raise PausedStateError(f"{snap.dir} saved a machine without a template image")
    build, builds, tdir = image.parent, image.parent.parent, image.parent.parent.parent
    if builds.name != "builds" or tdir.parent != templates_dir or not valid_template_id(tdir.name):
        raise PausedStateError(f"{snap.dir} saved a machine whose template image {image} is not in a template build")
    return tdir.name, build.name


def describe_paused(saved: Path, templates_dir: Path, sandbox_id: str) -> PausedFiles:
    """The saved state in ``saved`` with its digests. Blocking (hashes what is not cached)."""
    try:
        snap = Snapshot.load(saved)
    except VmmError as e:
        raise PausedStateError(str(e)) from e
    if snap.kind not in (SnapshotKind.SAVED, SnapshotKind.DISK):
        raise PausedStateError(f"{saved} is a {snap.kind.value} snapshot, not a saved sandbox")
    template_id, build_key = paused_from(snap, templates_dir)
    names = ARTIFACTS if snap.kind is SnapshotKind.SAVED else DISK_ARTIFACTS
    try:
        files = describe({name: saved / name for name in names}, saved, {"sandbox_id": sandbox_id})
    except UnreadableFile as e:
        raise PausedStateError(f"sandbox {sandbox_id}: {e}") from e
    meta = next(f for f in files if f.name == "snapshot.json")
    return PausedFiles(template_id, build_key, meta.sha256, files)


def save_id(saved: Path) -> str:
    """The id of the save in ``saved`` (a few KB hashed). Blocking."""
    return sha256_of(saved / "snapshot.json")
