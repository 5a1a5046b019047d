"""The build files store: the archives the E2B SDK uploads for a template's COPY steps.

``Template.build()`` asks ``GET /templates/{id}/files/{hash}`` whether the archive of a COPY step
is already here and, if not, PUTs a tar (gzip by default) to the signed URL it got back
(routes/build_files.py). This module is the one owner of what lands on disk; the routes and the
node's builds only go through it (a cubelet on the same machine reads the same directory,
``shared.build_files_dir``; one elsewhere fetches an archive through a signed read URL).

Layout (``root`` is the ``build_files_dir`` setting, default ``<state_dir>/build-files``)::

    <root>/.signing-key            32 random bytes: the HMAC key of upload URLs (0600)
    <root>/<team>/<sha256hex>.tar  one COPY step's files as a plain tar (0600)
    <root>/<team>/.upload-*.tmp    an upload in progress (0600)

Invariants:
- Private: the root and every team directory are 0700 and every file 0600; they hold users' code.
  A team directory is the caller's team id (``team_dir``): ``^[A-Za-z0-9_-]{1,64}$``, the empty
  team (an operator) as ``_local``; nothing else ever names a path here.
- One format on disk: a plain tar. A gzip upload is decompressed while it streams in.
- Complete or absent: an upload is written to a temp file in its team's directory, checked, then
  renamed over ``<hash>.tar`` in one step; any failure (the client going away, a cap, a bad archive)
  removes the temp file. Readers never see a partial archive.
- Checked: a stored archive's members are only regular files, directories, symlinks and
  hardlinks to an earlier regular member; names are relative, without ``..``, unique, and none
  lies under a symlink member, so extracting it in order never writes outside its destination.
  Symlink targets are not restricted (a COPY may carry ``bin -> /usr/bin``): an extractor must
  not follow them.
- Bounded: an upload's body and what it unpacks to are each at most ``file_max_bytes``; a team's
  files (with its uploads in progress) at most ``team_max_bytes`` (checked when an upload starts
  and while it streams, so concurrent uploads of one team may briefly overshoot by what they
  are sending); an archive has at most ``MAX_MEMBERS`` members; files not uploaded or used
  (``path``) for ``ttl_s`` are deleted by ``prune``, which uploads run now and then.
- Upload URLs carry an HMAC-SHA256 of (team, template id, hash, expiry) under the key in
  ``.signing-key``, made once (atomically) by whichever API replica needs it first and read by the
  others through the shared directory. Read URLs (``sign(read=True)``: what a node that does not
  share this directory fetches a COPY step's archive from, handed to it with the build) sign the
  same fields under another domain, so neither kind of URL serves as the other.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import stat
import tarfile
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import BinaryIO

from cube_common.build_files import HASH_RE, TEAM_DIR_RE, team_dir

KEY_FILE = ".signing-key"
KEY_BYTES = 32
UPLOAD_PREFIX = ".upload-"
UPLOAD_SUFFIX = ".tmp"
# As many entries as the cubelet lets one image layer have (image_max_entries): the checks keep
# a name per member, so this bounds their memory too.
MAX_MEMBERS = 1_000_000
# Uploads run prune at most this often per process; it lists every team's directory.
PRUNE_EVERY_S = 600.0
# A temp file this old belongs to an upload that died with its process (an upload's URL lives an
# hour; the SDK's own upload deadline is an hour too).
STALE_UPLOAD_S = 6 * 3600.0
# How much one decompression step may produce: a gzip bomb never sits in memory whole.
_INFLATE_STEP = 1 << 20
_READ_STEP = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_SIGN_DOMAIN = "cube-build-file-upload-v1"
# Read URLs (a node fetching a COPY step's archive) sign under their own domain: an upload URL
# never reads, a read URL never writes.
_READ_DOMAIN = "cube-build-file-read-v1"


class BuildFileError(Exception):
    """A refused upload or URL: ``status`` is the HTTP status the API answers with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _check_hash(files_hash: str) -> str:
    if not HASH_RE.match(files_hash):
        raise ValueError("a files hash is 64 lowercase hex digits")
    return files_hash


class BuildFiles:
    """The store under ``root``; one per API process, safe to share between its threads."""

    def __init__(self, root: Path, *, file_max_bytes: int = 1 << 30, team_max_bytes: int = 5 << 30,
                 ttl_s: float = 7 * 86400.0, url_ttl_s: float = 3600.0, read_url_ttl_s: float = 86400.0):
        self.root = Path(root)
        self.file_max_bytes = file_max_bytes
        self.team_max_bytes = team_max_bytes
        self.ttl_s = ttl_s
        self.url_ttl_s = url_ttl_s
        self.read_url_ttl_s = read_url_ttl_s
        self._key: bytes | None = None
        self._lock = threading.Lock()
        self._last_prune = 0.0

    @classmethod
    def from_settings(cls, settings) -> BuildFiles:
        return cls(settings.build_files_path, file_max_bytes=settings.build_file_max_bytes,
                   team_max_bytes=settings.build_files_team_max_bytes, ttl_s=settings.build_files_ttl_s,
                   url_ttl_s=settings.build_file_url_ttl_s, read_url_ttl_s=settings.build_file_read_ttl_s)

    # ---- directories ----

    def _ensure_dir(self, path: Path) -> Path:
        # mkdir's mode is masked by the umask; chmod makes it exactly private, also for a
        # directory an older process or an operator made.
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if stat.S_IMODE(path.stat().st_mode) != 0o700:
            os.chmod(path, 0o700)
        return path

    def team_path(self, team_id: str) -> Path:
        return self.root / team_dir(team_id)

    # ---- readers ----

    def path(self, team_id: str, files_hash: str) -> Path | None:
        """The stored plain tar of ``files_hash`` for the team, or None. Marks it used: prune keeps
        it another ``ttl_s``."""
        p = self.team_path(team_id) / f"{_check_hash(files_hash)}.tar"
        try:
            os.utime(p)
        except FileNotFoundError:
            return None
        return p

    # ---- uploads ----

    def begin(self, team_id: str, files_hash: str, declared_size: int | None = None) -> Upload:
        """Start an upload of ``files_hash`` for the team; ``declared_size`` is the body's
        Content-Length when the client gave one (refused at once when over a cap: 413)."""
        _check_hash(files_hash)
        if declared_size is not None and declared_size > self.file_max_bytes:
            raise BuildFileError(413, f"the upload is {declared_size} bytes; at most {self.file_max_bytes} "
                                      f"are accepted")
        self.maybe_prune()
        self._ensure_dir(self.root)
        tdir = self._ensure_dir(self.team_path(team_id))
        final = tdir / f"{files_hash}.tar"
        room = self.team_max_bytes - self._team_usage(tdir, but=final)
        if room <= 0 or (declared_size is not None and declared_size > room):
            raise BuildFileError(413, f"the team's build files would exceed {self.team_max_bytes} bytes")
        fd, tmp = tempfile.mkstemp(prefix=UPLOAD_PREFIX, suffix=UPLOAD_SUFFIX, dir=tdir)  # 0600
        return Upload(os.fdopen(fd, "wb"), Path(tmp), final, raw_max=self.file_max_bytes,
                      stored_max=min(self.file_max_bytes, room))

    @staticmethod
    def _team_usage(tdir: Path, but: Path) -> int:
        total = 0
        with os.scandir(tdir) as it:
            for e in it:
                if e.path == str(but):
                    continue  # replaced by this upload
                try:
                    total += e.stat(follow_symlinks=False).st_size
                except FileNotFoundError:
                    pass
        return total

    # ---- pruning ----

    def maybe_prune(self) -> None:
        """Prune at most every PRUNE_EVERY_S (what uploads call)."""
        now = time.monotonic()
        with self._lock:
            if self._last_prune and now - self._last_prune < PRUNE_EVERY_S:
                return
            self._last_prune = now
        self.prune(self.ttl_s)

    def prune(self, max_age_s: float) -> int:
        """Delete archives not uploaded or used for ``max_age_s`` and uploads that died; returns
        how many files went. Team directories stay (an upload may be creating its temp file)."""
        cutoff = time.time() - max_age_s
        stale_upload = time.time() - min(max_age_s, STALE_UPLOAD_S)
        removed = 0
        try:
            teams = [e for e in os.scandir(self.root) if e.is_dir(follow_symlinks=False) and TEAM_DIR_RE.match(e.name)]
        except FileNotFoundError:
            return 0
        for t in teams:
            try:
                entries = list(os.scandir(t.path))
            except FileNotFoundError:
                continue
            for e in entries:
                try:
                    mtime = e.stat(follow_symlinks=False).st_mtime
                except FileNotFoundError:
                    continue
                old = (e.name.endswith(".tar") and mtime < cutoff) or (
                    e.name.startswith(UPLOAD_PREFIX) and mtime < stale_upload)
                if old:
                    try:
                        os.unlink(e.path)
                        removed += 1
                    except FileNotFoundError:
                        pass
        return removed

    # ---- signed upload URLs ----

    def _signing_key(self, create: bool = True) -> bytes | None:
        """The key; made on first use when ``create`` (signing), else None while there is none
        (verifying: then no URL was ever signed)."""
        if self._key is not None:
            return self._key
        key_path = self.root / KEY_FILE
        try:
            key = key_path.read_bytes()
        except FileNotFoundError:
            if not create:
                return None
            self._ensure_dir(self.root)
            # Written whole to a temp file, then linked into place: a replica racing us either
            # wins (link fails, we read its key) or reads ours complete, never a partial key.
            fd, tmp = tempfile.mkstemp(prefix=".key-", dir=self.root)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(secrets.token_bytes(KEY_BYTES))
                    f.flush()
                    os.fsync(f.fileno())
                try:
                    os.link(tmp, key_path)
                except FileExistsError:
                    pass
            finally:
                os.unlink(tmp)
            key = key_path.read_bytes()
        if len(key) != KEY_BYTES:
            raise RuntimeError(f"{key_path} is not a {KEY_BYTES}-byte key")
        self._key = key
        return key

    @staticmethod
    def _mac(key: bytes, team: str, template_id: str, files_hash: str, expires: int, read: bool) -> str:
        # JSON of a list: no choice of fields can make two different tuples sign the same bytes.
        msg = json.dumps([_READ_DOMAIN if read else _SIGN_DOMAIN, team, template_id, files_hash, expires]).encode()
        return hmac.new(key, msg, hashlib.sha256).hexdigest()

    def sign(self, team_id: str, template_id: str, files_hash: str, now: float | None = None, *,
             read: bool = False) -> tuple[int, str]:
        """(expires, signature) of an upload URL for the team's ``files_hash`` of ``template_id``,
        or with ``read`` of a read URL (a node fetching it for that template's build), which lives
        ``read_url_ttl_s``."""
        ttl = self.read_url_ttl_s if read else self.url_ttl_s
        expires = int((time.time() if now is None else now) + ttl)
        key = self._signing_key()
        assert key is not None
        return expires, self._mac(key, team_dir(team_id), template_id, _check_hash(files_hash), expires, read)

    def verify(self, team: str, template_id: str, files_hash: str, expires: str, sig: str,
               now: float | None = None, *, read: bool = False) -> None:
        """Raise BuildFileError(403) unless ``sig`` signs these values (as an upload URL, or with
        ``read`` as a read URL) and ``expires`` has not passed; ``team`` is the directory name
        from the URL."""
        if not (TEAM_DIR_RE.match(team) and HASH_RE.match(files_hash) and re.fullmatch(r"[0-9]{1,12}", expires)
                and re.fullmatch(r"[0-9a-f]{64}", sig)):
            raise BuildFileError(403, "invalid signature")
        key = self._signing_key(create=False)
        if key is None or not hmac.compare_digest(self._mac(key, team, template_id, files_hash, int(expires), read),
                                                  sig):
            raise BuildFileError(403, "invalid signature")
        if int(expires) < (time.time() if now is None else now):
            raise BuildFileError(403, "signature is already expired")


class Upload:
    """One upload in progress: ``write`` the body as it comes, then ``commit``; ``abort`` on any
    failure. ``write`` and ``commit`` may run in a worker thread while ``abort`` comes from the
    event loop (a client gone): a lock keeps them from interleaving."""

    def __init__(self, f: BinaryIO, tmp: Path, final: Path, *, raw_max: int, stored_max: int):
        self._f = f
        self.tmp = tmp
        self.final = final
        self.raw_max = raw_max
        self.stored_max = stored_max
        self.raw_bytes = 0
        self.stored_bytes = 0
        self._head = b""  # the first bytes, until we know whether it is gzip
        self._inflate: zlib._Decompress | None = None
        self._gzip: bool | None = None
        self._done = False
        self._lock = threading.Lock()

    def __enter__(self) -> Upload:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()

    def write(self, data: bytes) -> None:
        with self._lock:
            if self._done:
                raise BuildFileError(400, "the upload is over")
            self.raw_bytes += len(data)
            if self.raw_bytes > self.raw_max:
                raise BuildFileError(413, f"the upload is over {self.raw_max} bytes")
            if self._gzip is None:
                self._head += data
                if len(self._head) < len(_GZIP_MAGIC):
                    return
                data, self._head = self._head, b""
                self._gzip = data.startswith(_GZIP_MAGIC)
                if self._gzip:
                    self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
            if self._gzip:
                self._gunzip(data)
            else:
                self._store(data)

    def _gunzip(self, data: bytes) -> None:
        while data:
            if self._inflate is None:
                # After a whole gzip member: another member may follow (gzip's concatenation),
                # or the zero padding some writers add; anything else is not gzip.
                data = data.lstrip(b"\0")
                if not data:
                    return
                self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
            try:
                out = self._inflate.decompress(data, _INFLATE_STEP)
            except zlib.error as e:
                raise BuildFileError(400, f"the body is not a valid gzip stream: {e}") from None
            self._store(out)
            if self._inflate.eof:
                data = self._inflate.unused_data
                self._inflate = None
            else:
                data = self._inflate.unconsumed_tail

    def _store(self, data: bytes) -> None:
        self.stored_bytes += len(data)
        if self.stored_bytes > self.stored_max:
            raise BuildFileError(413, f"the archive unpacks to over {self.stored_max} bytes (the file's or the "
                                      f"team's cap)")
        self._f.write(data)

    def commit(self) -> Path:
        """Check the archive and move it into place; BuildFileError(400) for a bad one."""
        with self._lock:
            if self._done:
                raise BuildFileError(400, "the upload is over")
            if self._gzip is None:  # under two bytes: not a tar either way
                self._store(self._head)
            elif self._inflate is not None:  # a gzip member whose end never came
                raise BuildFileError(400, "the body is a truncated gzip stream")
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            try:
                validate_archive(self.tmp)
            except ValueError as e:
                raise BuildFileError(400, f"the body is not an acceptable tar archive: {e}") from None
            os.replace(self.tmp, self.final)
            self._done = True
            _fsync_dir(self.final.parent)
            return self.final

    def abort(self) -> None:
        """Remove the temp file (idempotent; nothing after a commit)."""
        with self._lock:
            if self._done:
                return
            self._done = True
            try:
                self._f.close()
            except OSError:
                pass
            try:
                os.unlink(self.tmp)
            except FileNotFoundError:
                pass


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- archives ----


def _norm(name: str) -> str:
    """A member name as a relative path without '.' parts ('.' for the root); ValueError for an
    absolute one or one with '..'."""
    if not name or "\0" in name:
        raise ValueError(f"member name {name!r} is empty or holds NUL")
    if name.startswith("/"):
        raise ValueError(f"member {name!r} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"member {name!r} has a '..' component")
    return "/".join(parts) or "."


def _members(tf: tarfile.TarFile):
    """The archive's members in order, without TarFile keeping them all (it would for a million)."""
    count = 0
    while True:
        m = tf.next()
        if m is None:
            return
        # Only next() fills it, and nothing here reads it back (typeshed leaves it out).
        tf.members.clear()  # type: ignore[attr-defined]
        count += 1
        if count > MAX_MEMBERS:
            raise ValueError(f"more than {MAX_MEMBERS} members")
        yield m


def validate_archive(tar_path: str | os.PathLike[str]) -> int:
    """Check a plain tar against the invariants above; returns its member count, raises
    ValueError naming what is wrong."""
    size = os.stat(tar_path).st_size
    names: set[str] = set()
    links: set[str] = set()  # symlink members: nothing may lie under one
    regular: set[str] = set()
    count = 0
    try:
        with tarfile.open(tar_path, mode="r:") as tf:
            for m in _members(tf):
                name = _norm(m.name)
                if name in names:
                    raise ValueError(f"member {m.name!r} appears twice")
                parent = name
                while "/" in parent:
                    parent = parent.rsplit("/", 1)[0]
                    if parent in links:
                        raise ValueError(f"member {m.name!r} lies under the symlink {parent!r}")
                if m.type in (tarfile.REGTYPE, tarfile.AREGTYPE):
                    if m.offset_data + m.size > size:
                        raise ValueError(f"member {m.name!r} is truncated")
                    regular.add(name)
                elif m.type == tarfile.SYMTYPE:
                    if not m.linkname or "\0" in m.linkname:
                        raise ValueError(f"symlink {m.name!r} has no target")
                    links.add(name)
                elif m.type == tarfile.LNKTYPE:
                    target = _norm(m.linkname)
                    if target not in regular:
                        raise ValueError(f"hardlink {m.name!r} does not name an earlier regular file of the archive")
                elif m.type != tarfile.DIRTYPE:
                    raise ValueError(f"member {m.name!r} is not a regular file, directory or symlink")
                names.add(name)
                count += 1
    except (tarfile.TarError, EOFError, UnicodeError, OverflowError) as e:
        raise ValueError(f"not a tar archive ({e})") from None
    if not count:
        raise ValueError("the archive is empty")
    return count


def files_hash(tar_path: str | os.PathLike[str], src: str, dest: str) -> str:
    """The E2B SDK's ``calculate_files_hash(src, dest, ...)`` recomputed from the archive its
    ``tar_file_stream`` made of the same files: both walk the files in the same order (the
    archive's). Per member: its relative path, ``str(st_mode)`` (type bits | permission bits, as
    os.stat gives them), its size unless a directory (a symlink's is its target's length, as
    lstat gives it), then a file's contents or a symlink's target. ``tar_path`` must be a plain
    tar that passed ``validate_archive``."""
    h = hashlib.sha256(f"COPY {src} {dest}".encode())
    regular: dict[str, tuple[int, int]] = {}  # name -> (offset of its data, size), for hardlinks
    with open(tar_path, "rb") as raw, tarfile.open(fileobj=raw, mode="r:") as tf:
        for m in _members(tf):
            h.update(m.name.encode("utf-8", "surrogateescape"))
            perm = stat.S_IMODE(m.mode)
            if m.isdir():
                h.update(str(stat.S_IFDIR | perm).encode())
                continue
            if m.issym():
                target = m.linkname.encode("utf-8", "surrogateescape")
                h.update(str(stat.S_IFLNK | perm).encode())
                h.update(str(len(target)).encode())
                h.update(target)
                continue
            if m.islnk():
                offset, size = regular[_norm(m.linkname)]
            else:
                offset, size = m.offset_data, m.size
                regular[_norm(m.name)] = (offset, size)
            h.update(str(stat.S_IFREG | perm).encode())
            h.update(str(size).encode())
            _hash_range(h, raw, offset, size)
    return h.hexdigest()


def _hash_range(h, f: BinaryIO, offset: int, size: int) -> None:
    # TarFile reads headers from the same file object: come back to where it was.
    here = f.tell()
    f.seek(offset)
    left = size
    while left:
        chunk = f.read(min(left, _READ_STEP))
        if not chunk:
            raise ValueError("archive truncated")
        h.update(chunk)
        left -= len(chunk)
    f.seek(here)
