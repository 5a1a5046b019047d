"""Disk images: read-only ext4 from a directory, writable layers, copy-on-write overlays."""
from __future__ import annotations

import os
import struct
import subprocess
import tempfile
from dataclasses import dataclass
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


def rebase_overlay(overlay: Path, backing: Path, qemu_img: str = "qemu-img") -> Path:
    """Make the qcow2 ``overlay`` read through ``backing`` from now on, without reading or copying
    data (an unsafe rebase: the header's backing file name changes, nothing else). Only for a backing
    file with the very bytes of the one the overlay was made on: another host's copy of it, say."""
    if not backing.is_absolute() or not backing.is_file():
        raise InvalidSpecError(f"backing image {backing} is not an existing absolute path")
    fmt = "qcow2" if backing.suffix == ".qcow2" else "raw"
    _run([qemu_img, "rebase", "-q", "-u", "-f", "qcow2", "-F", fmt, "-b", str(backing), str(overlay)],
         "qemu-img rebase overlay")
    return overlay


QCOW2_MAGIC = b"QFI\xfb"
# Incompatible feature: guest data lives in an external file the header names (qcow2 spec, bit 2).
QCOW2_EXTERNAL_DATA = 1 << 2


@dataclass(frozen=True)
class Qcow2Header:
    """What a qcow2 image's header says about the files it depends on (and its size)."""

    version: int
    virtual_size: int
    backing: bytes | None  # the backing file name as stored, or None
    incompatible_features: int  # 0 for a version 2 image

    @property
    def external_data(self) -> bool:
        return bool(self.incompatible_features & QCOW2_EXTERNAL_DATA)


def qcow2_header(path: Path) -> Qcow2Header | None:
    """The header of the qcow2 image at ``path``, or None when it is not a qcow2 image. Reads the
    header only: never opens a file the image names. Raises OSError."""
    with open(path, "rb") as f:
        header = f.read(80)
        if len(header) < 32 or header[:4] != QCOW2_MAGIC:
            return None
        version, offset, size, virtual = struct.unpack(">IQIxxxxQ", header[4:32])
        incompatible = struct.unpack(">Q", header[72:80])[0] if version >= 3 and len(header) >= 80 else 0
        backing = None
        if offset and 0 < size <= 1023:
            f.seek(offset)
            backing = f.read(size)
        return Qcow2Header(version, virtual, backing, incompatible)


def allocated_bytes(path: Path) -> int:
    """Bytes the file really occupies on the host (sparse-aware)."""
    try:
        return os.stat(path).st_blocks * 512
    except FileNotFoundError:
        return 0


def copy_sparse(src: Path, dst: Path) -> None:
    _run(["cp", "--sparse=always", "--reflink=auto", str(src), str(dst)], f"copy {src.name}")


def flatten(src: Path, dest: Path, fmt: str = "raw", qemu_img: str = "qemu-img") -> Path:
    """``src`` with its whole backing chain as one standalone sparse image of ``fmt`` at ``dest``."""
    _run([qemu_img, "convert", "-q", "-O", fmt, str(src), str(dest)], f"qemu-img convert {src.name}")
    return dest
