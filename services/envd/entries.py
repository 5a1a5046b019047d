"""Filesystem entries as the SDK expects them (`filesystem.EntryInfo`), path resolution, file
metadata (xattrs) and directory creation.

All functions here are blocking and meant to run through `users.run_as`, so that permission
checks are those of the user the request acts as.

Entries are shaped like upstream envd's (Go): a symlink reports its target's type and permission
bits, `symlinkTarget` is the fully resolved target (the link's own path when it cannot be
resolved, and then the type is unspecified), `isSymlink` is never set (the SDK would then call
every link a symlink, which upstream's envd never does), `mode` holds the permission bits only and
`permissions` is Go's `FileMode.String()` of the entry itself (`Lrwxrwxrwx` for a link,
`dtrwxrwxrwx` for /tmp).
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from collections.abc import Mapping

from google.protobuf.timestamp_pb2 import Timestamp

from .connect import Code, ConnectError
from .gen import filesystem_pb2 as pb
from .users import NameCache, User

METADATA_XATTR_PREFIX = "user.e2b."
# Upstream's limits: the Linux xattr name limit is 255 bytes including the prefix, and ext4 keeps
# all of an inode's xattrs (names and values) in one 4 KiB block.
MAX_METADATA_KEY_LEN = 255 - len(METADATA_XATTR_PREFIX)
MAX_METADATA_TOTAL_LEN = 4096
# The parents `ensure_dirs` creates; the umask applies, as it does upstream.
DIR_MODE = 0o755


def resolve_path(path: str, user: User) -> str:
    """Absolute, normalised path; relative paths and `~` are taken from the user's home."""
    if not path:
        raise ConnectError(Code.INVALID_ARGUMENT, "path is required")
    if "\x00" in path:
        raise ConnectError(Code.INVALID_ARGUMENT, "path contains a NUL byte")
    if path == "~" or path.startswith("~/"):
        path = user.home + path[1:]
    if not path.startswith("/"):
        path = posixpath.join(user.home, path)
    return posixpath.normpath(path).replace("//", "/")


def os_error(e: OSError, path: str) -> ConnectError:
    """Maps an OSError to the Connect code the SDK turns into the matching exception."""
    if e.errno == errno.ENOENT:
        return ConnectError(Code.NOT_FOUND, f"path '{path}' does not exist")
    if e.errno in (errno.EACCES, errno.EPERM):
        return ConnectError(Code.PERMISSION_DENIED, f"permission denied: '{path}'")
    if e.errno == errno.EEXIST:
        return ConnectError(Code.ALREADY_EXISTS, f"path '{path}' already exists")
    if e.errno == errno.ENOTDIR:
        return ConnectError(Code.INVALID_ARGUMENT, f"a component of '{path}' is not a directory")
    if e.errno == errno.EISDIR:
        return ConnectError(Code.INVALID_ARGUMENT, f"path '{path}' is a directory")
    if e.errno == errno.ENOTEMPTY:
        return ConnectError(Code.FAILED_PRECONDITION, f"directory '{path}' is not empty")
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return ConnectError(Code.RESOURCE_EXHAUSTED, f"not enough space for '{path}'")
    if e.errno == errno.EXDEV:
        return ConnectError(Code.FAILED_PRECONDITION, f"cannot move '{path}' across filesystems")
    return ConnectError(Code.INTERNAL, f"{path}: {e.strerror or e}")


def _file_type(mode: int) -> pb.FileType:
    if stat.S_ISDIR(mode):
        return pb.FILE_TYPE_DIRECTORY
    if stat.S_ISLNK(mode):
        return pb.FILE_TYPE_SYMLINK
    # Sockets, fifos and devices are listed as files: they can be opened by path.
    return pb.FILE_TYPE_FILE


# Go's FileMode.String(): one letter per set type or special bit, in this order, then rwxrwxrwx.
_GO_MODE_LETTERS = (
    (stat.S_ISDIR, "d"),
    (stat.S_ISLNK, "L"),
    (lambda m: stat.S_ISBLK(m) or stat.S_ISCHR(m), "D"),
    (stat.S_ISFIFO, "p"),
    (stat.S_ISSOCK, "S"),
    (lambda m: bool(m & stat.S_ISUID), "u"),
    (lambda m: bool(m & stat.S_ISGID), "g"),
    (stat.S_ISCHR, "c"),
    (lambda m: bool(m & stat.S_ISVTX), "t"),
)


def go_permissions(mode: int) -> str:
    """`permissions` as upstream envd writes it: Go's `os.FileMode.String()` of an lstat mode."""
    kind = "".join(letter for test, letter in _GO_MODE_LETTERS if test(mode)) or "-"
    return kind + "".join(c if mode & (1 << (8 - i)) else "-" for i, c in enumerate("rwxrwxrwx"))


def read_metadata(target: str | int) -> dict[str, str]:
    """The `user.e2b.*` xattrs of a path (links followed, as upstream does) or an open file."""
    out: dict[str, str] = {}
    try:
        names = os.listxattr(target)
    except OSError:
        return out
    for name in names:
        if name.startswith(METADATA_XATTR_PREFIX):
            try:
                value = os.getxattr(target, name)
            except OSError:
                continue
            out[name[len(METADATA_XATTR_PREFIX):]] = value.decode("utf-8", "replace")
    return out


def validate_metadata(metadata: Mapping[str, str]) -> str | None:
    """Why upstream would refuse this metadata (keys as they will be stored), or None."""
    total = 0
    for key, value in metadata.items():
        if not key:
            return "metadata key must not be empty"
        if len(key.encode()) > MAX_METADATA_KEY_LEN:
            return f"metadata key {key!r} exceeds {MAX_METADATA_KEY_LEN} bytes"
        for label, text in (("key", key), (f"value for key {key!r}", value)):
            for i, ch in enumerate(text):
                if not " " <= ch <= "~":
                    return f"metadata {label} contains non-printable-ASCII character {ch!r} at offset {i}"
        total += len(METADATA_XATTR_PREFIX) + len(key) + len(value)
    if total > MAX_METADATA_TOTAL_LEN:
        return f"total metadata size {total} exceeds {MAX_METADATA_TOTAL_LEN} bytes"
    return None


def replace_metadata(fd: int, metadata: Mapping[str, str]) -> None:
    """Makes `metadata` the file's whole metadata set: keys it lacks are removed. An overwrite
    keeps the inode, and with it the xattrs of the previous upload, so an upload without
    metadata must clear them (upstream always rewrites the set). Untouched keys cost no syscall,
    so a plain upload of a file without metadata changes nothing (and makes no inotify event)."""
    for name in os.listxattr(fd):
        if name.startswith(METADATA_XATTR_PREFIX) and name[len(METADATA_XATTR_PREFIX):] not in metadata:
            try:
                os.removexattr(fd, name)
            except OSError as e:
                if e.errno != errno.ENODATA:
                    raise
    for key, value in metadata.items():
        os.setxattr(fd, METADATA_XATTR_PREFIX + key, value.encode())


def take_ownership(target: str | int, user: User) -> None:
    """Chowns what the user just created or is about to overwrite to the user, as upstream's
    envd does after every mkdir and upload (its watchers therefore see a CHMOD event there,
    which the SDK's own tests count). Run as the user, the kernel only allows what a user may
    do: a no-op chown of its own file passes (and still makes the event), taking over someone
    else's writable file does not, and the file then keeps its owner."""
    try:
        os.chown(target, user.uid, user.gid)
    except PermissionError:
        pass


def ensure_dirs(path: str, user: User) -> None:
    """Creates the missing directories of `path` one by one, each owned by the user (upstream's
    EnsureDirs: mkdir then chown, so a watcher sees CREATE then CHMOD for each)."""
    missing: list[str] = []
    p = path
    while p and p != "/" and not os.path.isdir(p):
        missing.append(p)
        p = posixpath.dirname(p)
    for d in reversed(missing):
        try:
            os.mkdir(d, DIR_MODE)
        except FileExistsError:
            if not os.path.isdir(d):
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", d) from None
            continue  # made by someone else meanwhile
        take_ownership(d, user)


def entry_info(path: str, names: NameCache | None = None, st: os.stat_result | None = None) -> pb.EntryInfo:
    """EntryInfo for `path` (which must exist, possibly as a dangling symlink); see the module
    docstring for how links are reported."""
    names = names or NameCache()
    lst = st or os.lstat(path)
    e = pb.EntryInfo(
        name=posixpath.basename(path) or "/",
        path=path,
        size=lst.st_size,
        mode=lst.st_mode & 0o777,
        permissions=go_permissions(lst.st_mode),
        owner=names.user(lst.st_uid),
        group=names.group(lst.st_gid),
    )
    ts = Timestamp()
    ts.FromNanoseconds(lst.st_mtime_ns)
    e.modified_time.CopyFrom(ts)
    if stat.S_ISLNK(lst.st_mode):
        try:
            target = os.path.realpath(path, strict=True)
            target_st = os.stat(target)
        except (OSError, RuntimeError):  # dangling, a loop, or a component we may not search
            e.symlink_target = path
            e.type = pb.FILE_TYPE_UNSPECIFIED
            e.mode = 0
        else:
            e.symlink_target = target
            e.type = _file_type(target_st.st_mode)
            e.mode = target_st.st_mode & 0o777
    else:
        e.type = _file_type(lst.st_mode)
    md = read_metadata(path)
    if md:
        e.metadata.update(md)
    return e


def list_dir(path: str, depth: int) -> list[pb.EntryInfo]:
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise ConnectError(Code.INVALID_ARGUMENT, f"path '{path}' is not a directory")
    names = NameCache()
    out: list[pb.EntryInfo] = []

    def walk(d: str, level: int) -> None:
        try:
            it = os.scandir(d)
        except OSError:
            if d == path:
                raise
            return  # an unreadable subdirectory is listed but not descended into
        with it:
            children = sorted(it, key=lambda de: de.name)
        for de in children:
            child = posixpath.join(d, de.name)
            try:
                out.append(entry_info(child, names, de.stat(follow_symlinks=False)))
            except FileNotFoundError:
                continue  # removed while listing
            # Links are not followed into: a link to a parent would loop.
            if level < depth and de.is_dir(follow_symlinks=False):
                walk(child, level + 1)

    walk(path, 1)
    return out
