"""Entering the template's root filesystem.

The agent runs on the guest base image's Python, while processes, files and kernels must be the
template's. So the agent imports everything it will ever need (`preload`), binds its sockets,
then moves into a private mount namespace, mounts the kernel filesystems inside the root where
they are missing, and chroots there. The private namespace keeps those mounts out of the
caller's view and makes them disappear with the agent's last process.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger("envd.rootfs")

CLONE_NEWNS = 0x00020000
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SLAVE = 1 << 19

_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source: str, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    rc = _libc.mount(
        source.encode(), target.encode(), fstype.encode() if fstype else None,
        ctypes.c_ulong(flags), data.encode() if data else None,
    )
    _check(rc, f"mount {fstype or 'bind'} {source} on {target}")


def _is_mount(path: str) -> bool:
    try:
        return os.path.ismount(path)
    except OSError:
        return False


def _ensure_dir(path: str, mode: int = 0o755) -> bool:
    try:
        os.makedirs(path, mode=mode, exist_ok=True)
        return True
    except OSError as e:
        log.warning("cannot create directory in root", extra={"path": path, "error": str(e)})
        return False


def _mount_kernel_fs(root: str, tmpfs_tmp: bool) -> None:
    j = lambda p: os.path.join(root, p.lstrip("/"))  # noqa: E731
    if _ensure_dir(j("/proc")) and not _is_mount(j("/proc")):
        mount("proc", j("/proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    if _ensure_dir(j("/sys")) and not _is_mount(j("/sys")):
        try:
            mount("sysfs", j("/sys"), "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        except OSError:
            mount("/sys", j("/sys"), None, MS_BIND | MS_REC)
    if _ensure_dir(j("/dev")) and not _is_mount(j("/dev")):
        try:
            mount("devtmpfs", j("/dev"), "devtmpfs", MS_NOSUID, "mode=0755")
        except OSError:
            mount("/dev", j("/dev"), None, MS_BIND | MS_REC)
    pts = j("/dev/pts")
    if _ensure_dir(pts) and not _is_mount(pts):
        # A new devpts instance: /dev/ptmx resolves to the "pts" next to it since Linux 4.7.
        mount("devpts", pts, "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5")
    if not os.path.exists(j("/dev/ptmx")):
        try:
            os.symlink("pts/ptmx", j("/dev/ptmx"))
        except OSError:
            pass
    shm = j("/dev/shm")
    if _ensure_dir(shm, 0o1777) and not _is_mount(shm):
        mount("shm", shm, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    tmp = j("/tmp")
    if _ensure_dir(tmp, 0o1777):
        if tmpfs_tmp and not _is_mount(tmp):
            mount("tmpfs", tmp, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
        else:
            os.chmod(tmp, 0o1777)


def enter_root(root: str, tmpfs_tmp: bool = False) -> None:
    """Makes `root` the agent's `/` (no-op for '/')."""
    root = os.path.realpath(root)
    if root == "/":
        return
    if not os.path.isdir(root):
        raise OSError(f"root {root!r} is not a directory")
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    # Nothing mounted from here on may propagate back to the caller's namespace; what the guest
    # init mounts under the root later (volumes) propagates in, where the root is shared.
    mount("none", "/", None, MS_REC | MS_SLAVE)
    _mount_kernel_fs(root, tmpfs_tmp)
    os.chroot(root)
    os.chdir("/")
    log.info("entered root", extra={"root": root})
