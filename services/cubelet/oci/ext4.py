"""Write what an image declares (`unpack.Meta` per host inode) into the ext4 image made from its
host tree, so owners, modes, devices and xattrs exist in the template and never on the host.

The template's ext4 is made by `mkfs.ext4 -d <tree>` (vmm_core.ext4_from_dir), which copies the
host tree: names, content, hard links, symlinks, mtimes, and the tree's inert host metadata (root,
0700 directories, 0600 files, empty placeholders for devices and FIFOs). `apply_metadata` then
edits the unmounted image file with `debugfs -w`, inode by inode:

- `sif <ino> mode|uid|gid`: the declared type and mode (with setuid/setgid/sticky) and owner;
- a device node or FIFO: its placeholder inode becomes the special file in place (flags cleared,
  the device number in `i_block[0]`/`[1]` encoded as the kernel and `debugfs mknod` do), and then
  `e2fsck -fy` sets the file type its directory entries record (mkfs wrote "regular"; readdir's
  d_type, which overlayfs reads to find whiteouts, must be right);
- `ea_set -f <value file> <ino> <name>` for the xattrs unpack.py kept.

Commands name inodes by number, never by path. The host-inode to image-inode mapping is read
breadth first with `ls -p <dir inode>` (one read-only debugfs run per tree level), matching names
byte for byte: a name may hold any byte but `/` and NUL, and `ls -p` separates its fields with
`/`, so even a name with a newline is read back exactly.

What was measured on this node's e2fsprogs (Debian 12, 1.47.0) to choose this: mke2fs 1.47.0
populates only from a directory (tarball input came in 1.47.1) and has no device table, so
metadata the host tree must not carry has to be set afterwards. debugfs looks paths up by a linear
directory scan, so 60k `sif` commands by path into a 20k-entry directory took 10 s, and would be
quadratic for a hostile image; the same commands by inode number took 0.06 s.

debugfs exits 0 even when a command fails: anything on its stderr but its banner is an error.
"""
from __future__ import annotations

import os
import re
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import OciError
from .unpack import ImageTree, Meta

ROOT_INO = 2
_ENV = {"DEBUGFS_PAGER": "__none__", "PAGER": "__none__", "LC_ALL": "C", "PATH": os.environ.get("PATH", "")}
_ECHO = re.compile(rb"debugfs: ls -p <(\d+)>\n")
_RECORD = re.compile(rb"/(\d+)/([0-7]+)/(-?\d+)/(-?\d+)/([^/]*)/(\d*)/\n")
_BANNER = re.compile(r"^debugfs \S+ \(.*\)$")
_BLOCKS = ("block[0]", "block[1]", "block[2]", "block[3]")
_SPECIAL = (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO)


class Ext4Error(OciError):
    """debugfs could not read or edit the image (a bug, or a full image), not the image's fault."""


def apply_metadata(tree: ImageTree, image: Path, *, debugfs: str = "debugfs", e2fsck: str = "e2fsck") -> int:
    """Set in `image` (made with mkfs.ext4 -d from `tree.root`) the metadata `tree` declares.
    Returns the number of debugfs commands run."""
    with tempfile.TemporaryDirectory(prefix=".ext4meta-", dir=tree.root.parent) as tmp:
        inodes = _map_inodes(tree, image, debugfs, Path(tmp))
        commands = list(_commands(tree, inodes, Path(tmp)))
        if not commands:
            return 0
        script = Path(tmp) / "commands"
        script.write_bytes(b"".join(commands))
        _debugfs([debugfs, "-w", "-f", str(script), str(image)], capture=False)
    if any(m.kind in _SPECIAL for m in tree.meta.values()):
        _fix_dirent_types(image, e2fsck)
    return len(commands)


def _fix_dirent_types(image: Path, e2fsck: str) -> None:
    """A directory entry records its file's type, and mkfs wrote "regular" for a placeholder.
    e2fsck rewrites exactly those (one linear pass; debugfs could only relink each entry by
    name, a directory scan per entry). Exit 1 means it corrected them."""
    r = subprocess.run([e2fsck, "-fy", str(image)], capture_output=True, env=_ENV, stdin=subprocess.DEVNULL)
    if r.returncode not in (0, 1):
        tail = (r.stdout + r.stderr).decode(errors="replace").strip()[-1000:]
        raise Ext4Error(f"e2fsck could not finish the image (exit {r.returncode}): {tail}")


def _map_inodes(tree: ImageTree, image: Path, debugfs: str, tmp: Path) -> dict[int, tuple[int, os.stat_result]]:
    """host inode -> (image inode, host lstat), breadth first from the roots."""
    root_st = os.lstat(tree.root)
    found: dict[int, tuple[int, os.stat_result]] = {root_st.st_ino: (ROOT_INO, root_st)}
    level: list[tuple[bytes, int]] = [(os.fsencode(tree.root), ROOT_INO)]
    while level:
        listings = _list_dirs(image, [ino for _, ino in level], debugfs, tmp)
        below: list[tuple[bytes, int]] = []
        for host_dir, image_dir in level:
            listing = listings.get(image_dir, {})
            with os.scandir(host_dir) as entries:
                for e in entries:
                    image_ino = listing.get(e.name)
                    if image_ino is None:
                        raise Ext4Error(f"{os.fsdecode(e.path)!r} is missing from the ext4 image")
                    st = e.stat(follow_symlinks=False)
                    found.setdefault(st.st_ino, (image_ino, st))
                    if stat.S_ISDIR(st.st_mode):
                        below.append((e.path, image_ino))
        level = below
    return found


def _list_dirs(image: Path, inodes: list[int], debugfs: str, tmp: Path) -> dict[int, dict[bytes, int]]:
    """{directory inode: {name: inode}} of the image, by `ls -p` in one read-only run."""
    script = tmp / "list"
    script.write_text("".join(f"ls -p <{i}>\n" for i in inodes))
    out = _debugfs([debugfs, "-f", str(script), str(image)], capture=True)
    listings: dict[int, dict[bytes, int]] = {}
    current: dict[bytes, int] | None = None
    pos = 0
    while pos < len(out):
        echo = _ECHO.match(out, pos)
        if echo is not None:
            current = listings.setdefault(int(echo[1]), {})
            pos = echo.end()
            continue
        record = _RECORD.match(out, pos)
        if record is not None and current is not None:
            if record[5] not in (b".", b".."):
                current[record[5]] = int(record[1])
            pos = record.end()
            continue
        if out[pos:pos + 1] == b"\n":
            pos += 1
            continue
        raise Ext4Error(f"unexpected debugfs output at byte {pos}: {out[pos:pos + 80]!r}")
    return listings


def _commands(tree: ImageTree, inodes: dict[int, tuple[int, os.stat_result]], tmp: Path) -> Iterator[bytes]:
    xattr_files = 0
    for host_ino, (ino, st) in inodes.items():
        meta = tree.meta.get(host_ino)
        if meta is None:
            continue
        target = f"<{ino}>"
        every = ino == ROOT_INO  # mkfs gives the root its own owner and mode, whatever the host's
        if meta.kind in _SPECIAL:
            yield from _special(target, meta)
        elif meta.kind != stat.S_IFLNK and (every or meta.st_mode != st.st_mode):
            yield f"sif {target} mode 0{meta.st_mode:o}\n".encode()
        if every or meta.uid != st.st_uid:
            yield f"sif {target} uid {meta.uid}\n".encode()
        if every or meta.gid != st.st_gid:
            yield f"sif {target} gid {meta.gid}\n".encode()
        for name, value in meta.xattrs:
            xattr_files += 1
            value_file = tmp / f"x{xattr_files}"
            value_file.write_bytes(value)
            quoted = os.fsencode(value_file).replace(b'"', b'""')
            yield b'ea_set -f "' + quoted + f'" {target} {name}\n'.encode()


def _special(target: str, meta: Meta) -> Iterator[bytes]:
    """Turn an empty regular placeholder inode into a device node or FIFO."""
    yield f"sif {target} flags 0\n".encode()
    words = [0, 0, 0, 0]
    if meta.rdev is not None:
        major, minor = meta.rdev
        if major < 256 and minor < 256:
            words[0] = (major << 8) | minor
        else:
            words[1] = (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)
    for field, value in zip(_BLOCKS, words, strict=True):
        yield f"sif {target} {field} {value}\n".encode()
    yield f"sif {target} mode 0{meta.st_mode:o}\n".encode()


def _debugfs(argv: list[str], *, capture: bool) -> bytes:
    r = subprocess.run(argv, stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                       stderr=subprocess.PIPE, env=_ENV, stdin=subprocess.DEVNULL)
    errors = [line for line in r.stderr.decode(errors="replace").splitlines()
              if line.strip() and not _BANNER.match(line)]
    if r.returncode != 0 or errors:
        raise Ext4Error(f"debugfs failed (exit {r.returncode}): {'; '.join(errors[:5])[:1000]}")
    return r.stdout if capture else b""
