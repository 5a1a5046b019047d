"""A volume's ext4 image, read and changed without mounting it (the /volumecontent API).

A volume image holds whatever its guests wrote: a crafted filesystem must never reach the host's
kernel, so the host never mounts it. Everything here goes through e2fsprogs' ``debugfs`` (and
``e2fsck -p`` for journal recovery), userspace programs run as subprocesses with a timeout, never
through a shell.

Invariants:
- The caller (the cubelet) serialises operations per volume, and runs none while a sandbox mounts
  the volume (cube_common/volumes). Nothing here locks: two VolumeFs calls on one image at once, or a
  call while a guest's kernel owns the filesystem, corrupt it. debugfs writes bypass the journal,
  so a host crash in the middle of a write can leave the filesystem inconsistent as well.
- A journal that needs recovery (a guest that crashed or was killed with the volume mounted) is
  replayed with ``e2fsck -p`` before any operation, reads included. debugfs neither replays nor
  refuses it: it reads the stale blocks (the journal's newer copies ignored), and its writes and
  reads disagree (in a test a directory debugfs -w made stayed invisible until the replay), while
  the next mount would replay the journal over whatever it wrote. Replaying is what the guest's
  kernel would do on its next mount anyway, in userspace here. When preen mode cannot repair the
  filesystem (e2fsck exit >= 4) the call fails with Corrupt and nothing else is done.
- Paths are normalised with cube_common.volumes.normalize_path (absolute, no '.' or '..'). debugfs
  parses its command lines itself: every path is passed in double quotes with '"' doubled; names
  with a newline or carriage return cannot be expressed and are refused (Invalid), and so is a
  command line longer than debugfs' line buffer.
- Only two things debugfs prints carry guest-chosen text: ``ls -p`` (names) and ``cat`` (content).
  Names are parsed with a strict grammar (a name cannot contain '/'), content is only ever streamed
  or read by its known length; everything else is read from ``imap`` and ``inode_dump``, whose
  output is fixed-format (the raw inode is decoded here).
- debugfs prints errors on stderr and still exits 0: any stderr line but its version banner is an
  error, classified into the exceptions below.
- A file write goes to a temporary name in the target directory first and replaces the target only
  once it is complete: a full filesystem leaves the old file (or nothing) behind, never a partial one.
  The replacement is a new inode, as a rename over the old name would be: another hard link to the
  old file keeps the old content. Both copies need room while the write runs.
- debugfs runs every command of a batch even after one failed, so each operation first checks what
  its commands need (the parent exists and is a directory, the target's type, ...) with read-only
  runs, and only then runs the changing batch.
- Names that are not UTF-8 are listed with U+FFFD in place of the bad bytes; such a path cannot be
  addressed afterwards, except by removing a directory that holds it.
- Removal frees inodes itself (``kill_file``) so names that cannot be expressed inside a removed
  directory are no obstacle; link counts of files linked elsewhere are decremented, not freed.
  debugfs does not release an inode's extended-attribute block; when a removed inode had one,
  ``e2fsck -fp`` runs afterwards to release it (rare: small xattrs live in the inode).
"""

from __future__ import annotations

import builtins
import os
import re
import secrets
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from cube_common.volumes import MAX_NAME, VolumeRuleError, normalize_path
from sdk.gen.cube.v1 import cubelet_pb2 as pb

MAX_LIST = 10_000  # entries one listing returns at most
MAX_REMOVE = 1_000_000  # entries one recursive removal walks at most (a crafted image may loop)
MAX_LINE = 8000  # debugfs reads command files with fgets into a BUFSIZ (8192) buffer
MAX_TARGET = 4096  # a symlink target longer than PATH_MAX is not read
DEFAULT_UID = 1000  # mkfs ... -E root_owner=1000:1000: the guest's user
DEFAULT_GID = 1000
DEFAULT_FILE_MODE = 0o644
DEFAULT_DIR_MODE = 0o755
ROOT_INO = 2

S_IFMT, S_IFREG, S_IFDIR, S_IFLNK = 0o170000, 0o100000, 0o040000, 0o120000
EXTENTS_FL, INLINE_DATA_FL = 0x80000, 0x10000000
# Timestamp's valid range (0001-01-01 .. 9999-12-31): a crafted inode's times are clamped into it.
_TS_MIN, _TS_MAX = -62135596800, 253402300799
# The C locale: the tools' messages, which _classify reads, in English.
_ENV = {**os.environ, "LC_ALL": "C"}


class VolumeFsError(Exception):
    """A volume content operation failed; ``code`` is the gRPC status the caller answers with."""
    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL


class NotFound(VolumeFsError):
    code = grpc.StatusCode.NOT_FOUND


class Invalid(VolumeFsError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class Exists(VolumeFsError):
    code = grpc.StatusCode.ALREADY_EXISTS


class NoSpace(VolumeFsError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Failed(VolumeFsError):
    """debugfs (or e2fsck) failed in a way none of the above describes, or timed out."""
    code = grpc.StatusCode.INTERNAL


class Corrupt(Failed):
    """The filesystem is damaged beyond what e2fsck's preen mode repairs, or debugfs says so."""
    code = grpc.StatusCode.DATA_LOSS


@dataclass(frozen=True)
class _Inode:
    """The fields of a raw ext4 inode (``inode_dump``) the API reports or needs."""
    ino: int
    mode: int
    uid: int
    gid: int
    size: int
    links: int
    flags: int
    file_acl: int
    block: bytes  # i_block: a fast symlink's target lives here
    atime: tuple[int, int]
    mtime: tuple[int, int]
    ctime: tuple[int, int]

    @property
    def is_dir(self) -> bool:
        return self.mode & S_IFMT == S_IFDIR

    @property
    def is_reg(self) -> bool:
        return self.mode & S_IFMT == S_IFREG

    @property
    def is_link(self) -> bool:
        return self.mode & S_IFMT == S_IFLNK


def _q(text: str) -> str:
    """One debugfs argument: double quotes keep spaces and tabs, a doubled '"' is a literal one
    (lib/ss parse). A newline ends the command line and '\\r' truncates it: not expressible."""
    if "\n" in text or "\r" in text:
        raise Invalid(f"{text!r}: names with a newline or carriage return are not supported")
    return '"' + text.replace('"', '""') + '"'


def _ino(ino: int) -> str:
    return f"<{ino}>"


def _ts(sec: int, nsec: int) -> Timestamp:
    ts = Timestamp()
    ts.seconds = min(max(sec, _TS_MIN), _TS_MAX)
    ts.nanos = nsec if 0 <= nsec < 1_000_000_000 else 0
    return ts


def _trim(stderr: list[str]) -> str:
    text = "; ".join(line.strip() for line in stderr[:2])
    return text[:300] or "no message"


_QUOTED_RE = re.compile(r'"((?:[^"]|"")*)"')


def _classify(stderr: list[str], what: str, cmds: Sequence[str] = ()) -> VolumeFsError:
    """The exception for debugfs' error lines (com_err messages of libext2fs). The paths the
    commands named are cut out first: messages repeat them, and a client's path may well read
    "File not found"."""
    text = "\n".join(stderr)
    for arg in sorted({a.replace('""', '"') for c in cmds for a in _QUOTED_RE.findall(c)},
                      key=len, reverse=True):
        # The whole path, the directory part debugfs looks up, and the base name it quotes.
        parent, _, base = arg.rpartition("/")
        for piece in (arg, parent, f'"{base}"'):
            if piece.startswith(("/", '"')) and len(piece) > 1:
                text = text.replace(piece, "")
    msg = f"{what}: {_trim(stderr)}"
    low = text.lower()
    if ("could not allocate" in low or "no free space" in low or "no space left" in low
            or "disk full" in low):
        return NoSpace(msg)
    if "file not found" in low:
        return NotFound(msg)
    if "already exists" in low:
        return Exists(msg)
    if "not a directory" in low or "too many symbolic links" in low:
        return Invalid(msg)
    if "corrupt" in low or "bad magic" in low or "checksum" in low or "bad block" in low:
        return Corrupt(msg)
    return Failed(msg)


_IMAP_RE = re.compile(rb"Inode (\d+) is part of block group \d+\n")
_DUMP_LINE_RE = re.compile(rb"([0-7]{4,})  ((?:[0-9a-f]{4} ){7}[0-9a-f]{4})  ")
# One `ls -p` entry: /ino/mode/uid/gid/name/size/ (size empty for a directory). A name cannot hold
# '/', so it ends at the first '/' even when a guest put newlines or "debugfs: " lines in it.
_LS_ENTRY_RE = re.compile(rb"/(\d+)/([0-7]+)/(-?\d+)/(-?\d+)/([^/]*)/(\d*)/\n")


class VolumeFs:
    """Operations on one volume image; see the module docstring for what the caller guarantees."""

    def __init__(self, image: Path, *, debugfs: str = "debugfs", e2fsck: str = "e2fsck",
                 timeout: float = 60) -> None:
        self.image = Path(image)
        self.debugfs = _tool(debugfs)
        self.e2fsck = _tool(e2fsck)
        self.timeout = timeout
        self._inode_size = 256

    # ---- the API ---------------------------------------------------------------------------

    def stat(self, path: str) -> pb.VolumeEntry:
        path = self._norm(path)
        self._prepare()
        return self._entry(path, self._lookup(path))

    def list(self, path: str, depth: int = 1) -> builtins.list[pb.VolumeEntry]:
        """Entries below the directory at path, ``depth`` levels down (0 counts as 1), sorted by
        path; not the directory itself. More than MAX_LIST entries is an Invalid error."""
        path = self._norm(path)
        self._prepare()
        top = self._lookup(path)
        if not top.is_dir:
            raise Invalid(f"{path} is not a directory")
        found = self._walk(top.ino, path, max(depth, 1), MAX_LIST, "list")
        inodes = self._inodes([ino for ino, _, _ in found])
        entries = [self._entry(p, inodes[ino]) for ino, p, _ in found]
        entries.sort(key=lambda e: e.path)
        return entries

    def make_dir(self, path: str, uid: int | None = None, gid: int | None = None,
                 mode: int | None = None, force: bool = False) -> pb.VolumeEntry:
        """Create a directory (defaults 1000:1000, 0755). force: create missing parents with the
        same owner and mode, and return an existing directory as it is."""
        path = self._norm(path)
        self._check_ids(uid, gid, mode)
        self._prepare()
        return self._make_dir(path, uid, gid, mode, force)

    def update_metadata(self, path: str, uid: int | None = None, gid: int | None = None,
                        mode: int | None = None) -> pb.VolumeEntry:
        """Set the owner, group and permission bits (07777; the type bits are kept) that are not
        None; ctime becomes now."""
        path = self._norm(path)
        self._check_ids(uid, gid, mode)
        self._prepare()
        node = self._lookup(path)
        cmds = self._sif_meta(node.ino, node.mode, uid, gid, mode)
        cmds.append(f"sif {_ino(node.ino)} ctime @{int(time.time())}")
        self._run(cmds, write=True, what=f"update {path}")
        return self._entry(path, self._inode(node.ino))

    def remove(self, path: str) -> None:
        """Remove a file, symlink or other non-directory, or a directory with everything in it."""
        path = self._norm(path)
        if path == "/":
            raise Invalid("the volume's root directory cannot be removed")
        self._prepare()
        parent_path, _ = _split(path)
        node = self._lookup(path)
        parent = self._lookup(parent_path)
        cmds = [f"unlink {_q(path)}"]  # first: whatever fails below, the path is gone
        if node.is_dir:
            found = self._walk(node.ino, path, None, MAX_REMOVE, "remove")
            counts: dict[int, int] = {}
            dirs = [node.ino]
            for ino, _, is_dir in found:
                if is_dir:
                    dirs.append(ino)
                else:
                    counts[ino] = counts.get(ino, 0) + 1
            inodes = self._inodes(list(counts))
            dead = [node]
            for ino, n in counts.items():
                cmds += self._drop_links(inodes[ino], n)
                if inodes[ino].links <= n:
                    dead.append(inodes[ino])
            dead += self._inodes(dirs[1:]).values()
            for d in dict.fromkeys(dirs):  # a crafted image may link a directory twice
                cmds += [f"sif {_ino(d)} links_count 0", f"kill_file {_ino(d)}"]
            # The removed directory's '..' counted as a link of its parent (1: dir_nlink's "too many
            # to count", which stays).
            if parent.links > 2:
                cmds.append(f"sif {_ino(parent.ino)} links_count {parent.links - 1}")
        else:
            cmds += self._drop_links(node, 1)
            dead = [node] if node.links <= 1 else []
        cmds += self._touch(parent.ino)
        self._run(cmds, write=True, what=f"remove {path}")
        if any(i.file_acl for i in dead):
            self._fsck(force=True)

    def read_file(self, path: str, chunk_size: int = 1 << 20) -> Generator[bytes, None, None]:
        """The content of the regular file at path, in chunks of at most chunk_size bytes, streamed
        from ``debugfs cat`` (bounded memory). Errors about the path raise here, not on iteration;
        close() the generator to stop early. Until it is exhausted or closed the read is still an
        operation on the volume: the caller's per-volume serialisation must cover it."""
        path = self._norm(path)
        if chunk_size <= 0:
            raise Invalid("chunk_size must be positive")
        self._prepare()
        node = self._lookup(path)
        if node.is_dir:
            raise Invalid(f"{path} is a directory")
        if not node.is_reg:
            raise Invalid(f"{path} is not a regular file")
        return self._stream(node, path, chunk_size)

    def write_file(self, path: str, source: Path, uid: int | None = None, gid: int | None = None,
                   mode: int | None = None, force: bool = False) -> pb.VolumeEntry:
        """Make the regular file at path hold source's bytes (a host file). A new file gets 1000:1000
        and 0644 unless given; a replaced one keeps its owner and mode unless given. force: create
        missing parent directories (1000:1000 or the given owner, 0755)."""
        path = self._norm(path)
        if path == "/":
            raise Invalid("/ is a directory")
        self._check_ids(uid, gid, mode)
        src = Path(source)
        if not src.is_file():
            raise Invalid(f"source {src} is not a regular file")
        self._prepare()
        parent_path, name = _split(path)
        old = self._lookup_opt(path)
        if old is not None and old.is_dir:
            raise Invalid(f"{path} is a directory")
        if old is not None and not old.is_reg:
            raise Invalid(f"{path} exists and is not a regular file")
        parent = self._lookup_opt(parent_path)
        if parent is None:
            if not force:
                raise NotFound(f"parent directory {parent_path} does not exist")
            self._make_dir(parent_path, uid, gid, None, True)
            parent = self._lookup(parent_path)
        if not parent.is_dir:
            raise Invalid(f"{parent_path} is not a directory")
        # The temporary name is at least as long as the final one: unlinking it frees a directory
        # slot the final name fits in, so the last `ln` never needs a directory block.
        tmp_name = ".cube-write-" + secrets.token_hex(8)
        tmp_name += "x" * max(0, len(name.encode()) - len(tmp_name))
        tmp = (parent_path.rstrip("/") + "/" + tmp_name)
        write_cmd = f"write {_q(str(src))} {_q(tmp)}"
        _, err = self._run([write_cmd], write=True, check=False)
        new = self._lookup_opt(tmp)
        size = src.stat().st_size
        if err or new is None or new.size != size:
            if new is not None:  # leave nothing half-written behind
                self._run([f"unlink {_q(tmp)}", *self._drop_links(new, 1)], write=True,
                          what=f"clean up {tmp}")
            if err:
                raise _classify(err, f"write {path}", [write_cmd])
            raise Failed(f"write {path}: debugfs wrote {new.size if new else 'no'} bytes of {size}")
        if old is not None:
            uid = old.uid if uid is None else uid
            gid = old.gid if gid is None else gid
            mode = old.mode & 0o7777 if mode is None else mode
        now = int(time.time())
        cmds = []
        if old is not None:
            cmds += [f"unlink {_q(path)}", *self._drop_links(old, 1)]
        cmds += [f"unlink {_q(tmp)}", f"ln {_ino(new.ino)} {_q(path)}"]
        cmds += self._sif_meta(new.ino, S_IFREG, DEFAULT_UID if uid is None else uid,
                               DEFAULT_GID if gid is None else gid,
                               DEFAULT_FILE_MODE if mode is None else mode)
        cmds += [f"sif {_ino(new.ino)} {f} @{now}" for f in ("atime", "mtime", "ctime")]
        cmds += self._touch(parent.ino)
        self._run(cmds, write=True, what=f"write {path}")
        if old is not None and old.file_acl and old.links <= 1:
            self._fsck(force=True)
        return self._entry(path, self._inode(new.ino))

    # ---- operations' parts -----------------------------------------------------------------

    def _make_dir(self, path: str, uid: int | None, gid: int | None, mode: int | None,
                  force: bool) -> pb.VolumeEntry:
        node = self._lookup_opt(path)
        if node is not None:
            if force and node.is_dir:
                return self._entry(path, node)
            raise Exists(f"{path} already exists" + ("" if node.is_dir else " and is not a directory"))
        parent_path, _ = _split(path)
        parent = self._lookup_opt(parent_path)
        if parent is None:
            if not force:
                raise NotFound(f"parent directory {parent_path} does not exist")
            self._make_dir(parent_path, uid, gid, mode, True)
            parent = self._lookup(parent_path)
        if not parent.is_dir:
            raise Invalid(f"{parent_path} is not a directory")
        self._run([f"mkdir {_q(path)}"], write=True, what=f"mkdir {path}")
        new = self._lookup(path)
        cmds = self._sif_meta(new.ino, S_IFDIR, DEFAULT_UID if uid is None else uid,
                              DEFAULT_GID if gid is None else gid,
                              DEFAULT_DIR_MODE if mode is None else mode)
        cmds += self._touch(parent.ino)
        self._run(cmds, write=True, what=f"mkdir {path}")
        return self._entry(path, self._inode(new.ino))

    def _stream(self, node: _Inode, path: str, chunk_size: int) -> Generator[bytes, None, None]:
        # stderr to a file, not a pipe: nobody reads a pipe while the content streams.
        with tempfile.TemporaryFile() as errf:
            proc = subprocess.Popen([self.debugfs, "-R", f"cat {_ino(node.ino)}", str(self.image)],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errf,
                                    env=_ENV)
            assert proc.stdout is not None
            fd = proc.stdout.fileno()
            total = 0
            buf = bytearray()
            try:
                while True:
                    # A consumer may be slow (debugfs then waits on the full pipe), but debugfs
                    # itself must not stall: a crafted image could loop it. select bounds each wait.
                    if not select.select([fd], [], [], self.timeout)[0]:
                        raise Failed(f"read {path}: debugfs produced nothing for {self.timeout}s")
                    data = os.read(fd, chunk_size - len(buf))
                    if not data:
                        break
                    total += len(data)
                    if total > node.size:
                        raise Failed(f"read {path}: debugfs gave more than the file's {node.size} bytes")
                    buf += data
                    if len(buf) >= chunk_size:
                        yield bytes(buf)
                        buf.clear()
                if buf:
                    yield bytes(buf)
                proc.wait(timeout=self.timeout)
            finally:
                if proc.poll() is None:  # the consumer stopped early, an error, or the wait timed out
                    proc.kill()
                    proc.wait()
                proc.stdout.close()
            errf.seek(0)
            err = _errors(errf.read())
        if err:
            raise _classify(err, f"read {path}")
        if total != node.size:
            raise Failed(f"read {path}: debugfs gave {total} bytes of {node.size}")

    def _walk(self, top: int, top_path: str, depth: int | None, limit: int,
              what: str) -> builtins.list[tuple[int, str, bool]]:
        """(ino, path, is directory) of everything below directory top, level by level (one
        debugfs run per level), at most ``depth`` levels (None: all)."""
        found: builtins.list[tuple[int, str, bool]] = []
        seen = {top}
        level = [(top, top_path)]
        n = 0
        while level and (depth is None or n < depth):
            n += 1
            listings = self._ls([ino for ino, _ in level])
            nxt: builtins.list[tuple[int, str]] = []
            for (_, dpath), entries in zip(level, listings, strict=True):
                for ino, mode, name in entries:
                    if name in (b".", b".."):
                        continue
                    if len(found) >= limit:
                        raise Invalid(f"{what} {top_path}: more than {limit} entries")
                    p = dpath.rstrip("/") + "/" + name.decode("utf-8", "replace")
                    is_dir = mode & S_IFMT == S_IFDIR
                    found.append((ino, p, is_dir))
                    if is_dir and ino not in seen:
                        seen.add(ino)
                        nxt.append((ino, p))
            level = nxt
        return found

    @staticmethod
    def _drop_links(node: _Inode, n: int) -> builtins.list[str]:
        """Commands for n of node's names having been unlinked: decrement, or free it at zero."""
        if node.links > n:
            return [f"sif {_ino(node.ino)} links_count {node.links - n}"]
        return [f"sif {_ino(node.ino)} links_count 0", f"kill_file {_ino(node.ino)}"]

    @staticmethod
    def _sif_meta(ino: int, old_mode: int, uid: int | None, gid: int | None,
                  mode: int | None) -> builtins.list[str]:
        cmds = []
        if uid is not None:
            cmds.append(f"sif {_ino(ino)} uid {uid}")
        if gid is not None:
            cmds.append(f"sif {_ino(ino)} gid {gid}")
        if mode is not None:
            cmds.append(f"sif {_ino(ino)} mode 0{(old_mode & S_IFMT) | (mode & 0o7777):o}")
        return cmds

    @staticmethod
    def _touch(ino: int) -> builtins.list[str]:
        """A directory whose entries changed: mtime and ctime now (debugfs leaves them)."""
        now = int(time.time())
        return [f"sif {_ino(ino)} mtime @{now}", f"sif {_ino(ino)} ctime @{now}"]

    # ---- reading the filesystem --------------------------------------------------------------

    def _lookup(self, path: str) -> _Inode:
        node = self._lookup_opt(path)
        if node is None:
            raise NotFound(f"{path} does not exist")
        return node

    def _lookup_opt(self, path: str) -> _Inode | None:
        """The inode at path (not following a final symlink), None when it or a parent is missing.
        A parent that is not a directory is Invalid."""
        if path == "/":
            return self._inode(ROOT_INO)
        cmds = [f"imap {_q(path)}", f"inode_dump {_q(path)}"]
        outs, err = self._run(cmds, check=False)
        m = _IMAP_RE.match(outs[0])
        if m is None:
            exc = _classify(err, path, cmds)
            if isinstance(exc, NotFound):
                return None
            raise exc
        if err:
            raise _classify(err, path, cmds)
        return _parse_inode(int(m.group(1)), outs[1], self._inode_size)

    def _inode(self, ino: int) -> _Inode:
        return self._inodes([ino])[ino]

    def _inodes(self, inos: builtins.list[int]) -> dict[int, _Inode]:
        unique = list(dict.fromkeys(inos))
        if not unique:
            return {}
        outs, _ = self._run([f"inode_dump {_ino(i)}" for i in unique], what="inode_dump")
        return {i: _parse_inode(i, out, self._inode_size) for i, out in zip(unique, outs, strict=True)}

    def _ls(self, dirs: builtins.list[int]) -> builtins.list[builtins.list[tuple[int, int, bytes]]]:
        """``ls -p`` of each directory inode: (ino, mode, raw name) per entry. Parsed by grammar,
        not by splitting on the command echo lines: a guest's name may contain those."""
        cmds = [f"ls -p {_ino(d)}" for d in dirs]
        out, err = self._exec(cmds, write=False)
        if err:
            raise _classify(err, "ls")
        result: builtins.list[builtins.list[tuple[int, int, bytes]]] = []
        pos = 0
        for cmd in cmds:
            echo = f"debugfs: {cmd}\n".encode()
            if not out.startswith(echo, pos):
                raise Corrupt(f"ls: unexpected debugfs output at byte {pos}")
            pos += len(echo)
            entries: builtins.list[tuple[int, int, bytes]] = []
            while pos < len(out) and out[pos:pos + 1] in (b"/", b"\n"):
                if out[pos:pos + 1] == b"\n":
                    pos += 1
                    continue
                m = _LS_ENTRY_RE.match(out, pos)
                if m is None:
                    raise Corrupt(f"ls: an entry debugfs printed cannot be parsed (byte {pos})")
                pos = m.end()
                ino, mode, name = int(m.group(1)), int(m.group(2), 8), m.group(5)
                if ino == 0:
                    continue
                if len(name) > MAX_NAME:
                    raise Corrupt(f"ls: a name longer than {MAX_NAME} bytes")
                entries.append((ino, mode, name))
            result.append(entries)
        if pos != len(out):
            raise Corrupt(f"ls: unexpected debugfs output at byte {pos}")
        return result

    def _symlink_target(self, node: _Inode) -> bytes:
        if node.size == 0 or node.size > MAX_TARGET:
            return b""
        # A fast symlink keeps its target in i_block; a longer (or inline-data) one in a block.
        if node.size < len(node.block) and not node.flags & (EXTENTS_FL | INLINE_DATA_FL):
            return node.block[:node.size]
        proc = self._subprocess([self.debugfs, "-R", f"cat {_ino(node.ino)}", str(self.image)], b"")
        err = _errors(proc.stderr)
        if err:
            raise _classify(err, "symlink target")
        return proc.stdout[:node.size]

    def _entry(self, path: str, node: _Inode) -> pb.VolumeEntry:
        if node.is_reg:
            kind = pb.VOLUME_ENTRY_TYPE_FILE
        elif node.is_dir:
            kind = pb.VOLUME_ENTRY_TYPE_DIRECTORY
        elif node.is_link:
            kind = pb.VOLUME_ENTRY_TYPE_SYMLINK
        else:
            kind = pb.VOLUME_ENTRY_TYPE_UNSPECIFIED
        entry = pb.VolumeEntry(
            name="/" if path == "/" else path.rsplit("/", 1)[1], type=kind, path=path, size=node.size,
            mode=node.mode & 0o7777, uid=node.uid, gid=node.gid,
            atime=_ts(*node.atime), mtime=_ts(*node.mtime), ctime=_ts(*node.ctime))
        if node.is_link:
            entry.target = self._symlink_target(node).decode("utf-8", "replace")
        return entry

    # ---- running the tools -------------------------------------------------------------------

    def _prepare(self) -> None:
        """Check the superblock; replay a journal that needs recovery (module docstring)."""
        try:
            with open(self.image, "rb") as f:
                f.seek(1024)
                sb = f.read(1024)
        except FileNotFoundError:
            raise NotFound(f"volume image {self.image} does not exist") from None
        if len(sb) < 1024 or int.from_bytes(sb[0x38:0x3A], "little") != 0xEF53:
            raise Corrupt("the volume image holds no ext4 filesystem")
        state = int.from_bytes(sb[0x3A:0x3C], "little")
        incompat = int.from_bytes(sb[0x60:0x64], "little")
        rev = int.from_bytes(sb[0x4C:0x50], "little")
        self._inode_size = int.from_bytes(sb[0x58:0x5A], "little") if rev >= 1 else 128
        # s_state: bit 0 cleanly unmounted, bit 1 errors detected; incompat 0x4: journal to replay.
        if incompat & 0x4 or not state & 1 or state & 2:
            self._fsck(force=False)

    def _fsck(self, *, force: bool) -> None:
        args = [self.e2fsck, "-p"] + (["-f"] if force else []) + [str(self.image)]
        proc = self._subprocess(args, b"")
        # 0: clean, 1: errors corrected; 2 means "reboot", which only matters for a mounted root.
        if proc.returncode & ~3:
            lines = [ln for ln in proc.stdout.decode(errors="replace").splitlines() if ln.strip()]
            raise Corrupt(f"e2fsck -p could not repair the volume (exit {proc.returncode}): "
                          f"{_trim(lines[-2:])}")

    def _run(self, cmds: builtins.list[str], *, write: bool = False, check: bool = True,
             what: str = "debugfs") -> tuple[builtins.list[bytes], builtins.list[str]]:
        """Run commands whose output holds no guest-chosen text; each one's stdout, and the error
        lines. check: raise the classified error for any error line."""
        out, err = self._exec(cmds, write=write)
        if err and check:
            raise _classify(err, what, cmds)
        outs: builtins.list[bytes] = []
        pos = 0
        for i, cmd in enumerate(cmds):
            echo = f"debugfs: {cmd}\n".encode()
            if not out.startswith(echo, pos):
                raise Failed(f"{what}: unexpected debugfs output")
            pos += len(echo)
            if i + 1 < len(cmds):
                end = out.find(f"debugfs: {cmds[i + 1]}\n".encode(), pos)
                if end < 0:
                    raise Failed(f"{what}: unexpected debugfs output")
            else:
                end = len(out)
            outs.append(out[pos:end])
            pos = end
        return outs, err

    def _exec(self, cmds: builtins.list[str], *, write: bool) -> tuple[bytes, builtins.list[str]]:
        script = "".join(c + "\n" for c in cmds).encode()
        for c in cmds:
            if len(c.encode()) > MAX_LINE:
                raise Invalid("the path is too long for debugfs' command line")
        args = [self.debugfs] + (["-w"] if write else []) + ["-f", "-", str(self.image)]
        proc = self._subprocess(args, script)
        err = _errors(proc.stderr)
        if proc.returncode != 0 and not err:
            err = [f"debugfs exited with status {proc.returncode}"]
        return proc.stdout, err

    def _subprocess(self, args: builtins.list[str], stdin: bytes) -> subprocess.CompletedProcess[bytes]:
        try:
            return subprocess.run(args, input=stdin, capture_output=True, timeout=self.timeout,
                                  check=False, env=_ENV)
        except subprocess.TimeoutExpired:
            raise Failed(f"{os.path.basename(args[0])} timed out after {self.timeout}s") from None
        except OSError as e:
            raise Failed(f"cannot run {args[0]}: {e}") from None

    # ---- arguments ----------------------------------------------------------------------------

    @staticmethod
    def _norm(path: str) -> str:
        try:
            norm = normalize_path(path)
        except VolumeRuleError as e:
            raise Invalid(str(e)) from None
        # Refuse what debugfs cannot be told before doing anything: an unexpressible name, or a path
        # (quotes doubled) leaving too little of a command line for the command and a host path.
        if len(_q(norm).encode()) > MAX_LINE - 512:
            raise Invalid("the path is too long for debugfs' command line")
        return norm

    @staticmethod
    def _check_ids(uid: int | None, gid: int | None, mode: int | None) -> None:
        for what, v in (("uid", uid), ("gid", gid)):
            if v is not None and not 0 <= v < 2**32:
                raise Invalid(f"{what} {v} is out of range")
        if mode is not None and not 0 <= mode <= 0o7777:
            raise Invalid(f"mode {mode:#o} is not permission bits (07777)")


def _tool(name: str) -> str:
    """e2fsprogs live in /usr/sbin, which a service's PATH may lack."""
    if "/" in name:
        return name
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") or name


def _split(path: str) -> tuple[str, str]:
    parent, name = path.rsplit("/", 1)
    return parent or "/", name


def _errors(stderr: bytes) -> list[str]:
    """debugfs' error lines: everything on stderr but its version banner and blank lines."""
    lines = stderr.decode("utf-8", "replace").splitlines()
    return [ln for ln in lines if ln.strip() and not re.match(r"^(debugfs|e2fsck) \d", ln)]


def _parse_inode(ino: int, dump: bytes, inode_size: int) -> _Inode:
    """Decode ``inode_dump``: lines of an octal offset, 16 hex bytes and their ASCII; '*' stands
    for lines equal to the previous one up to the next offset (or the inode's end)."""
    raw = bytearray()
    prev = b""
    pending = False
    for line in dump.split(b"\n"):
        if not line:
            continue
        if line == b"*":
            pending = True
            continue
        m = _DUMP_LINE_RE.match(line)
        if m is None:
            raise Corrupt(f"inode {ino}: unexpected inode_dump output")
        off = int(m.group(1), 8)
        if pending:
            while len(raw) < off:
                raw += prev
            pending = False
        if off != len(raw):
            raise Corrupt(f"inode {ino}: unexpected inode_dump output")
        prev = bytes.fromhex(m.group(2).decode().replace(" ", ""))
        raw += prev
    if pending:
        while len(raw) < inode_size:
            raw += prev
    if len(raw) < 128:
        raise Corrupt(f"inode {ino}: inode_dump printed {len(raw)} bytes")

    def u16(o: int) -> int:
        return int.from_bytes(raw[o:o + 2], "little")

    def u32(o: int) -> int:
        return int.from_bytes(raw[o:o + 4], "little")

    extra = u16(0x80) if len(raw) > 0x82 else 0

    def xtime(o: int, extra_off: int) -> tuple[int, int]:
        sec = int.from_bytes(raw[o:o + 4], "little", signed=True)
        if 0x80 + extra >= extra_off + 4 and len(raw) >= extra_off + 4:
            ex = u32(extra_off)
            return sec + ((ex & 3) << 32), ex >> 2
        return sec, 0

    return _Inode(
        ino=ino, mode=u16(0x00), uid=u16(0x02) | u16(0x78) << 16, gid=u16(0x18) | u16(0x7A) << 16,
        size=u32(0x04) | u32(0x6C) << 32, links=u16(0x1A), flags=u32(0x20),
        file_acl=u32(0x68) | u16(0x76) << 32, block=bytes(raw[0x28:0x64]),
        atime=xtime(0x08, 0x8C), ctime=xtime(0x0C, 0x84), mtime=xtime(0x10, 0x88))
