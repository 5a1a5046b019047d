"""Filesystem entries as the SDK expects them (`filesystem.EntryInfo`), and path resolution.

All functions here are blocking and meant to run through `users.run_as`, so that permission
checks are those of the user the request acts as.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat

from google.protobuf.timestamp_pb2 import Timestamp

from .connect import Code, ConnectError
from .gen import filesystem_pb2 as pb
from .users import NameCache, User

METADATA_XATTR_PREFIX = "user.e2b."


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


def read_metadata(path: str) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return out
    for name in names:
        if name.startswith(METADATA_XATTR_PREFIX):
            try:
                value = os.getxattr(path, name, follow_symlinks=False)
            except OSError:
                continue
            out[name[len(METADATA_XATTR_PREFIX):]] = value.decode("utf-8", "replace")
    return out


def write_metadata(path: str, metadata: dict[str, str]) -> None:
    for key, value in metadata.items():
        os.setxattr(path, METADATA_XATTR_PREFIX + key.lower(), value.encode())


def entry_info(path: str, names: NameCache | None = None, st: os.stat_result | None = None) -> pb.EntryInfo:
    """EntryInfo for `path` (which must exist, possibly as a dangling symlink)."""
    names = names or NameCache()
    lst = st or os.lstat(path)
    e = pb.EntryInfo(
        name=posixpath.basename(path) or "/",
        path=path,
        size=lst.st_size,
        mode=stat.S_IMODE(lst.st_mode),
        permissions=stat.filemode(lst.st_mode),
        owner=names.user(lst.st_uid),
        group=names.group(lst.st_gid),
    )
    ts = Timestamp()
    ts.FromNanoseconds(lst.st_mtime_ns)
    e.modified_time.CopyFrom(ts)
    if stat.S_ISLNK(lst.st_mode):
        e.is_symlink = True
        try:
            target = os.readlink(path)
            e.symlink_target = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
        except OSError:
            pass
        try:
            # A link reports what it points to, the way the SDK expects since envd 0.6.
            e.type = _file_type(os.stat(path).st_mode)
        except OSError:
            e.type = pb.FILE_TYPE_SYMLINK  # dangling
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
