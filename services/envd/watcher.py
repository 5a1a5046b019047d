"""Directory watches on inotify (through libc, no extra package), optionally recursive.

Events are named relative to the watched directory (the directory itself is ".") and typed like
fsnotify's, which upstream envd uses: a file moved in is a CREATE, moved out a RENAME, metadata
changes (chmod, chown, xattrs) a CHMOD; one inotify event carrying several of these becomes one
event per type, in upstream's order. How many events a file operation makes is therefore the
kernel's answer to the syscalls the operation makes (see files_http.py for an upload's).
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import posixpath
import struct
from dataclasses import dataclass

from .gen import filesystem_pb2 as pb

log = logging.getLogger("envd.watcher")

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000

WATCH_MASK = (IN_MODIFY | IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
              | IN_DELETE_SELF | IN_MOVE_SELF)
_EVENT = struct.Struct("iIII")
# A watcher that nobody polls must not grow without bound.
MAX_PENDING_EVENTS = 10_000

_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class FsEvent:
    name: str  # relative to the watched directory
    type: pb.EventType
    path: str  # absolute


# Upstream's order for an event with several operations.
_TYPES = (
    (IN_CREATE | IN_MOVED_TO, pb.EVENT_TYPE_CREATE),
    (IN_MOVED_FROM | IN_MOVE_SELF, pb.EVENT_TYPE_RENAME),
    (IN_ATTRIB, pb.EVENT_TYPE_CHMOD),
    (IN_MODIFY, pb.EVENT_TYPE_WRITE),
    (IN_DELETE | IN_DELETE_SELF, pb.EVENT_TYPE_REMOVE),
)


def _types_of(mask: int) -> list[pb.EventType]:
    return [etype for bits, etype in _TYPES if mask & bits]


class DirectoryWatcher:
    """Collects events under `root` into an asyncio queue until closed."""

    def __init__(self, root: str, recursive: bool) -> None:
        self.root = root
        self.recursive = recursive
        self.queue: asyncio.Queue[FsEvent | None] = asyncio.Queue(MAX_PENDING_EVENTS)
        self.overflowed = False
        self._fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self._fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        self._dirs: dict[int, str] = {}
        self._closed = False

    def add_tree(self) -> None:
        """Adds the watches (blocking; run it as the requesting user)."""
        self._add(self.root, top=True)
        if self.recursive:
            for d, subdirs, _ in os.walk(self.root):
                for s in subdirs:
                    p = posixpath.join(d, s)
                    if not os.path.islink(p):
                        self._add(p)

    def _add(self, path: str, top: bool = False) -> None:
        wd = _libc.inotify_add_watch(self._fd, os.fsencode(path), WATCH_MASK | IN_ONLYDIR)
        if wd < 0:
            err = ctypes.get_errno()
            if top:
                raise OSError(err, os.strerror(err), path)
            return
        self._dirs[wd] = path

    def start(self) -> None:
        asyncio.get_running_loop().add_reader(self._fd, self._on_readable)

    def _on_readable(self) -> None:
        self._read_once()

    def _read_once(self) -> bool:
        """Handles one read's worth of the kernel's queue; False once it is empty (or broken)."""
        try:
            buf = os.read(self._fd, 64 * 1024)
        except BlockingIOError:
            return False
        except OSError as e:
            log.warning("inotify read failed", extra={"error": str(e)})
            self.close()
            return False
        off = 0
        while off + _EVENT.size <= len(buf):
            wd, mask, _cookie, length = _EVENT.unpack_from(buf, off)
            raw = buf[off + _EVENT.size: off + _EVENT.size + length]
            off += _EVENT.size + length
            name = raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            self._handle(wd, mask, name)
        return True

    def _handle(self, wd: int, mask: int, name: str) -> None:
        if mask & IN_Q_OVERFLOW:
            self.overflowed = True
            return
        if mask & IN_IGNORED:
            self._dirs.pop(wd, None)
            return
        d = self._dirs.get(wd)
        if d is None:
            return
        path = posixpath.join(d, name) if name else d
        if mask & (IN_DELETE_SELF | IN_MOVE_SELF) and path != self.root:
            return  # the parent's watch already reported it by name
        rel = posixpath.relpath(path, self.root)
        for etype in _types_of(mask):
            self._put(FsEvent(rel, etype, path))
        if self.recursive and mask & IN_ISDIR and mask & (IN_CREATE | IN_MOVED_TO):
            self._add(path)
            # Whatever appeared inside before the new watch existed (`mkdir a && touch a/b`,
            # a tree moved in) is reported as created, as it would have been with a watch.
            for sub, subdirs, files in os.walk(path):
                for name in subdirs + files:
                    child = posixpath.join(sub, name)
                    if name in subdirs:
                        self._add(child)
                    self._put(FsEvent(posixpath.relpath(child, self.root), pb.EVENT_TYPE_CREATE, child))

    def _put(self, ev: FsEvent) -> None:
        try:
            self.queue.put_nowait(ev)
        except asyncio.QueueFull:
            self.overflowed = True

    def drain(self) -> list[FsEvent]:
        """Everything that happened up to now. The kernel's queue is read first: an operation
        that has answered made its events already, and a poll right after it (the SDK's polling
        watcher) must see them rather than depend on the event loop having woken up for them."""
        while not self._closed and self._read_once():
            pass
        out = []
        while not self.queue.empty():
            ev = self.queue.get_nowait()
            if ev is not None:
                out.append(ev)
        return out

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            asyncio.get_running_loop().remove_reader(self._fd)
        except RuntimeError:
            pass
        os.close(self._fd)
        try:
            self.queue.put_nowait(None)  # wakes a stream waiting for events
        except asyncio.QueueFull:
            pass

    @property
    def closed(self) -> bool:
        return self._closed


def is_inotify_supported() -> bool:
    fd = _libc.inotify_init1(IN_CLOEXEC)
    if fd < 0:
        return ctypes.get_errno() != errno.ENOSYS
    os.close(fd)
    return True
