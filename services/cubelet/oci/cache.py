"""Content-addressed blob store: ``<root>/blobs/sha256/<hex>``.

A blob becomes visible only after its bytes were hashed and matched its digest, and only by an
atomic rename from ``<root>/tmp``, so readers never see a partial or wrong blob and two
writers of the same blob (threads, tasks or processes) cannot corrupt each other: both write
private temp files and the last rename wins with identical bytes. Within one process, tasks
fetching the same digest are also serialised so the second one finds it cached.

Size limit: with `max_bytes`, the cache evicts least recently used blobs (a blob's mtime is its
last use: set when it is written and when a pull pins it) after every blob it publishes, until
its blobs fit. A pull pins every blob of its image (`pin`) from the moment its manifest is known
until its layers are unpacked; pinned blobs and the blob just published are never evicted, so a
running build never loses a layer, and an image larger than the limit still builds (the cache
goes back under its limit once that build has let go). Pins are counted in this process: one
cubelet owns its cache directory.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import threading
import time
import uuid
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import DigestMismatch, InvalidImage
from .manifest import check_digest

log = logging.getLogger(__name__)

_STALE_TMP_SECONDS = 3600.0
_HEX_RE = re.compile(r"^[a-f0-9]{64}\Z")


class BlobWriter:
    """Streams one blob into a temp file, hashing it; `commit()` verifies and publishes it."""

    def __init__(self, cache: LayerCache, digest: str, size: int | None, what: str) -> None:
        self._cache = cache
        self.digest = digest
        self._size = size
        self._what = what
        self._hash = hashlib.sha256()
        self.written = 0
        self.tmp_path = cache.root / "tmp" / f"{digest[7:]}.{uuid.uuid4().hex}.partial"
        self._fd: int | None = os.open(self.tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)

    def write(self, chunk: bytes) -> None:
        self.written += len(chunk)
        if self._size is not None and self.written > self._size:
            raise DigestMismatch(f"{self._what} {self.digest}", self.digest,
                                 f"more than the declared {self._size} bytes")
        self._hash.update(chunk)
        view = memoryview(chunk)
        assert self._fd is not None, "write after commit or abort"
        while view:
            n = os.write(self._fd, view)
            view = view[n:]

    def commit(self) -> Path:
        actual = "sha256:" + self._hash.hexdigest()
        self._close()
        if actual != self.digest:
            self.abort()
            raise DigestMismatch(f"{self._what} {self.digest}", self.digest, actual)
        if self._size is not None and self.written != self._size:
            self.abort()
            raise InvalidImage(f"{self._what} {self.digest}: size {self.written}, "
                               f"descriptor says {self._size}")
        final = self._cache.path(self.digest)
        os.replace(self.tmp_path, final)
        self._cache.evict(keep=self.digest)
        return final

    def abort(self) -> None:
        self._close()
        try:
            os.unlink(self.tmp_path)
        except FileNotFoundError:
            pass

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._fd is not None or exc_type is not None:
            self.abort()


class LayerCache:
    def __init__(self, root: Path | str, *, max_bytes: int | None = None) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        self._locks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._pins: dict[str, int] = {}
        self._pins_lock = threading.Lock()  # pins are taken on the loop, eviction runs in threads too
        self._sweep_tmp()

    def path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / check_digest(digest)[7:]

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def read_bytes(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()

    def writer(self, digest: str, size: int | None = None, what: str = "blob") -> BlobWriter:
        return BlobWriter(self, check_digest(digest), size, what)

    def put_bytes(self, digest: str, data: bytes, what: str = "blob") -> Path:
        with self.writer(digest, len(data), what) as w:
            w.write(data)
            return w.commit()

    def remove(self, digest: str) -> None:
        try:
            self.path(digest).unlink()
        except FileNotFoundError:
            pass

    def digests(self) -> list[str]:
        return sorted("sha256:" + p.name for p in (self.root / "blobs" / "sha256").iterdir())

    def partials(self) -> list[Path]:
        """Temp files of writes in progress (or of a crashed process, swept after an hour)."""
        return sorted((self.root / "tmp").iterdir())

    # -- size limit ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def pin(self, digests: Iterable[str]) -> Iterator[None]:
        """Keep these blobs from eviction while the block runs (they need not exist yet), and
        mark the present ones as just used."""
        held = sorted({check_digest(d) for d in digests})
        with self._pins_lock:
            for d in held:
                self._pins[d] = self._pins.get(d, 0) + 1
        for d in held:
            try:
                os.utime(self.path(d))
            except FileNotFoundError:
                pass
        try:
            yield
        finally:
            with self._pins_lock:
                for d in held:
                    self._pins[d] -= 1
                    if not self._pins[d]:
                        del self._pins[d]
            self.evict()

    def pinned(self) -> set[str]:
        with self._pins_lock:
            return set(self._pins)

    def size(self) -> int:
        total = 0
        for p in (self.root / "blobs" / "sha256").iterdir():
            try:
                total += p.stat().st_size
            except FileNotFoundError:
                pass
        return total

    def evict(self, keep: str | None = None) -> list[str]:
        """Remove least recently used blobs, never pinned ones nor `keep`, until the cache fits
        `max_bytes`; returns the evicted digests."""
        if self.max_bytes is None:
            return []
        blobs: list[tuple[float, int, str]] = []
        total = 0
        for p in (self.root / "blobs" / "sha256").iterdir():
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            total += st.st_size
            if _HEX_RE.match(p.name):
                blobs.append((st.st_mtime, st.st_size, "sha256:" + p.name))
        if total <= self.max_bytes:
            return []
        protected = self.pinned() | ({keep} if keep else set())
        evicted = []
        for _mtime, size, digest in sorted(blobs):
            if total <= self.max_bytes:
                break
            if digest in protected:
                continue
            self.remove(digest)
            total -= size
            evicted.append(digest)
        if evicted:
            log.info("layer cache: evicted %d blobs, %d bytes left (limit %d)", len(evicted), total,
                     self.max_bytes)
        return evicted

    def lock(self, digest: str) -> asyncio.Lock:
        """One lock per digest per event loop: concurrent fetches of a blob wait for the first."""
        loop = asyncio.get_running_loop()
        per_loop = self._locks.setdefault(loop, {})
        return per_loop.setdefault(digest, asyncio.Lock())

    def _sweep_tmp(self) -> None:
        now = time.time()
        for p in (self.root / "tmp").iterdir():
            try:
                if now - p.stat().st_mtime > _STALE_TMP_SECONDS:
                    p.unlink()
            except FileNotFoundError:
                pass
