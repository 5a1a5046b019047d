"""Apply image layers, in order, to a host directory that receives their *content* only; what the
image declares about each file (owner, mode, device numbers, xattrs) goes into a table that
`ext4.apply_metadata` writes into the template's ext4 image.

Nothing the image declares is applied to host files. The cubelet runs as root and the image is a
tenant's: a setuid binary, a device node or a `security.*` xattr made on the host would be real
there. So the host tree (`ImageTree.root`, made 0700) holds only directories (0700), regular files
(0600), symlinks, all owned by the cubelet, without setuid/setgid/sticky bits, device nodes, FIFOs
or xattrs. A device node or FIFO of the image is an empty regular file on the host (a placeholder)
whose type and device numbers ext4.py gives it inside the image. `ImageTree.meta` maps each host
inode to the `Meta` the layers declared last (type, mode with its special bits, numeric uid and
gid, device numbers, xattrs): keyed by inode, hard links share it, and every inode the unpacker
creates gets its entry anew, so an inode number the host reuses never inherits a stale one.

Why not `tarfile.extractall`: its filters either refuse what images need (absolute symlink
targets, device nodes) or trust what they must not. Every entry is placed by hand:

- Names are relative; an absolute name or a `..` component is refused (UnsafeLayer). A name or
  link target longer than `Limits.max_path_bytes`, or a component longer than `max_name_bytes`,
  is refused (ImageTooLarge).
- Parent directories are resolved *inside* the root: a symlink met on the way is followed as if
  the root were `/` (absolute targets restart at the root, `..` stops at it), so a layer writing
  `bin/x` over a usrmerged `bin -> usr/bin` lands in `usr/bin/x`, and nothing can be written
  outside the root. The entry's own last component is never followed: an existing file, link or
  directory there is replaced. Files are created with O_EXCL | O_NOFOLLOW.
- Hard links must name a path inside the image (relative, no `..`, resolved inside the root).
  Symlinks are created with their targets as given: they are only read by the guest.
- Whiteouts: `.wh.NAME` removes NAME from lower layers; `DIR/.wh..wh..opq` empties DIR of
  everything lower layers put there (entries of the same layer stay, whatever their order).
- Metadata: numeric uid/gid (names ignored, 32 bits), mode incl. setuid/setgid/sticky, mtime (set
  on the host file: harmless, and mkfs copies it), and of the xattrs in PAX `SCHILY.xattr.*` /
  `LIBARCHIVE.xattr.*` those a root filesystem needs (`user.*`, `security.capability`); others
  (`trusted.*`, `security.selinux`, ...) are dropped with a warning.
- Sparse tar members are refused (their maps would be read into memory unbounded), and so is a
  PAX or GNU long-name header larger than `Limits.max_header_bytes`.
- Compression is detected from the bytes: gzip and zstd are decompressed by `gzip`/`zstd`
  child processes (a second core works while Python writes files), plain tar is read directly.
  The uncompressed stream is hashed and checked against the config's diff_id.
- Limits (limits.py): the uncompressed bytes of a layer and of all layers (`ImageTree.bytes`) are
  counted as the stream is read, so a decompression bomb stops at the limit with ImageTooLarge
  rather than filling the disk; tar entries of all layers are counted against `max_entries`.

The image's users: /etc/passwd and /etc/group are kept in memory from the tar entries as they
are applied (regular files up to `Limits.max_user_db_bytes`, at the resolved path
`<root>/etc/passwd`), replaced by later layers and forgotten when a whiteout, an opaque directory
or a replacing entry removes them. `ImageTree.user_db` returns the final content; nothing ever
opens them in the host tree, where a symlink could point at /dev/zero or the host's /etc/shadow.
"""
from __future__ import annotations

import base64
import errno
import hashlib
import logging
import os
import re
import shutil
import stat
import subprocess
import tarfile
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .errors import DigestMismatch, ImageTooLarge, InvalidImage, OciError, UnsafeLayer
from .limits import DEFAULT_LIMITS, Limits

log = logging.getLogger(__name__)

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_BUF = 1 << 20
_MAX_SYMLINK_HOPS = 40
_PROGRESS_INTERVAL = 0.1
USER_DBS = ("passwd", "group")
_USER_DB_PATHS = frozenset(f"etc/{n}" for n in USER_DBS)
# xattrs kept in the image: what a root filesystem legitimately carries (file capabilities, user
# data). trusted.* (the guest's overlayfs reads trusted.overlay.*) and LSM labels are dropped.
_XATTR_KEEP = re.compile(r"^(user\.[A-Za-z0-9._@+-]{1,200}|security\.capability)\Z")
_XATTR_MAX_VALUE = 64 << 10
_MAX_UID = (1 << 32) - 2  # (uid_t)-1 means "no change" to the kernel
_MTIME_RANGE = (-(1 << 31), (1 << 34) - 1)  # what ext4 stores (1901-2446)


class UnpackCancelled(OciError):
    """The caller asked the unpacker to stop (its task was cancelled)."""


@dataclass(frozen=True, slots=True)
class Meta:
    """What the image declares for one inode. `kind` is a stat.S_IF* type, `mode` the
    permission bits with setuid/setgid/sticky (0o7777), `rdev` (major, minor) for devices."""

    kind: int
    mode: int
    uid: int = 0
    gid: int = 0
    rdev: tuple[int, int] | None = None
    xattrs: tuple[tuple[str, bytes], ...] = ()

    @property
    def st_mode(self) -> int:
        return self.kind | self.mode


_ROOT_DEFAULT = Meta(stat.S_IFDIR, 0o755)


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


class ImageTree:
    """An image being unpacked: the host directory with its content, the declared metadata per
    host inode, the counters the limits apply to, and the image's /etc/passwd and /etc/group."""

    def __init__(self, root: Path | str, limits: Limits = DEFAULT_LIMITS) -> None:
        self.root = Path(os.path.realpath(root))
        os.chmod(self.root, 0o700)
        self.limits = limits
        self.meta: dict[int, Meta] = {os.lstat(self.root).st_ino: _ROOT_DEFAULT}
        self.entries = 0
        self.bytes = 0
        self._user_db: dict[str, bytes | None] = {}  # "etc/passwd" -> content (None: too large)

    # -- what unpacking produced ---------------------------------------------------------------
    def declared(self, path: Path | str) -> Meta | None:
        """The metadata the image declares for the host file at `path` (never followed)."""
        return self.meta.get(os.lstat(path).st_ino)

    def walk(self) -> Iterator[tuple[str, os.stat_result, Meta | None]]:
        """(path relative to the root, its host lstat, its declared metadata), root first."""
        yield ".", os.lstat(self.root), self.meta.get(os.lstat(self.root).st_ino)
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                yield os.path.relpath(path, self.root), st, self.meta.get(st.st_ino)

    def user_db(self, name: str) -> bytes | None:
        """The image's /etc/<name> (passwd or group) as its layers left it, or None when the image
        has no regular file there (absent, whited out, a symlink, under a symlinked /etc).
        ImageTooLarge when it was larger than `Limits.max_user_db_bytes`."""
        path = f"etc/{name}"
        if path not in self._user_db:
            return None
        content = self._user_db[path]
        if content is None:
            raise ImageTooLarge(f"the image's /etc/{name} is larger than {self.limits.max_user_db_bytes} bytes")
        return content

    def moved(self, root: Path | str) -> None:
        """The tree was renamed to `root` (inodes, and so the metadata, stay)."""
        self.root = Path(os.path.realpath(root))

    # -- used by the applier ----------------------------------------------------------------------
    def _set(self, target: str | int, meta: Meta) -> None:
        st = os.fstat(target) if isinstance(target, int) else os.lstat(target)
        self.meta[st.st_ino] = meta

    def _rel(self, path: str) -> str:
        """`path` (resolved, inside the root) relative to the root."""
        root = str(self.root)
        return "." if path == root else path[len(root) + 1:]

    def _forget(self, path: str) -> None:
        """`path` (and everything under it) left the tree."""
        rel = self._rel(path)
        for p in [p for p in self._user_db if p == rel or p.startswith(rel + "/") or rel == "."]:
            del self._user_db[p]


def unpack_layer(blob: Path, tree: ImageTree, *, diff_id: str | None = None, what: str = "layer",
                 on_progress: Callable[[int], None] | None = None,
                 cancel: threading.Event | None = None) -> LayerStats:
    """Apply one layer blob (gzip, zstd or plain tar) to `tree`.

    `on_progress(n)` is called with the compressed bytes consumed so far (throttled).
    Raises UnsafeLayer, ImageTooLarge, InvalidImage (corrupt stream), DigestMismatch (diff_id)."""
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
            _apply_stream(f, tree, diff_id, what, stats, position, on_progress, cancel)
            return stats
        with tempfile.TemporaryFile() as errf:
            proc = subprocess.Popen(argv, stdin=f, stdout=subprocess.PIPE, stderr=errf)
            assert proc.stdout is not None  # stdout=PIPE
            try:
                try:
                    _apply_stream(proc.stdout, tree, diff_id, what, stats, position, on_progress,
                                  cancel)
                except (ImageTooLarge, UnsafeLayer):
                    raise  # our verdict on what the stream held, not a broken stream
                except (InvalidImage, DigestMismatch):
                    proc.kill()
                    proc.wait()
                    errf.seek(0)
                    err = errf.read(4096).decode(errors="replace").strip()
                    if err:  # the decompressor's own reason is the better one
                        raise InvalidImage(f"{what}: corrupt compressed layer: {argv[0]}: {err}") from None
                    raise
                rc = proc.wait()
                errf.seek(0)
                err = errf.read(4096).decode(errors="replace").strip()
                # gzip exits 2 for a warning (e.g. trailing zeros some tools append).
                if rc != 0 and not (argv[0] == "gzip" and rc == 2):
                    raise InvalidImage(f"{what}: corrupt compressed layer: {argv[0]} exit {rc}: {err}")
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                proc.stdout.close()
    return stats


class _CountingReader:
    """Hashes and counts what tarfile reads, so the whole uncompressed stream is checked, and
    stops the read once the layer or the image holds more than its limit."""

    def __init__(self, raw: IO[bytes], tree: ImageTree, what: str) -> None:
        self._raw = raw
        self._what = what
        self._layer_limit = tree.limits.max_layer_bytes
        self._image_left = tree.limits.max_image_bytes - tree.bytes
        self._image_limit = tree.limits.max_image_bytes
        self.hash = hashlib.sha256()
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(_BUF if n is None or n < 0 else n)
        self.hash.update(data)
        self.count += len(data)
        if self.count > self._layer_limit:
            raise ImageTooLarge(f"{self._what}: expands to more than {self._layer_limit} bytes "
                                "(the limit of one layer)")
        if self.count > self._image_left:
            raise ImageTooLarge(f"{self._what}: the image expands to more than {self._image_limit} "
                                "bytes (the limit of one image)")
        return data

    def drain(self) -> None:
        while self.read(_BUF):
            pass


class _CheckedTarInfo(tarfile.TarInfo):
    """Refuses what tarfile would otherwise hold in memory without bound: oversized PAX / GNU
    long-name headers and sparse maps. `max_header` is set per layer (see `_tarinfo_class`)."""

    max_header = DEFAULT_LIMITS.max_header_bytes
    _HEADERS = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                tarfile.SOLARIS_XHDTYPE)

    def _proc_member(self, tf: tarfile.TarFile) -> Any:
        if self.type in self._HEADERS and self.size > self.max_header:
            raise ImageTooLarge(f"a tar header of {self.size} bytes (limit {self.max_header})")
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise InvalidImage("sparse tar members are not supported")
        return tarfile.TarInfo._proc_member(self, tf)  # type: ignore[attr-defined]

    def _proc_gnusparse_00(self, *args: Any) -> Any:
        raise InvalidImage("sparse tar members are not supported")

    _proc_gnusparse_01 = _proc_gnusparse_10 = _proc_gnusparse_00


def _tarinfo_class(limits: Limits) -> type[tarfile.TarInfo]:
    if limits.max_header_bytes == _CheckedTarInfo.max_header:
        return _CheckedTarInfo
    return type("_CheckedTarInfo", (_CheckedTarInfo,), {"max_header": limits.max_header_bytes})


def _apply_stream(raw: IO[bytes], tree: ImageTree, diff_id: str | None, what: str, stats: LayerStats,
                  position: Callable[[], int], on_progress: Callable[[int], None] | None,
                  cancel: threading.Event | None) -> None:
    reader = _CountingReader(raw, tree, what)
    applier = _Applier(tree, what, stats)
    last_report = 0.0
    member: tarfile.TarInfo | None = None
    try:
        # typeshed wants a seekable, writable file object for every mode; "r|" only reads.
        with tarfile.open(fileobj=reader, mode="r|", bufsize=1 << 14,  # type: ignore[call-overload]
                          errors="surrogateescape", tarinfo=_tarinfo_class(tree.limits)) as tf:
            while (member := tf.next()) is not None:
                tf.members.clear()  # a stream is read once: do not keep every header in memory
                if cancel is not None and cancel.is_set():
                    raise UnpackCancelled(f"{what}: cancelled")
                applier.apply(tf, member)
                if on_progress is not None:
                    now = time.monotonic()
                    if now - last_report >= _PROGRESS_INTERVAL:
                        last_report = now
                        on_progress(position())
        reader.drain()  # end-of-archive padding is part of the diff_id
    except InvalidImage as e:
        if str(e).startswith(what):
            raise
        raise type(e)(f"{what}: {e}") from None  # raised by _CheckedTarInfo, which has no name
    except tarfile.TarError as e:
        raise InvalidImage(f"{what}: not a valid tar stream: {e}") from None
    except EOFError as e:
        raise InvalidImage(f"{what}: truncated tar stream: {e}") from None
    except RecursionError:
        raise InvalidImage(f"{what}: too many chained tar headers") from None
    except OSError as e:
        if e.errno in (errno.ENAMETOOLONG, errno.ELOOP, errno.EMLINK, errno.ENOTDIR):
            name = member.name if member is not None else "?"
            raise InvalidImage(f"{what}: {name!r}: {e.strerror}") from None
        raise
    finally:
        tree.bytes += reader.count
    applier.finish()
    stats.uncompressed_bytes = reader.count
    if on_progress is not None:
        on_progress(position())
    if diff_id:
        actual = "sha256:" + reader.hash.hexdigest()
        if actual != diff_id:
            raise DigestMismatch(f"{what}: uncompressed content (diff_id)", diff_id, actual)


def _encoded_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogateescape"))


def _parts(name: str, what: str, limits: Limits) -> tuple[str, ...]:
    if _encoded_len(name) > limits.max_path_bytes:
        raise ImageTooLarge(f"{what}: a path of {_encoded_len(name)} bytes (limit {limits.max_path_bytes})")
    if name.startswith("/"):
        raise UnsafeLayer(f"{what}: absolute path {name!r} in layer")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise UnsafeLayer(f"{what}: path {name!r} climbs out with '..'")
    for p in parts:
        if _encoded_len(p) > limits.max_name_bytes:
            raise ImageTooLarge(f"{what}: a file name of {_encoded_len(p)} bytes "
                                f"(limit {limits.max_name_bytes})")
    return parts


def _mtime_ns(m: tarfile.TarInfo) -> int:
    lo, hi = _MTIME_RANGE
    return int(min(max(float(m.mtime), lo), hi) * 1_000_000_000)


class _Applier:
    def __init__(self, tree: ImageTree, what: str, stats: LayerStats) -> None:
        self.tree = tree
        self.root = str(tree.root)
        self.limits = tree.limits
        self.what = what
        self.stats = stats
        self._dirs: dict[tuple[str, ...], str] = {}  # resolved parent dirs; cleared on removals
        self._written: set[str] = set()              # paths this layer created
        self._written_dirs: set[str] = set()         # and their ancestors (for opaque dirs)
        self._dir_times: list[tuple[str, int]] = []

    # -- path resolution -------------------------------------------------------------------
    def resolve_dir(self, parts: tuple[str, ...], create: bool) -> str | None:
        """The real path of directory `parts`, following symlinks inside the root; missing
        directories are made (declared 0755, root) when `create`, else None is returned."""
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
                os.mkdir(path, 0o700)
                self.tree._set(path, Meta(stat.S_IFDIR, 0o755))
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
        self.tree._forget(path)
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)
        else:
            os.unlink(path)
        return True

    # -- entries ---------------------------------------------------------------------------
    def apply(self, tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        self.stats.entries += 1
        self.tree.entries += 1
        if self.tree.entries > self.limits.max_entries:
            raise ImageTooLarge(f"{self.what}: the image has more than {self.limits.max_entries} entries")
        parts = _parts(m.name, self.what, self.limits)
        if m.issym() or m.islnk():
            if _encoded_len(m.linkname) > self.limits.max_path_bytes:
                raise ImageTooLarge(f"{self.what}: {m.name!r}: a link target of "
                                    f"{_encoded_len(m.linkname)} bytes (limit {self.limits.max_path_bytes})")
        if not parts:  # "./": the root directory's own metadata
            if m.isdir():
                self.tree._set(self.root, self._meta(m, stat.S_IFDIR))
                self._dir_times.append((self.root, _mtime_ns(m)))
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
            ns = _mtime_ns(m)
            os.utime(path, ns=(ns, ns), follow_symlinks=False)
            self.tree._set(path, self._meta(m, stat.S_IFLNK))
            self.stats.symlinks += 1
        elif m.islnk():
            self._hardlink(path, m)
        elif m.ischr() or m.isblk() or m.isfifo():
            self._special(path, m)
        else:
            self.stats.warnings.append(f"{m.name}: skipped tar entry of type {m.type!r}")
            return
        self._mark_written(path)

    def _meta(self, m: tarfile.TarInfo, kind: int) -> Meta:
        for ident in (m.uid, m.gid):
            if not isinstance(ident, int) or not 0 <= ident <= _MAX_UID:
                raise InvalidImage(f"{self.what}: {m.name!r}: owner id {ident!r} out of range")
        rdev = None
        if kind in (stat.S_IFCHR, stat.S_IFBLK):
            if not (0 <= m.devmajor < 1 << 12 and 0 <= m.devminor < 1 << 20):
                raise InvalidImage(f"{self.what}: {m.name!r}: device {m.devmajor}:{m.devminor} out of range")
            rdev = (m.devmajor, m.devminor)
        mode = 0o777 if kind == stat.S_IFLNK else m.mode & 0o7777
        return Meta(kind, mode, m.uid, m.gid, rdev, self._xattrs(m))

    def _xattrs(self, m: tarfile.TarInfo) -> tuple[tuple[str, bytes], ...]:
        kept = []
        for name, value in _xattrs(m):
            if not _XATTR_KEEP.match(name) or len(value) > _XATTR_MAX_VALUE:
                self.stats.warnings.append(f"{m.name}: xattr {name[:80]!r} not kept")
                continue
            kept.append((name, value))
        return tuple(kept)

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
        self.tree._set(path, self._meta(m, stat.S_IFDIR))
        self._dir_times.append((path, _mtime_ns(m)))
        self.stats.dirs += 1

    def _create(self, path: str) -> int:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)

    def _file(self, tf: tarfile.TarFile, path: str, m: tarfile.TarInfo) -> None:
        if m.size > self.limits.max_layer_bytes:
            raise ImageTooLarge(f"{self.what}: {m.name!r} is {m.size} bytes (limit of one layer "
                                f"{self.limits.max_layer_bytes})")
        meta = self._meta(m, stat.S_IFREG)
        self._replace(path)
        rel = self.tree._rel(path) if os.path.basename(path) in USER_DBS else ""
        user_db = rel in _USER_DB_PATHS
        keep = user_db and m.size <= self.limits.max_user_db_bytes
        kept: list[bytes] = []
        fd = self._create(path)
        try:
            src = tf.extractfile(m)
            if src is not None:
                while True:
                    chunk = src.read(_BUF)
                    if not chunk:
                        break
                    if keep:
                        kept.append(chunk)
                    view = memoryview(chunk)
                    while view:
                        n = os.write(fd, view)
                        view = view[n:]
            ns = _mtime_ns(m)
            os.utime(fd, ns=(ns, ns))
            self.tree._set(fd, meta)
        finally:
            os.close(fd)
        if user_db:
            self.tree._user_db[rel] = b"".join(kept) if keep else None
        self.stats.files += 1

    def _special(self, path: str, m: tarfile.TarInfo) -> None:
        """A device node or FIFO: an empty placeholder here, its type is set in the image."""
        kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK if m.isblk() else stat.S_IFIFO
        meta = self._meta(m, kind)
        self._replace(path)
        fd = self._create(path)
        try:
            ns = _mtime_ns(m)
            os.utime(fd, ns=(ns, ns))
            self.tree._set(fd, meta)
        finally:
            os.close(fd)
        self.stats.devices += 1

    def _hardlink(self, path: str, m: tarfile.TarInfo) -> None:
        target_parts = _parts(m.linkname, self.what, self.limits)
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
        rel, target_rel = self.tree._rel(path), self.tree._rel(target)
        if rel in _USER_DB_PATHS and target_rel in self.tree._user_db:
            self.tree._user_db[rel] = self.tree._user_db[target_rel]
        self.stats.hardlinks += 1

    def finish(self) -> None:
        # Children change their directory's mtime, so directories get theirs last, deepest first.
        for path, ns in reversed(self._dir_times):
            try:
                os.utime(path, ns=(ns, ns), follow_symlinks=False)
            except FileNotFoundError:
                pass
        for w in self.stats.warnings[:20]:
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
