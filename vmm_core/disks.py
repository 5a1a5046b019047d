"""Disk images: read-only ext4 from a directory, writable layers, copy-on-write overlays."""
from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from .errors import ArtifactError, InvalidSpecError
from .guest_config import GuestConfig


def _run(cmd: list[str], what: str) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise ArtifactError(f"{what} failed: {(r.stderr or r.stdout).strip()[-1500:]}")


def _dir_bytes(root: Path) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for n in filenames + dirnames:
            try:
                total += os.lstat(os.path.join(dirpath, n)).st_size
            except OSError:
                pass
    return total


def ext4_from_dir(source: Path, image: Path, *, size_mb: int | None = None, label: str = "cube") -> Path:
    """A read-only-use ext4 image holding `source`, without mounting anything (mkfs.ext4 -d)."""
    if not source.is_dir():
        raise InvalidSpecError(f"{source} is not a directory")
    if size_mb is None:
        # Room for metadata and inodes on top of the file bytes.
        size_mb = max(16, int(_dir_bytes(source) * 1.25 / 2**20) + 64)
    image.unlink(missing_ok=True)
    _run(["mkfs.ext4", "-q", "-F", "-L", label, "-O", "^has_journal", "-E", "root_owner=0:0", "-b", "4096",
          "-N", str(max(4096, sum(len(f) + len(d) for _, d, f in os.walk(source)) * 2)),
          "-d", str(source), str(image), f"{size_mb}M"], f"mkfs.ext4 {image.name}")
    return image


def writable_layer(image: Path, size_mb: int, config: GuestConfig) -> Path:
    """A fresh writable layer of `size_mb`: ext4 with the guest config, the overlay's upper and work
    dirs. Sparse, so an empty 1 GB layer costs a few MB."""
    if size_mb < 16:
        raise InvalidSpecError(f"writable layer of {size_mb} MB is too small (minimum 16 MB)")
    with tempfile.TemporaryDirectory(prefix="cube-rw-") as tmp:
        root = Path(tmp)
        (root / "cube").mkdir()
        (root / "cube" / "guest.json").write_text(config.to_json())
        (root / "upper").mkdir()
        (root / "work").mkdir()
        image.unlink(missing_ok=True)
        _run(["mkfs.ext4", "-q", "-F", "-L", "cube-rw", "-E", "root_owner=0:0,lazy_itable_init=1",
              "-d", str(root), str(image), f"{size_mb}M"], "mkfs.ext4 writable layer")
    return image


def cow_overlay(backing: Path, overlay: Path, qemu_img: str = "qemu-img") -> Path:
    """A qcow2 overlay whose reads fall through to `backing` and whose writes stay in `overlay`."""
    if not backing.exists():
        raise InvalidSpecError(f"backing image {backing} does not exist")
    fmt = "qcow2" if backing.suffix == ".qcow2" else "raw"
    _run([qemu_img, "create", "-q", "-f", "qcow2", "-F", fmt, "-b", str(backing), str(overlay)],
         "qemu-img create overlay")
    return overlay


def allocated_bytes(path: Path) -> int:
    """Bytes the file really occupies on the host (sparse-aware)."""
    try:
        return os.stat(path).st_blocks * 512
    except FileNotFoundError:
        return 0


def copy_sparse(src: Path, dst: Path) -> None:
    _run(["cp", "--sparse=always", "--reflink=auto", str(src), str(dst)], f"copy {src.name}")
