"""Image sources: a registry, an OCI layout (directory or tar) or a docker-archive, all brought
to the same model (a resolved manifest + config) with their blobs fetched into the cache."""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import tarfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Protocol

from .auth import Credentials
from .cache import LayerCache
from .config import ImageConfig
from .egress import RegistryAccess
from .errors import DigestMismatch, ImageNotFound, ImageTooLarge, InvalidImage, InvalidReference
from .limits import DEFAULT_LIMITS, Limits
from .manifest import (
    DOCKER_CONFIG,
    DOCKER_MANIFEST,
    Descriptor,
    Index,
    Manifest,
    check_digest,
    parse_manifest,
    select_platform,
    sha256_digest,
)
from .reference import ImageRef, Transport
from .registry import RegistryClient

OnBytes = Callable[[int], None]
_REF_NAME = "org.opencontainers.image.ref.name"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ResolvedImage:
    manifest_digest: str
    manifest: Manifest
    config: ImageConfig


class ImageSource(Protocol):
    what: str

    async def resolve(self, cache: LayerCache) -> ResolvedImage: ...

    async def fetch_blob(self, desc: Descriptor, cache: LayerCache, on_bytes: OnBytes) -> None: ...

    async def aclose(self) -> None: ...


def open_source(ref: ImageRef, credentials: Credentials | None = None, *,
                access: RegistryAccess | None = None, limits: Limits = DEFAULT_LIMITS) -> ImageSource:
    """The source of `ref`. Local sources (layouts, archives) read the node's files: only an
    operator's build may name them (the master and the cubelet refuse them for teams)."""
    if ref.transport is Transport.REGISTRY:
        return RegistrySource(ref, credentials, access=access, limits=limits)
    if ref.transport is Transport.DOCKER_ARCHIVE:
        return DockerArchiveSource(ref, limits)
    return LayoutSource(ref, limits)


def _finish(what: str, manifest_digest: str, manifest: Manifest, config_body: bytes) -> ResolvedImage:
    config = ImageConfig.from_json(config_body, digest=manifest.config.digest,
                                   manifest_digest=manifest_digest, what=what)
    config.check_platform(what)
    if config.diff_ids and len(config.diff_ids) != len(manifest.layers):
        raise InvalidImage(f"{what}: manifest has {len(manifest.layers)} layers, "
                           f"config lists {len(config.diff_ids)} diff_ids")
    return ResolvedImage(manifest_digest, manifest, config)


# -- registry ---------------------------------------------------------------------------------

class RegistrySource:
    def __init__(self, ref: ImageRef, credentials: Credentials | None, *,
                 access: RegistryAccess | None = None, limits: Limits = DEFAULT_LIMITS) -> None:
        self.ref = ref
        self.what = str(ref)
        self._client = RegistryClient(ref, credentials, access=access, limits=limits)

    async def resolve(self, cache: LayerCache) -> ResolvedImage:
        body, content_type, digest = await self._client.get_manifest(self.ref.reference)
        doc = parse_manifest(body, content_type, self.what)
        for _ in range(2):  # an index may (rarely) point at another index
            if isinstance(doc, Manifest):
                break
            entry = select_platform(doc, self.what)
            body, content_type, digest = await self._client.get_manifest(entry.digest)
            doc = parse_manifest(body, content_type, self.what)
        if not isinstance(doc, Manifest):
            raise InvalidImage(f"{self.what}: indexes nested too deep")
        async with cache.lock(doc.config.digest):
            if cache.has(doc.config.digest):
                config_body = cache.read_bytes(doc.config.digest)
            else:
                config_body = await self._client.get_blob_bytes(doc.config, "config")
                cache.put_bytes(doc.config.digest, config_body, f"{self.what}: config")
        return _finish(self.what, digest, doc, config_body)

    async def fetch_blob(self, desc: Descriptor, cache: LayerCache, on_bytes: OnBytes) -> None:
        await self._client.fetch_blob(desc, cache, on_bytes)

    async def aclose(self) -> None:
        await self._client.aclose()


# -- OCI layout (directory or archive) --------------------------------------------------------

class _Reader(Protocol):
    """What `_Files.open` returns: a file of the directory or a tar member's reader."""

    def read(self, n: int = -1, /) -> bytes: ...
    def close(self) -> None: ...
    def __enter__(self) -> _Reader: ...
    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None, /) -> None: ...


class _SerialReader:
    """A tar member's reader whose reads (each a seek plus a read of the shared file) hold a lock."""

    def __init__(self, f: IO[bytes], lock: threading.Lock) -> None:
        self._f = f
        self._lock = lock

    def read(self, n: int = -1) -> bytes:
        with self._lock:
            return self._f.read(n)

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> _SerialReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Files:
    """Read access to the files of a layout, from a directory or from a tar."""

    def __init__(self, path: Path, what: str) -> None:
        self.what = what
        self._dir: Path | None = None
        self._tar: tarfile.TarFile | None = None
        self._members: dict[str, tarfile.TarInfo] = {}
        # Layers are copied on worker threads at once, and every member reader of one TarFile
        # seeks and reads the same underlying file: one read at a time, or they read each
        # other's bytes (seen as random digest mismatches).
        self._lock = threading.Lock()
        if path.is_dir():
            self._dir = path
        elif path.is_file():
            try:
                self._tar = tarfile.open(path, "r:*")
                for m in self._tar.getmembers():
                    self._members[os.path.normpath(m.name).lstrip("/")] = m
            except (tarfile.TarError, EOFError) as e:
                raise InvalidImage(f"{what}: not a readable tar archive: {e}") from None
        else:
            raise ImageNotFound(f"{what}: {path} does not exist")

    def open(self, name: str) -> _Reader | None:
        name = os.path.normpath(name).lstrip("/")
        if name.startswith("../"):
            raise InvalidImage(f"{self.what}: path {name!r} leaves the archive")
        if self._dir is not None:
            try:
                return open(self._dir / name, "rb")
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                return None
        m = self._members.get(name)
        if m is None or self._tar is None:
            return None
        f = self._tar.extractfile(m)
        if f is None:  # not a regular file
            return None
        return _SerialReader(f, self._lock)

    def size(self, name: str) -> int | None:
        name = os.path.normpath(name).lstrip("/")
        if self._dir is not None:
            try:
                return (self._dir / name).stat().st_size
            except FileNotFoundError:
                return None
        m = self._members.get(name)
        return m.size if m is not None else None

    def read(self, name: str, limit: int) -> bytes | None:
        f = self.open(name)
        if f is None:
            return None
        with f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise ImageTooLarge(f"{self.what}: {name} is larger than {limit} bytes")
        return data

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()


def _resolved(files: _Files | None) -> _Files:
    assert files is not None, "resolve() first"
    return files


def _copy_into_cache(files: _Files, name: str, digest: str, size: int | None, cache: LayerCache,
                     on_bytes: OnBytes, loop: asyncio.AbstractEventLoop, what: str) -> None:
    """Runs in a worker thread: stream a file of the source into the cache, verified."""
    src = files.open(name)
    if src is None:
        raise InvalidImage(f"{files.what}: {what} {name} is missing from the image")
    with src, cache.writer(digest, size, f"{files.what}: {what}") as w:
        while True:
            chunk = src.read(_CHUNK)
            if not chunk:
                break
            w.write(chunk)
            loop.call_soon_threadsafe(on_bytes, len(chunk))
        w.commit()


class LayoutSource:
    """`oci:DIR[:tag]` and `oci-archive:PATH[:tag]`."""

    def __init__(self, ref: ImageRef, limits: Limits = DEFAULT_LIMITS) -> None:
        self.ref = ref
        self.what = str(ref)
        self._limits = limits
        self._files: _Files | None = None

    def _blob_name(self, digest: str) -> str:
        return f"blobs/sha256/{check_digest(digest)[7:]}"

    def _read_blob(self, desc: Descriptor, limit: int, what: str) -> bytes:
        data = _resolved(self._files).read(self._blob_name(desc.digest), limit)
        if data is None:
            raise InvalidImage(f"{self.what}: {what} {desc.digest} is missing from the layout")
        actual = sha256_digest(data)
        if actual != desc.digest:
            raise DigestMismatch(f"{self.what}: {what}", desc.digest, actual)
        return data

    async def resolve(self, cache: LayerCache) -> ResolvedImage:
        return await asyncio.to_thread(self._resolve_sync, cache)

    def _resolve_sync(self, cache: LayerCache) -> ResolvedImage:
        assert self.ref.path is not None  # a local transport
        self._files = _Files(self.ref.path, self.what)
        if self._files.read("oci-layout", 4096) is None:
            raise InvalidImage(f"{self.what}: not an OCI image layout (no oci-layout file)")
        index_body = self._files.read("index.json", self._limits.max_manifest_bytes)
        if index_body is None:
            raise InvalidImage(f"{self.what}: OCI layout without index.json")
        top = parse_manifest(index_body, "application/vnd.oci.image.index.v1+json", self.what)
        if not isinstance(top, Index):
            raise InvalidImage(f"{self.what}: index.json is not an index")
        entry = self._pick(top)
        digest = entry.digest
        doc = parse_manifest(self._read_blob(entry, self._limits.max_manifest_bytes, "manifest"),
                             entry.media_type, self.what)
        for _ in range(2):  # skopeo --all stores an index; pick our platform from it
            if isinstance(doc, Manifest):
                break
            chosen = select_platform(doc, self.what)
            digest = chosen.digest
            doc = parse_manifest(self._read_blob(chosen, self._limits.max_manifest_bytes, "manifest"),
                                 chosen.media_type, self.what)
        if not isinstance(doc, Manifest):
            raise InvalidImage(f"{self.what}: indexes nested too deep")
        config_body = self._read_blob(doc.config, self._limits.max_config_bytes, "config")
        if not cache.has(doc.config.digest):
            cache.put_bytes(doc.config.digest, config_body, f"{self.what}: config")
        return _finish(self.what, digest, doc, config_body)

    def _pick(self, index: Index) -> Descriptor:
        tag = self.ref.selector
        tags = [m.annotations.get(_REF_NAME, "") for m in index.manifests]
        if tag is None:
            if len(index.manifests) == 1:
                return index.manifests[0]
            if "latest" in tags:
                return index.manifests[tags.index("latest")]
            raise InvalidReference(f"{self.what}: layout holds several images, name one of: "
                                   f"{', '.join(t for t in tags if t) or '(untagged)'}")
        for entry, name in zip(index.manifests, tags, strict=True):
            if name == tag:
                return entry
        raise ImageNotFound(f"{self.what}: no image tagged {tag!r} (tags: "
                            f"{', '.join(t for t in tags if t) or 'none'})")

    async def fetch_blob(self, desc: Descriptor, cache: LayerCache, on_bytes: OnBytes) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.to_thread(_copy_into_cache, _resolved(self._files), self._blob_name(desc.digest),
                                desc.digest, desc.size, cache, on_bytes, loop, "layer")

    async def aclose(self) -> None:
        if self._files is not None:
            self._files.close()


# -- docker-archive ---------------------------------------------------------------------------

_BLOB_PATH_RE = re.compile(r"(?:^|/)(?:blobs/sha256/)?([a-f0-9]{64})(?:\.tar)?$")


class DockerArchiveSource:
    """`docker-archive:PATH[:name:tag|:@N]`: the `docker save` format (manifest.json, a config
    JSON and one tar per layer). Layers there are normally uncompressed, so their digest is the
    config's diff_id; newer writers name them `blobs/sha256/<hex>`, which we then trust as the
    digest to check. Either way the bytes are verified while copied into the cache."""

    def __init__(self, ref: ImageRef, limits: Limits = DEFAULT_LIMITS) -> None:
        self.ref = ref
        self.what = str(ref)
        self._limits = limits
        self._files: _Files | None = None
        self._paths: dict[str, str] = {}  # layer digest -> member name

    async def resolve(self, cache: LayerCache) -> ResolvedImage:
        return await asyncio.to_thread(self._resolve_sync, cache)

    def _resolve_sync(self, cache: LayerCache) -> ResolvedImage:
        assert self.ref.path is not None  # a local transport
        self._files = _Files(self.ref.path, self.what)
        body = self._files.read("manifest.json", self._limits.max_manifest_bytes)
        if body is None:
            raise InvalidImage(f"{self.what}: not a docker-archive (no manifest.json)")
        try:
            entries = json.loads(body)
        except ValueError as e:
            raise InvalidImage(f"{self.what}: manifest.json is not JSON: {e}") from None
        if not isinstance(entries, list) or not entries:
            raise InvalidImage(f"{self.what}: manifest.json lists no images")
        entry = self._pick(entries)
        config_name, layer_names = entry.get("Config"), entry.get("Layers")
        if not isinstance(config_name, str) or not isinstance(layer_names, list):
            raise InvalidImage(f"{self.what}: manifest.json entry lacks Config or Layers")
        config_body = self._files.read(config_name, self._limits.max_config_bytes)
        if config_body is None:
            raise InvalidImage(f"{self.what}: config {config_name} missing from the archive")
        config_digest = sha256_digest(config_body)
        # Parsed once here for the diff_ids; _finish parses it again with the manifest digest.
        diff_ids = ImageConfig.from_json(config_body, what=self.what).diff_ids
        if len(diff_ids) != len(layer_names):
            raise InvalidImage(f"{self.what}: {len(layer_names)} layers but "
                               f"{len(diff_ids)} diff_ids in the config")
        layers = []
        for name, diff_id in zip(layer_names, diff_ids, strict=True):
            if not isinstance(name, str):
                raise InvalidImage(f"{self.what}: bad layer entry {name!r}")
            size = self._files.size(name)
            if size is None:
                raise InvalidImage(f"{self.what}: layer {name} missing from the archive")
            m = _BLOB_PATH_RE.search(name)
            if m and "blobs/sha256/" in name:
                digest = f"sha256:{m.group(1)}"
            elif self._compressed(name):
                # A writer may store a layer compressed under a name that is not its digest: the
                # stored bytes then have their own digest (the diff_id is checked on unpacking).
                digest = self._digest_of(name)
            else:
                digest = diff_id
            self._paths[digest] = name
            layers.append(Descriptor("application/vnd.docker.image.rootfs.diff.tar", digest, size))
        manifest = Manifest(DOCKER_MANIFEST, Descriptor(DOCKER_CONFIG, config_digest, len(config_body)),
                            tuple(layers))
        if not cache.has(config_digest):
            cache.put_bytes(config_digest, config_body, f"{self.what}: config")
        # docker-archive has no manifest blob; its digest stands for the image, as docker does.
        return _finish(self.what, config_digest, manifest, config_body)

    def _compressed(self, name: str) -> bool:
        f = _resolved(self._files).open(name)
        if f is None:
            return False
        with f:
            head = f.read(4)
        return head[:2] == b"\x1f\x8b" or head == b"\x28\xb5\x2f\xfd"  # gzip, zstd

    def _digest_of(self, name: str) -> str:
        h = hashlib.sha256()
        f = _resolved(self._files).open(name)
        assert f is not None
        with f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        return f"sha256:{h.hexdigest()}"

    def _pick(self, entries: list) -> dict:
        sel = self.ref.selector
        if sel is None:
            if len(entries) == 1:
                return entries[0]
            raise InvalidReference(f"{self.what}: archive holds {len(entries)} images; "
                                   "choose one with :name:tag or :@index")
        if sel.startswith("@"):
            i = int(sel[1:])
            if i >= len(entries):
                raise ImageNotFound(f"{self.what}: no image @{i} (archive holds {len(entries)})")
            return entries[i]
        want = _normal_tag(sel)
        for e in entries:
            for t in e.get("RepoTags") or ():
                if isinstance(t, str) and _normal_tag(t) == want:
                    return e
        raise ImageNotFound(f"{self.what}: no image tagged {sel!r}")

    async def fetch_blob(self, desc: Descriptor, cache: LayerCache, on_bytes: OnBytes) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.to_thread(_copy_into_cache, _resolved(self._files), self._paths[desc.digest],
                                desc.digest, desc.size, cache, on_bytes, loop, "layer")

    async def aclose(self) -> None:
        if self._files is not None:
            self._files.close()


def _normal_tag(text: str) -> str:
    try:
        return str(ImageRef.parse(text))
    except InvalidReference:
        return text
