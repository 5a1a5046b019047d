"""Apply image layers, in order, to a root directory, as a container runtime would.

Why not `tarfile.extractall`: its filters either refuse what images need (device nodes, absolute
symlink targets, setuid) or trust what they must not. Here every entry is placed by hand:

- Names are relative; an absolute name or a `..` component is refused (UnsafeLayer).
- Parent directories are resolved *inside* the root: a symlink met on the way is followed as if
  the root were `/` (absolute targets restart at the root, `..` stops at it), so a layer writing
  `bin/x` over a usrmerged `bin -> usr/bin` lands in `usr/bin/x`, and nothing can be written
  outside the root. The entry's own last component is never followed: an existing file, link or
  directory there is replaced.
- Hard links must name a path inside the image (relative, no `..`, resolved inside the root).
  Symlinks are created with their targets as given: they are only read by the guest.
- Whiteouts: `.wh.NAME` removes NAME from lower layers; `DIR/.wh..wh..opq` empties DIR of
  everything lower layers put there (entries of the same layer stay, whatever their order).
- Metadata: numeric uid/gid (names ignored), mode incl. setuid/setgid/sticky (set after chown,
  which clears them), mtime, xattrs from PAX `SCHILY.xattr.*` / `LIBARCHIVE.xattr.*` (set last:
  chown clears `security.capability`). Device nodes and FIFOs are made with mknod (needs root).
- Compression is detected from the bytes: gzip and zstd are decompressed by `gzip`/`zstd`
  child processes (a second core works while Python writes files), plain tar is read directly.
  The uncompressed stream is hashed and checked against the config's diff_id.
"""
from __future__ import annotations

import base64
import errno
import hashlib
import logging
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from .errors import DigestMismatch, InvalidImage, OciError, UnsafeLayer

log = logging.getLogger(__name__)

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_BUF = 1 << 20
# tarfile's stream buffer: it re-slices the buffer on every header read, so a large one costs
# O(buffer) per entry; 64 KiB measured best on a 12k-entry Debian root.
_TAR_BUF = 1 << 16
_MAX_SYMLINK_HOPS = 40
_PROGRESS_INTERVAL = 0.1


class UnpackCancelled(OciError):
    """The caller asked the unpacker to stop (its task was cancelled)."""


@dataclass
class LayerStats:
    entries: int = 0
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    devices: int = 0
    whiteouts: int = 0
    uncompressed_bytes: int = 0
    warnings: list[str] = field(default_factory=list)


def unpack_layer(blob: Path, root: Path, *, diff_id: str | None = None, what: str = "layer",
                 on_progress: Callable[[int], None] | None = None,
                 cancel: threading.Event | None = None) -> LayerStats:
    """Apply one layer blob (gzip, zstd or plain tar) to `root`, which must exist.

    `on_progress(n)` is called with the compressed bytes consumed so far (throttled).
    Raises UnsafeLayer, InvalidImage (corrupt stream), DigestMismatch (diff_id)."""
    stats = LayerStats()
    # Unbuffered: the decompressor child shares this file description, so the OS offset must
    # be exactly where we left it (and it then tells how far the child has read).
    with open(blob, "rb", buffering=0) as f:
        magic = os.pread(f.fileno(), 4, 0)
        if not magic:  # an empty blob is an empty layer
            return stats
        if magic.startswith(_GZIP_MAGIC):
            argv = ["gzip", "-dc"]
        elif magic.startswith(_ZSTD_MAGIC):
            argv = ["zstd", "-dcq"]
        else:
            argv = None
        position = lambda: os.lseek(f.fileno(), 0, os.SEEK_CUR)  # noqa: E731 (shared with child)
        if argv is None:
            _apply_stream(f, root, diff_id, what, stats, position, on_progress, cancel)
            return stats
        with tempfile.TemporaryFile() as errf:
            proc = subprocess.Popen(argv, stdin=f, stdout=subprocess.PIPE, stderr=errf)
            assert proc.stdout is not None  # stdout=PIPE
            try:
                try:
                    _apply_stream(proc.stdout, root, diff_id, what, stats, position, on_progress,
                                  cancel)
                except (InvalidImage, DigestMismatch):
                    proc.kill()
                    proc.wait()
                    errf.seek(0)
                    err = errf.read().decode(errors="replace").strip()
                    if err:  # the decompressor's own reason is the better one
                        raise InvalidImage(f"{what}: corrupt compressed layer: {argv[0]}: {err}") from None
                    raise
                rc = proc.wait()
                errf.seek(0)
                err = errf.read().decode(errors="replace").strip()
                # gzip exits 2 for a warning (e.g. trailing zeros some tools append).
                if rc != 0 and not (argv[0] == "gzip" and rc == 2):
                    raise InvalidImage(f"{what}: corrupt compressed layer: {argv[0]} exit {rc}: {err}")
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                proc.stdout.close()
    return stats


class _HashingReader:
    """Hashes (and counts) what tarfile reads, so the whole uncompressed stream is checked."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self.hash = hashlib.sha256()
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self.hash.update(data)
        self.count += len(data)
        return data

    def drain(self) -> None:
        while self.read(_BUF):
            pass


def _apply_stream(raw: IO[bytes], root: Path, diff_id: str | None, what: str, stats: LayerStats,
                  position: Callable[[], int], on_progress: Callable[[int], None] | None,
                  cancel: threading.Event | None) -> None:
    reader = _HashingReader(raw)
    applier = _Applier(root, what, stats)
    last_report = 0.0
    try:
        # typeshed wants a seekable, writable file object for every mode; "r|" only reads.
        with tarfile.open(fileobj=reader, mode="r|", bufsize=1 << 14,  # type: ignore[call-overload]
                          errors="surrogateescape") as tf:
            for member in tf:
                if cancel is not None and cancel.is_set():
                    raise UnpackCancelled(f"{what}: cancelled")
                applier.apply(tf, member)
                if on_progress is not None:
                    now = time.monotonic()
                    if now - last_report >= _PROGRESS_INTERVAL:
                        last_report = now
                        on_progress(position())
        reader.drain()  # end-of-archive padding is part of the diff_id
    except tarfile.TarError as e:
        raise InvalidImage(f"{what}: not a valid tar stream: {e}") from None
    except EOFError as e:
        raise InvalidImage(f"{what}: truncated tar stream: {e}") from None
    applier.finish()
    stats.uncompressed_bytes = reader.count
    if on_progress is not None:
        on_progress(position())
    if diff_id:
        actual = "sha256:" + reader.hash.hexdigest()
        if actual != diff_id:
            raise DigestMismatch(f"{what}: uncompressed content (diff_id)", diff_id, actual)


def _parts(name: str, what: str) -> tuple[str, ...]:
    if name.startswith("/"):
        raise UnsafeLayer(f"{what}: absolute path {name!r} in layer")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise UnsafeLayer(f"{what}: path {name!r} climbs out with '..'")
    return parts


class _Applier:
    def __init__(self, root: Path, what: str, stats: LayerStats) -> None:
        self.root = os.path.realpath(root)
        self.what = what
        self.stats = stats
        self._dirs: dict[tuple[str, ...], str] = {}  # resolved parent dirs; cleared on removals
        self._written: set[str] = set()              # paths this layer created
        self._written_dirs: set[str] = set()         # and their ancestors (for opaque dirs)
        self._dir_times: list[tuple[str, float]] = []

    # -- path resolution -------------------------------------------------------------------
    def resolve_dir(self, parts: tuple[str, ...], create: bool) -> str | None:
        """The real path of directory `parts`, following symlinks inside the root; missing
        directories are made (0755, root) when `create`, else None is returned."""
        cached = self._dirs.get(parts)
        if cached is not None:
            return cached
        real: list[str] = []
        pending = list(parts)
        hops = 0
        while pending:
            comp = pending.pop(0)
            if comp in ("", "."):
                continue
            if comp == "..":
                if real:
                    real.pop()
                continue
            path = os.path.join(self.root, *real, comp)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                if not create:
                    return None
                os.mkdir(path, 0o755)
                self._mark_written(path)
                real.append(comp)
                continue
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > _MAX_SYMLINK_HOPS:
                    raise UnsafeLayer(f"{self.what}: too many symlinks resolving {'/'.join(parts)!r}")
                target = os.readlink(path)
                if target.startswith("/"):
                    real = []
                pending = [p for p in target.split("/") if p] + pending
            elif stat.S_ISDIR(st.st_mode):
                real.append(comp)
            else:
                raise InvalidImage(f"{self.what}: {'/'.join(parts)!r}: {'/'.join(real + [comp])!r} "
                                   "is not a directory")
        resolved = os.path.join(self.root, *real)
        self._dirs[parts] = resolved
        return resolved

    def _mark_written(self, path: str) -> None:
        self._written.add(path)
        parent = os.path.dirname(path)
        while len(parent) > len(self.root) and parent not in self._written_dirs:
            self._written_dirs.add(parent)
            parent = os.path.dirname(parent)

    def _remove(self, path: str) -> bool:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return False
        self._dirs.clear()
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)
        else:
            os.unlink(path)
        return True

    # -- entries ---------------------------------------------------------------------------
    def apply(self, tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        self.stats.entries += 1
        parts = _parts(m.name, self.what)
        if not parts:  # "./": the root directory's own metadata
            if m.isdir():
                self._metadata(self.root, m, is_link=False)
                self._dir_times.append((self.root, m.mtime))
            return
        base = parts[-1]
        if base.startswith(".wh."):
            self._whiteout(parts)
            return
        parent = self.resolve_dir(parts[:-1], create=True)
        assert parent is not None  # made when missing (create=True)
        path = os.path.join(parent, base)
        if m.isdir():
            self._dir(path, m)
        elif m.isreg():
            self._file(tf, path, m)
        elif m.issym():
            self._replace(path)
            os.symlink(m.linkname, path)
            self._metadata(path, m, is_link=True)
            self.stats.symlinks += 1
        elif m.islnk():
            self._hardlink(path, m)
        elif m.ischr() or m.isblk() or m.isfifo():
            self._replace(path)
            kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK if m.isblk() else stat.S_IFIFO
            os.mknod(path, kind | 0o600, os.makedev(m.devmajor, m.devminor) if kind != stat.S_IFIFO else 0)
            self._metadata(path, m, is_link=False)
            self.stats.devices += 1
        else:
            self.stats.warnings.append(f"{m.name}: skipped tar entry of type {m.type!r}")
            return
        self._mark_written(path)

    def _whiteout(self, parts: tuple[str, ...]) -> None:
        base = parts[-1]
        if base.startswith(".wh..wh.") and base != ".wh..wh..opq":
            return  # aufs bookkeeping (.wh..wh.plnk etc.), not a whiteout
        self.stats.whiteouts += 1
        parent = self.resolve_dir(parts[:-1], create=False)
        if parent is None:
            return  # hiding something under a directory that does not exist: nothing to do
        if base == ".wh..wh..opq":
            self._make_opaque(parent)
        else:
            name = base[len(".wh."):]
            if name in ("", ".", ".."):
                raise UnsafeLayer(f"{self.what}: bad whiteout {'/'.join(parts)!r}")
            self._remove(os.path.join(parent, name))

    def _make_opaque(self, directory: str) -> None:
        """Remove what lower layers put in `directory`, keeping this layer's own entries."""
        for name in os.listdir(directory):
            path = os.path.join(directory, name)
            if path in self._written_dirs:
                if os.path.isdir(path) and not os.path.islink(path):
                    self._make_opaque(path)
            elif path not in self._written:
                self._remove(path)

    def _replace(self, path: str) -> None:
        """Clear the way for a new entry at `path` (never following a link there)."""
        self._remove(path)

    def _dir(self, path: str, m: tarfile.TarInfo) -> None:
        try:
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode):
                self._remove(path)
                os.mkdir(path, 0o700)
        except FileNotFoundError:
            os.mkdir(path, 0o700)
        self._metadata(path, m, is_link=False, set_time=False)
        self._dir_times.append((path, m.mtime))
        self.stats.dirs += 1

    def _file(self, tf: tarfile.TarFile, path: str, m: tarfile.TarInfo) -> None:
        self._replace(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            src = tf.extractfile(m)
            if src is not None:
                while True:
                    chunk = src.read(_BUF)
                    if not chunk:
                        break
                    view = memoryview(chunk)
                    while view:
                        n = os.write(fd, view)
                        view = view[n:]
            self._metadata(fd, m, is_link=False)
        finally:
            os.close(fd)
        self.stats.files += 1

    def _hardlink(self, path: str, m: tarfile.TarInfo) -> None:
        target_parts = _parts(m.linkname, self.what)
        if not target_parts:
            raise UnsafeLayer(f"{self.what}: hard link {m.name!r} to the root")
        target_parent = self.resolve_dir(target_parts[:-1], create=False)
        target = os.path.join(target_parent, target_parts[-1]) if target_parent else None
        try:
            st = os.lstat(target) if target else None
        except FileNotFoundError:
            st = None
        if st is None:
            raise InvalidImage(f"{self.what}: hard link {m.name!r} to missing {m.linkname!r}")
        if stat.S_ISDIR(st.st_mode):
            raise InvalidImage(f"{self.what}: hard link {m.name!r} to directory {m.linkname!r}")
        if target == path:
            return
        assert target is not None  # else st is None, refused above
        self._replace(path)
        os.link(target, path, follow_symlinks=False)
        self.stats.hardlinks += 1

    def _metadata(self, target: str | int, m: tarfile.TarInfo, *, is_link: bool,
                  set_time: bool = True) -> None:
        follow = not is_link if isinstance(target, str) else True
        os.chown(target, m.uid, m.gid, follow_symlinks=follow)
        if not is_link:
            os.chmod(target, m.mode & 0o7777)
        for name, value in _xattrs(m):
            try:
                os.setxattr(target, name, value, follow_symlinks=follow)
            except OSError as e:
                if e.errno not in (errno.ENOTSUP, errno.EPERM, errno.EOPNOTSUPP):
                    raise
                self.stats.warnings.append(f"{m.name}: xattr {name} not set: {e.strerror}")
        if set_time:
            ns = int(m.mtime * 1e9)
            os.utime(target, ns=(ns, ns), follow_symlinks=follow)

    def finish(self) -> None:
        # Children change their directory's mtime, so directories get theirs last, deepest first.
        for path, mtime in reversed(self._dir_times):
            try:
                ns = int(mtime * 1e9)
                os.utime(path, ns=(ns, ns), follow_symlinks=False)
            except FileNotFoundError:
                pass
        for w in self.stats.warnings:
            log.warning("%s: %s", self.what, w)


def _xattrs(m: tarfile.TarInfo) -> list[tuple[str, bytes]]:
    out = []
    for key, value in m.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            out.append((key[len("SCHILY.xattr."):], value.encode("utf-8", "surrogateescape")))
        elif key.startswith("LIBARCHIVE.xattr."):
            name = urllib.parse.unquote(key[len("LIBARCHIVE.xattr."):])
            try:
                out.append((name, base64.b64decode(value + "=" * (-len(value) % 4))))
            except ValueError:
                pass
    return out
