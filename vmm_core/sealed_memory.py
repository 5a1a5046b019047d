"""A template's memory as a sealed memfd: what a clone's QEMU maps instead of the file itself.

QEMU 7.2 opens a private ``memory-backend-file`` read-write and keeps the descriptor, so a QEMU
that maps the template's memory file could write the template through it, into every later clone
(docs/architecture.md, "The VMM jail"). A memfd sealed with ``F_SEAL_WRITE`` takes that away:
writes through any descriptor fail (EPERM), shared writable mappings fail, and a private writable
mapping, which is what a clone is, still works. QEMU gets the memfd as an inherited descriptor and
the path ``/proc/self/fd/<n>``.

Invariants:
- One memfd per template memory file (by path, inode and mtime) per process, filled once with the
  file's data and allocated in full (no holes), then sealed against writes, growing, shrinking and
  further seals before any QEMU sees it. Its pages are shared by every clone's private mapping, as
  the file's page cache was, and charged to this process's cgroup, not to a clone's; the file's
  own cached pages are dropped after the copy. The cost: the template's whole guest RAM stays in
  memory (shmem) per template while this process runs, where the page cache held only what clones
  touched, and could reclaim it.
- An entry whose file is gone or replaced is dropped at the next lookup: a deleted template's
  memory lives on only in the clones still running from it.
- A checkpoint's memfd may be adopted before its file exists (``adopt_writing``): the file is
  then written from it in the background, under a temporary name renamed into place once whole,
  so a file at the path is always complete. Until then the entry is *pending*: it is found by path
  alone, never swept, and ``pending(path)`` is true. If the write fails (the snapshot was deleted
  meanwhile, the disk is full) the entry is dropped: no clone ever maps a memory that no file
  backs, beyond the ones already running.
- Linux only (memfd_create, F_ADD_SEALS); standard library only.
"""
from __future__ import annotations

import fcntl
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

SEALS = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL
CHUNK = 4 << 20
# Zero blocks of this size are left unwritten (holes) when copying: a guest's free RAM is zeros.
ZERO_BLOCK = 64 << 10
_ZEROS = bytes(ZERO_BLOCK)


@dataclass(frozen=True)
class _Key:
    path: Path
    inode: int
    mtime_ns: int


_memfds: dict[Path, tuple[_Key, int]] = {}
_lock = threading.Lock()
# The key of an entry whose file is being written (adopt_writing).
_PENDING = -1
log = logging.getLogger("vmm_core.sealed_memory")


def sealed_fd(path: Path) -> int:
    """A sealed memfd holding ``path``'s content (made on first use; owned by this module: never
    close it). Blocking: call it off the event loop."""
    with _lock:
        found = _memfds.get(path)
        if found is not None and found[0].inode == _PENDING:
            return found[1]
    st = os.stat(path)
    key = _Key(path, st.st_ino, st.st_mtime_ns)
    with _lock:
        _sweep()
        found = _memfds.get(path)
        if found is not None and found[0] == key:
            return found[1]
        if found is not None:
            os.close(found[1])
            del _memfds[path]
        fd = _fill(path, st.st_size)
        _memfds[path] = (key, fd)
        return fd


def adopt(path: Path, fd: int) -> None:
    """Take ``fd``, a memfd holding exactly what the file at ``path`` was just written from (a
    checkpoint's RAM, vmm_core.checkpoint), as that file's sealed memfd: the first clone then needs no
    copy of the file. The fd becomes this module's (never close it); on failure it is closed.
    Blocking."""
    try:
        st = os.stat(path)
        if os.fstat(fd).st_size != st.st_size:
            raise ValueError(f"memfd of {os.fstat(fd).st_size} bytes for {path} of {st.st_size}")
        os.posix_fallocate(fd, 0, st.st_size)  # no holes (see _fill)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
    except BaseException:
        os.close(fd)
        raise
    with _lock:
        _sweep()
        old = _memfds.pop(path, None)
        if old is not None:
            os.close(old[1])
        _memfds[path] = (_Key(path, st.st_ino, st.st_mtime_ns), fd)


def forget(path: Path) -> None:
    """Drop ``path``'s memfd (its clones keep their own copies of the descriptor); the next
    ``sealed_fd`` reads the file again."""
    with _lock:
        found = _memfds.pop(path, None)
        if found is not None:
            os.close(found[1])


def pending(path: Path) -> bool:
    """Whether ``path`` is a memory file still being written from its adopted memfd."""
    with _lock:
        found = _memfds.get(path)
        return found is not None and found[0].inode == _PENDING


def adopt_writing(path: Path, fd: int, size: int) -> threading.Thread:
    """``adopt`` for a file not written yet: ``fd`` (a memfd of ``size`` bytes) is sealed and
    becomes ``path``'s sealed memory now, and a thread writes the file from it (read-only, root's),
    renaming it into place once whole. The fd becomes this module's; on failure it is closed.
    Blocking (the sealing; the write is the thread's, which is returned for tests to join)."""
    try:
        if os.fstat(fd).st_size != size:
            raise ValueError(f"memfd of {os.fstat(fd).st_size} bytes for {path} of {size}")
        os.posix_fallocate(fd, 0, size)  # no holes (see _fill)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
    except BaseException:
        os.close(fd)
        raise
    key = _Key(path, _PENDING, _PENDING)
    with _lock:
        old = _memfds.pop(path, None)
        if old is not None:
            os.close(old[1])
        _memfds[path] = (key, fd)
    writer = threading.Thread(target=_write_pending, args=(path, fd, size, key), daemon=True,
                              name=f"memory-file:{path.parent.name}")
    writer.start()
    return writer


def _write_pending(path: Path, fd: int, size: int, key: _Key) -> None:
    partial = path.with_name(f".{path.name}.writing")
    try:
        write_file(fd, partial, size)
        os.chmod(partial, 0o444)
        os.rename(partial, path)
        st = os.stat(path)
    except OSError as e:
        log.warning("writing memory file %s failed: %s", path, e)
        try:
            os.unlink(partial)
        except OSError:
            pass
        with _lock:
            if _memfds.get(path, (None, -1))[0] is key:
                os.close(_memfds.pop(path)[1])
        return
    with _lock:
        if _memfds.get(path, (None, -1))[0] is key:
            _memfds[path] = (_Key(path, st.st_ino, st.st_mtime_ns), fd)


def write_file(fd: int, path: Path, size: int) -> None:
    """Write a memfd's data to a new file at ``path`` (0600), its holes left holes. Blocking."""
    out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(out, size)
        _copy_data(fd, out, size)
    finally:
        os.close(out)


def _copy_data(src: int, dst: int, size: int) -> None:
    """Copy ``src``'s data extents into ``dst`` at the same offsets; holes, and blocks of zeros
    within the data (a memfd allocated whole is all data), are not written: ``dst`` must read as
    zeros there (a new file, a new memfd)."""
    for start, end in _data_extents(src, size):
        pos = start
        while pos < end:
            data = os.pread(src, min(CHUNK, end - pos), pos)
            if not data:
                break
            view = memoryview(data)
            run = -1  # where the current run of non-zero blocks began, or -1
            for off in range(0, len(data) + ZERO_BLOCK, ZERO_BLOCK):
                block = view[off:off + ZERO_BLOCK]
                zero = not block or block == _ZEROS[:len(block)]
                if zero and run >= 0:
                    os.pwrite(dst, view[run:off], pos + run)  # one write per run of data
                    run = -1
                elif not zero and run < 0:
                    run = off
            pos += len(data)


def _sweep() -> None:
    for path, (key, fd) in list(_memfds.items()):
        if key.inode == _PENDING:
            continue  # its writer settles it
        try:
            st = os.stat(path)
            alive = (st.st_ino, st.st_mtime_ns) == (key.inode, key.mtime_ns)
        except FileNotFoundError:
            alive = False
        if not alive:
            os.close(fd)
            del _memfds[path]


def _fill(path: Path, size: int) -> int:
    fd = os.memfd_create(f"cube-tpl:{path.parent.name}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
        src = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _copy_data(src, fd, size)
            os.posix_fadvise(src, 0, 0, os.POSIX_FADV_DONTNEED)  # the memfd holds it now
        finally:
            os.close(src)
        # No holes: a clone reading a hole of a private shmem mapping would allocate the page in the
        # memfd and have it charged to its own cgroup (measured: a guest touching all its RAM then
        # held ~0.6 GB of the template besides its own pages, and was OOM-killed at guest RAM +
        # allowance). Filled now, the template is charged once, here, and a clone's cgroup holds
        # only the pages it changed.
        os.posix_fallocate(fd, 0, size)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    out = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:  # ENXIO: only a hole is left
            break
        end = os.lseek(fd, start, os.SEEK_HOLE)
        out.append((start, min(end, size)))
        pos = end
    return out
