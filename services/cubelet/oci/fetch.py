"""fetch_image: from a reference to an unpacked image (a host tree of content, the metadata the
image declares, its users) and its config."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from .auth import Credentials
from .cache import LayerCache
from .config import ImageConfig
from .egress import RegistryAccess
from .errors import ImageTooLarge
from .limits import DEFAULT_LIMITS, Limits
from .manifest import Descriptor
from .progress import Phase, Progress, ProgressCallback, Throttle
from .reference import ImageRef
from .source import ImageSource, ResolvedImage, open_source
from .unpack import ImageTree, LayerStats, unpack_layer

log = logging.getLogger(__name__)

DEFAULT_PARALLEL_DOWNLOADS = 3


@dataclass(frozen=True)
class UnpackedImage:
    """An image unpacked on the host: `tree.root` holds the content (inert: see unpack.py),
    `tree.meta` what the image declares per file, `tree.user_db()` its /etc/passwd and /etc/group;
    `ext4.apply_metadata` puts the metadata into an ext4 image made from the tree."""

    config: ImageConfig
    tree: ImageTree

    @property
    def root(self) -> Path:
        return self.tree.root


async def fetch_image(ref: ImageRef | str, dest_root: Path, cache: LayerCache, *,
                      auth: Credentials | None = None, progress: ProgressCallback | None = None,
                      parallel_downloads: int = DEFAULT_PARALLEL_DOWNLOADS,
                      access: RegistryAccess | None = None,
                      limits: Limits = DEFAULT_LIMITS) -> UnpackedImage:
    """Pull (or read) an image, unpack it into `dest_root` (made 0700) and return it.

    `access` says which registry addresses may be connected to (egress.py; the default refuses
    loopback, private and metadata addresses); `limits` bounds what the image may make the node
    hold (limits.py). The image's layer blobs are pinned in `cache` (never evicted) from the
    moment its manifest is known until its layers are unpacked.

    `dest_root` must not exist (or be an empty directory). The tree is built in a hidden sibling
    directory and renamed into place only when every layer applied and verified, so on any
    failure or cancellation `dest_root` is not created and the sibling is removed. Blobs are
    verified before they enter the cache, so a failure leaves no partial blob either; blobs that
    were fully fetched and verified stay cached for the next attempt.

    `progress` is called on the event loop's thread: PULLING reports (layers, compressed bytes)
    fetched, counting cache hits as done at once; UNPACKING reports layers applied and their
    compressed bytes consumed.

    Raises OciError subclasses: InvalidReference, ImageNotFound, AuthFailed, DigestMismatch,
    WrongArchitecture, RegistryError, RegistryNotAllowed, InvalidImage / UnsafeLayer /
    ImageTooLarge.
    """
    if isinstance(ref, str):
        ref = ImageRef.parse(ref)
    dest_root = Path(dest_root)
    if dest_root.exists() and (not dest_root.is_dir() or any(dest_root.iterdir())):
        raise FileExistsError(f"{dest_root} exists and is not an empty directory")
    report = Throttle(progress)
    source = open_source(ref, auth, access=access, limits=limits)
    with contextlib.ExitStack() as pins:
        try:
            image = await source.resolve(cache)
            pins.enter_context(cache.pin(_blobs(image)))
            _check_sizes(image, limits, str(ref))
            await _pull(source, image, cache, report, max(1, parallel_downloads))
        finally:
            await source.aclose()
        tree = await _unpack(image, dest_root, cache, report, str(ref), limits)
    return UnpackedImage(image.config, tree)


async def pull_image(ref: ImageRef | str, cache: LayerCache, *, auth: Credentials | None = None,
                     progress: ProgressCallback | None = None,
                     parallel_downloads: int = DEFAULT_PARALLEL_DOWNLOADS,
                     access: RegistryAccess | None = None,
                     limits: Limits = DEFAULT_LIMITS) -> ResolvedImage:
    """Only the PULLING half: resolve the image and make sure every layer is in the cache."""
    if isinstance(ref, str):
        ref = ImageRef.parse(ref)
    source = open_source(ref, auth, access=access, limits=limits)
    try:
        image = await source.resolve(cache)
        with cache.pin(_blobs(image)):
            _check_sizes(image, limits, str(ref))
            await _pull(source, image, cache, Throttle(progress), max(1, parallel_downloads))
        return image
    finally:
        await source.aclose()


def _blobs(image: ResolvedImage) -> list[str]:
    return [image.manifest.config.digest, *(d.digest for d in image.manifest.layers)]


def _check_sizes(image: ResolvedImage, limits: Limits, what: str) -> None:
    """Refuse before downloading what cannot fit the limits: a compressed layer is never larger
    than its content (beyond tar/gzip framing), so a bigger blob is over the limit already."""
    total = 0
    for d in _unique(image.manifest.layers):
        if d.size > limits.max_layer_bytes:
            raise ImageTooLarge(f"{what}: layer {d.digest} is {d.size} bytes compressed, more than the "
                                f"limit of one layer ({limits.max_layer_bytes})")
        total += d.size
    if total > limits.max_image_bytes:
        raise ImageTooLarge(f"{what}: layers of {total} bytes compressed, more than the limit of one "
                            f"image ({limits.max_image_bytes})")


async def _pull(source: ImageSource, image: ResolvedImage, cache: LayerCache, report: Throttle,
                parallel: int) -> None:
    layers = _unique(image.manifest.layers)
    total_bytes = sum(d.size for d in layers)
    state = {"layers": 0, "bytes": 0}
    cached = 0

    def emit(force: bool = False, message: str = "") -> None:
        report(Progress(Phase.PULLING, state["layers"], len(layers), state["bytes"], total_bytes,
                        message), force=force)

    def on_bytes(n: int) -> None:
        state["bytes"] += n
        emit()

    for d in layers:
        if cache.has(d.digest):
            cached += 1
            state["layers"] += 1
            state["bytes"] += d.size
    emit(force=True, message=f"{source.what}: {len(layers)} layers, {cached} cached")
    semaphore = asyncio.Semaphore(parallel)

    async def one(d: Descriptor) -> None:
        async with semaphore, cache.lock(d.digest):
            if cache.has(d.digest):
                # Another pull in this process brought it while we waited for the lock.
                state["layers"] += 1
                state["bytes"] += d.size
                emit(force=True, message=f"{d.digest} fetched by another pull")
                return
            await source.fetch_blob(d, cache, on_bytes)
            state["layers"] += 1
            emit(force=True, message=f"fetched {d.digest}")

    missing = [d for d in layers if not cache.has(d.digest)]
    if missing:
        # A TaskGroup cancels the other downloads as soon as one fails; callers get that
        # first failure itself, not an ExceptionGroup.
        try:
            async with asyncio.TaskGroup() as tg:
                for d in missing:
                    tg.create_task(one(d))
        except BaseExceptionGroup as group:
            raise _first_leaf(group) from None
    state["layers"] = len(layers)
    state["bytes"] = total_bytes
    emit(force=True, message="pulled")


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_leaf(exc)
        return exc
    return group


def _unique(layers: tuple[Descriptor, ...]) -> list[Descriptor]:
    seen, out = set(), []
    for d in layers:
        if d.digest not in seen:
            seen.add(d.digest)
            out.append(d)
    return out


async def _unpack(image: ResolvedImage, dest_root: Path, cache: LayerCache, report: Throttle,
                  what: str, limits: Limits) -> ImageTree:
    layers = image.manifest.layers
    diff_ids = image.config.diff_ids or (None,) * len(layers)
    total = sum(d.size for d in layers)
    loop = asyncio.get_running_loop()
    cancel = threading.Event()
    dest_root.parent.mkdir(parents=True, exist_ok=True)
    staging = dest_root.parent / f".{dest_root.name}.unpacking-{uuid.uuid4().hex[:12]}"

    def emit(done_layers: int, done_bytes: int, force: bool = False, message: str = "") -> None:
        report(Progress(Phase.UNPACKING, done_layers, len(layers), done_bytes, total, message),
               force=force)

    def work() -> tuple[ImageTree, list[LayerStats]]:
        os.mkdir(staging, 0o700)
        tree = ImageTree(staging, limits)
        stats, base = [], 0
        for i, (d, diff_id) in enumerate(zip(layers, diff_ids, strict=True)):  # equal: source._finish
            def on_progress(pos: int, i=i, base=base) -> None:
                loop.call_soon_threadsafe(emit, i, base + pos)
            stats.append(unpack_layer(cache.path(d.digest), tree, diff_id=diff_id,
                                      what=f"{what}: layer {i + 1}/{len(layers)} {d.digest}",
                                      on_progress=on_progress, cancel=cancel))
            base += d.size
            loop.call_soon_threadsafe(emit, i + 1, base, True, f"applied layer {i + 1}")
        return tree, stats

    emit(0, 0, force=True, message=f"unpacking {len(layers)} layers")
    future = loop.run_in_executor(None, work)
    try:
        try:
            tree, stats = await asyncio.shield(future)
        except asyncio.CancelledError:
            # The thread cannot be killed: ask it to stop and wait, so nothing writes into the
            # staging directory after we remove it.
            cancel.set()
            await asyncio.wait([future])
            raise
        # Two metadata calls on a local directory, in order with the rename: not worth a thread.
        if dest_root.exists():  # noqa: ASYNC240
            dest_root.rmdir()  # noqa: ASYNC240 - checked empty by the caller
        os.rename(staging, dest_root)
        tree.moved(dest_root)
    except BaseException:
        await asyncio.to_thread(shutil.rmtree, staging, ignore_errors=True)
        raise
    files = sum(s.files for s in stats)
    raw = sum(s.uncompressed_bytes for s in stats)
    emit(len(layers), total, force=True,
         message=f"unpacked {len(layers)} layers, {files} files, {raw} bytes uncompressed")
    return tree
