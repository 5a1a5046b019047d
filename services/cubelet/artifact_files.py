"""Files that travel between nodes, described by name, size, content digest and mode: the common
part of a template's manifest (template_manifest.py) and a paused sandbox's (paused_manifest.py).

Invariants:
- A name is a key of the caller's fixed table; each side maps it to a path of its own, so no path
  crosses the wire.
- A digest is the SHA-256 of a file's whole content (a sparse file's holes read as zeros), computed
  once and cached in ``<dir>/manifest.json`` keyed by the file's (inode, size, mtime). The files
  described here are never written in place once they are final, so a cached digest stays true
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
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("cubelet.artifact_files")

CHUNK = 1 << 20  # what is read, hashed, sent and written at once: memory per transfer, each side
CACHE = "manifest.json"


class UnreadableFile(Exception):
    """A file a manifest must describe cannot be read."""


@dataclass(frozen=True)
class ArtifactFile:
    name: str  # a key of the caller's table
    path: Path  # where it is on this node
    size: int
    sha256: str
    mode: int  # permission bits


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


def stat_key(st: os.stat_result) -> list[int]:
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def read_cache(path: Path, names: Collection[str]) -> dict[str, dict]:
    """The cached digest entries of ``path`` (a CACHE file) for ``names``; nothing when unreadable."""
    try:
        raw = json.loads(path.read_text())
        return {k: v for k, v in raw.get("artifacts", {}).items() if k in names and isinstance(v, dict)}
    except (OSError, ValueError, AttributeError):
        return {}


def write_cache(directory: Path, digests: dict[str, tuple[Path, str]]) -> None:
    """Record the digests of files (name -> (path, sha256)) in ``directory``, keyed by their stat now."""
    entries = {name: {"key": stat_key(os.stat(path)), "sha256": digest} for name, (path, digest) in digests.items()}
    tmp = directory / f".{CACHE}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"artifacts": entries}, f, indent=1)
    os.replace(tmp, directory / CACHE)


def describe(paths: dict[str, Path], cache_dir: Path, log_extra: dict[str, str]) -> tuple[ArtifactFile, ...]:
    """The files ``paths`` names (name -> path) with their digests: from ``cache_dir``'s cache where
    it still holds, hashed (and cached) where not. Blocking, and seconds per GB hashed: call it off
    the loop. Raises UnreadableFile."""
    cached = read_cache(cache_dir / CACHE, paths.keys())
    files: list[ArtifactFile] = []
    digests: dict[str, tuple[Path, str]] = {}
    hashed, cacheable = False, True
    for name, path in paths.items():
        try:
            st = os.stat(path)
            hit = cached.get(name, {})
            if hit.get("key") == stat_key(st) and isinstance(hit.get("sha256"), str):
                digest = hit["sha256"]
            else:
                digest = sha256_of(path)
                hashed = True
                log.info("artifact hashed", extra={**log_extra, "artifact": name, "bytes": st.st_size})
                # Changed while it was read: served all the same (the receiver checks every byte),
                # but the digest of a moving file is never cached.
                cacheable = cacheable and stat_key(os.stat(path)) == stat_key(st)
        except OSError as e:
            raise UnreadableFile(f"its {name} ({path}) is unreadable: {e}") from e
        digests[name] = (path, digest)
        files.append(ArtifactFile(name, path, st.st_size, digest, stat.S_IMODE(st.st_mode)))
    if hashed and cacheable:
        try:
            write_cache(cache_dir, digests)
        except OSError as e:  # a cache that cannot be written costs a re-hash next time, nothing more
            log.warning("digest cache not written", extra={**log_extra, "error": str(e)})
    return tuple(files)
