"""Users of the template root: lookups, creating the default user, acting as a user for file I/O.

The passwd and group files are parsed here rather than through libc's NSS: after the agent
enters the template root, NSS would load the template's libraries (or find none at all), while
these plain files are the template's own truth either way.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import platform
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

PASSWD = "/etc/passwd"
GROUP = "/etc/group"
SHADOW = "/etc/shadow"


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: str
    shell: str
    groups: tuple[int, ...]  # supplementary groups, including the primary one

    @property
    def is_root(self) -> bool:
        return self.uid == 0


class UnknownUser(LookupError):
    pass


def _read_lines(path: str) -> list[list[str]]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return [ln.rstrip("\n").split(":") for ln in f if ln.strip() and not ln.startswith("#")]
    except FileNotFoundError:
        return []


def lookup(name: str) -> User:
    """The user `name` of the current root; root always exists even without /etc/passwd."""
    for fields in _read_lines(PASSWD):
        if len(fields) >= 7 and fields[0] == name:
            uid, gid = int(fields[2]), int(fields[3])
            return User(name, uid, gid, fields[5] or "/", fields[6] or "/bin/sh",
                        _groups_of(name, gid))
    if name == "root":
        return User("root", 0, 0, "/root", "/bin/sh", (0,))
    raise UnknownUser(name)


def _groups_of(name: str, gid: int) -> tuple[int, ...]:
    out = [gid]
    for fields in _read_lines(GROUP):
        if len(fields) >= 4 and name in fields[3].split(","):
            try:
                g = int(fields[2])
            except ValueError:
                continue
            if g not in out:
                out.append(g)
    return tuple(out)


def user_name(uid: int) -> str:
    for fields in _read_lines(PASSWD):
        if len(fields) >= 3 and fields[2] == str(uid):
            return fields[0]
    return "root" if uid == 0 else str(uid)


def group_name(gid: int) -> str:
    for fields in _read_lines(GROUP):
        if len(fields) >= 3 and fields[2] == str(gid):
            return fields[0]
    return "root" if gid == 0 else str(gid)


class NameCache:
    """uid/gid -> name for one listing, so a directory of 10k files reads /etc/passwd once."""

    def __init__(self) -> None:
        self._users: dict[int, str] | None = None
        self._groups: dict[int, str] | None = None

    def user(self, uid: int) -> str:
        if self._users is None:
            self._users = {}
            for f in _read_lines(PASSWD):
                if len(f) >= 3 and f[2].isdigit():
                    self._users.setdefault(int(f[2]), f[0])
        return self._users.get(uid, "root" if uid == 0 else str(uid))

    def group(self, gid: int) -> str:
        if self._groups is None:
            self._groups = {}
            for f in _read_lines(GROUP):
                if len(f) >= 3 and f[2].isdigit():
                    self._groups.setdefault(int(f[2]), f[0])
        return self._groups.get(gid, "root" if gid == 0 else str(gid))


def ensure_user(name: str, home: str | None = None) -> User:
    """Creates `name` in the current root if missing (images without useradd still get it)."""
    try:
        user = lookup(name)
    except UnknownUser:
        user = _create_user(name, home or f"/home/{name}")
    if not os.path.isdir(user.home):
        os.makedirs(user.home, exist_ok=True)
        os.chmod(user.home, 0o755)
        os.chown(user.home, user.uid, user.gid)
    return user


def _create_user(name: str, home: str) -> User:
    used_uids = {int(f[2]) for f in _read_lines(PASSWD) if len(f) >= 3 and f[2].isdigit()}
    used_gids = {int(f[2]) for f in _read_lines(GROUP) if len(f) >= 3 and f[2].isdigit()}
    uid = 1000
    while uid in used_uids or uid in used_gids:
        uid += 1
    shell = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"
    os.makedirs("/etc", exist_ok=True)
    if not os.path.exists(PASSWD):
        _append(PASSWD, "root:x:0:0:root:/root:/bin/sh")
    _append(PASSWD, f"{name}:x:{uid}:{uid}::{home}:{shell}")
    if not os.path.exists(GROUP):
        _append(GROUP, "root:x:0:")
    _append(GROUP, f"{name}:x:{uid}:")
    if os.path.exists(SHADOW):
        _append(SHADOW, f"{name}:!:19000:0:99999:7:::")
    return lookup(name)


def _append(path: str, line: str) -> None:
    prefix = ""
    if os.path.exists(path) and os.path.getsize(path) > 0:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                prefix = "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(prefix + line + "\n")


# -- acting as a user for file I/O --------------------------------------------------------------
#
# File operations run in worker threads that take the user's filesystem identity with the raw
# setfsuid/setfsgid/setgroups syscalls. Unlike the libc wrappers (which glibc applies to every
# thread), the raw syscalls change only the calling thread, so permission checks, ownership of
# created files and umask-free semantics are the kernel's own, without forking.

_SYSCALLS = {
    "x86_64": {"setgroups": 116, "setfsuid": 122, "setfsgid": 123},
    "aarch64": {"setgroups": 159, "setfsuid": 151, "setfsgid": 152},
}
_libc = ctypes.CDLL(None, use_errno=True)
_nr = _SYSCALLS.get(platform.machine())
_root_groups = tuple(os.getgroups()) if os.geteuid() == 0 else ()
_tls = threading.local()

FS_POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="envd-fs")


def _set_identity(uid: int, gid: int, groups: tuple[int, ...]) -> None:
    if _nr is None:
        raise OSError("per-thread file identity is not supported on this architecture")
    arr = (ctypes.c_uint * max(1, len(groups)))(*groups)
    if _libc.syscall(_nr["setgroups"], ctypes.c_size_t(len(groups)), arr) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    _libc.syscall(_nr["setfsgid"], ctypes.c_uint(gid))
    _libc.syscall(_nr["setfsuid"], ctypes.c_uint(uid))


def _call_as(user: User, fn: Callable[..., T], args: tuple) -> T:
    if user.is_root or os.geteuid() != 0:
        return fn(*args)
    _set_identity(user.uid, user.gid, user.groups)
    try:
        return fn(*args)
    finally:
        _set_identity(0, 0, _root_groups)


async def run_as(user: User, fn: Callable[..., T], *args) -> T:
    """Runs blocking file I/O `fn(*args)` in a worker thread with `user`'s file identity."""
    return await asyncio.get_running_loop().run_in_executor(FS_POOL, _call_as, user, fn, args)
