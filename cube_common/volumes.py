"""Volumes (E2B's persistent storage): the rules every service checks the same way.

A volume is an ext4 filesystem in a sparse image file on one node (the cubelet's
``<state>/cubelet/volumes/<team>/<volume_id>.ext4``). A sandbox mounts it read-write through one of
the microVM's spare virtio-blk slots (vmm_core: ``VOLUME_SLOTS``); the guest's kernel owns the
filesystem while it is mounted, so:

Invariants:
- At most one sandbox mounts a volume at a time, running or paused (a paused sandbox's guest still
  holds the filesystem in its saved memory). The master records it (Volume.mounted_by) before the
  node is asked and clears it when the sandbox is gone; the node refuses a second mount as well.
- Content calls (/volumecontent) work on a volume no sandbox mounts, on the image itself, and are
  refused (FAILED_PRECONDITION) while one does.
- A sandbox mounts at most ``MAX_MOUNTS`` volumes, each once, at distinct absolute paths that are
  not the root nor inside the guest's kernel and runtime filesystems.
"""

from __future__ import annotations

import posixpath
import re

MAX_MOUNTS = 2  # vmm_core.VOLUME_SLOTS: microvm has 8 virtio-mmio transports, 6 are taken
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
ID_RE = re.compile(r"[a-z0-9]{20}")  # use fullmatch
# A mount point or a content path longer than this is refused: far more than any real one needs,
# and it keeps every path well inside debugfs's 8 KB command line (services/cubelet/volume_fs.py).
MAX_PATH = 1024
MAX_NAME = 255  # one path component
# Guest paths a volume may not cover: the kernel's and the agent's own filesystems.
RESERVED = ("/proc", "/sys", "/dev", "/run", "/tmp", "/boot")


class VolumeRuleError(ValueError):
    """A volume name, mount or path that breaks the rules above; the message is for the client."""


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise VolumeRuleError(f"volume name {name!r} must be 1-63 letters, digits, '_', '.' or '-', "
                              "starting with a letter or digit")
    return name


def normalize_path(path: str, *, what: str = "path") -> str:
    """An absolute path within a volume or the guest, with no '.', '..' or repeated slashes.
    '..' is refused rather than resolved: a client that sends it means something we cannot guess."""
    if not isinstance(path, str) or not path:
        raise VolumeRuleError(f"{what} is required")
    if len(path) > MAX_PATH:
        raise VolumeRuleError(f"{what} is longer than {MAX_PATH} bytes")
    if "\x00" in path:
        raise VolumeRuleError(f"{what} contains a NUL byte")
    if "\n" in path or "\r" in path:  # no tool of the node's can name such an entry (volume_fs.py)
        raise VolumeRuleError(f"{what} contains a newline or carriage return")
    if not path.startswith("/"):
        path = "/" + path
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise VolumeRuleError(f"{what} {path!r} contains '..'")
    if any(len(p.encode()) > MAX_NAME for p in parts):
        raise VolumeRuleError(f"{what} has a component longer than {MAX_NAME} bytes")
    return "/" + "/".join(parts)


def check_mount_path(path: str) -> str:
    """Where a volume may be mounted in the guest: absolute, normalized, not '/', not in RESERVED."""
    norm = normalize_path(path, what="mount path")
    if norm == "/":
        raise VolumeRuleError("a volume cannot be mounted at /")
    for r in RESERVED:
        if norm == r or norm.startswith(r + "/"):
            raise VolumeRuleError(f"mount path {norm!r} is inside {r}, which the guest's system owns")
    return norm


def check_mounts(mounts: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(volume name or id, path) pairs as a create asks them: at most MAX_MOUNTS, each volume once,
    no path equal to or inside another. Returns them with normalized paths."""
    if len(mounts) > MAX_MOUNTS:
        raise VolumeRuleError(f"a sandbox mounts at most {MAX_MOUNTS} volumes, not {len(mounts)}")
    out: list[tuple[str, str]] = []
    for name, path in mounts:
        if not isinstance(name, str) or not name:
            raise VolumeRuleError("each volume mount needs a volume name")
        norm = check_mount_path(path)
        for other_name, other in out:
            if other_name == name:
                raise VolumeRuleError(f"volume {name!r} is mounted twice")
            if norm == other or posixpath.commonpath([norm, other]) in (norm, other):
                raise VolumeRuleError(f"mount paths {other!r} and {norm!r} overlap")
        out.append((name, norm))
    return out
