"""Manifests, indexes and descriptors (OCI image-spec and Docker v2 schema 2), platform choice."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field

from .errors import InvalidImage, WrongArchitecture

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v1+prettyjws")

MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
CONFIG_TYPES = (OCI_CONFIG, DOCKER_CONFIG)
# Layer types we unpack. Compression is detected from the bytes (docker-archive and some
# registries label it loosely), these only say "this is a filesystem layer".
LAYER_TYPES = (
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
)
# What we ask a registry for, most wanted first.
ACCEPT = ", ".join((OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST))

_DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
TARGET_OS = "linux"
TARGET_ARCH = "amd64"


def _short(value: object) -> str:
    """A value from a document in an error message: it came from a registry, so only its start."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_digest(digest: object) -> str:
    """Only sha256 digests are accepted: they name files in the cache, so validate strictly."""
    if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
        raise InvalidImage(f"unsupported or malformed digest {_short(digest)} (sha256 only)")
    return digest


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    urls: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, obj: object, what: str) -> Descriptor:
        if not isinstance(obj, dict):
            raise InvalidImage(f"{what}: descriptor is not an object")
        size = obj.get("size")
        if not isinstance(size, int) or size < 0:
            raise InvalidImage(f"{what}: descriptor has no valid size")
        platform = None
        if isinstance(obj.get("platform"), dict):
            p = obj["platform"]
            platform = Platform(str(p.get("os", "")), str(p.get("architecture", "")),
                                str(p.get("variant", "")))
        annotations = obj.get("annotations") or {}
        return cls(media_type=str(obj.get("mediaType", "")), digest=check_digest(obj.get("digest")),
                   size=size, platform=platform,
                   annotations={str(k): str(v) for k, v in annotations.items()}
                   if isinstance(annotations, dict) else {},
                   urls=tuple(str(u) for u in obj.get("urls") or ()))


@dataclass(frozen=True)
class Manifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


@dataclass(frozen=True)
class Index:
    media_type: str
    manifests: tuple[Descriptor, ...]


def parse_manifest(body: bytes, content_type: str | None, what: str) -> Manifest | Index:
    """Parse a manifest or an index. The media type comes from the document's own `mediaType`
    when present, else from the HTTP Content-Type, else from its shape (OCI allows omitting it)."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidImage(f"{what}: manifest is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidImage(f"{what}: manifest is not a JSON object")
    media_type = doc.get("mediaType") or (content_type or "").split(";")[0].strip()
    if media_type in DOCKER_SCHEMA1 or doc.get("schemaVersion") == 1:
        raise InvalidImage(f"{what}: Docker schema 1 manifests are not supported (re-push the image)")
    if media_type not in MANIFEST_TYPES + INDEX_TYPES:
        if "manifests" in doc:
            media_type = OCI_INDEX
        elif "config" in doc and "layers" in doc:
            media_type = OCI_MANIFEST
        else:
            raise InvalidImage(f"{what}: unsupported manifest media type {_short(media_type)}")
    if media_type in INDEX_TYPES:
        entries = doc.get("manifests")
        if not isinstance(entries, list):
            raise InvalidImage(f"{what}: index has no manifests list")
        return Index(media_type, tuple(Descriptor.from_json(m, what) for m in entries))
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise InvalidImage(f"{what}: manifest has no layers list")
    config = Descriptor.from_json(doc.get("config"), what)
    if config.media_type not in CONFIG_TYPES:
        raise InvalidImage(f"{what}: not a container image (config media type {_short(config.media_type)})")
    parsed = tuple(Descriptor.from_json(layer, what) for layer in layers)
    for layer in parsed:
        if layer.media_type not in LAYER_TYPES:
            raise InvalidImage(f"{what}: unsupported layer media type {_short(layer.media_type)}")
    return Manifest(media_type, config, parsed)


def select_platform(index: Index, what: str) -> Descriptor:
    """The linux/amd64 entry of an index (any variant). Attestations (unknown/unknown) and
    other architectures are skipped; none left means WrongArchitecture."""
    seen: list[str] = []
    for entry in index.manifests:
        p = entry.platform
        if p is None:
            continue
        seen.append(str(p))
        if p.os == TARGET_OS and p.architecture == TARGET_ARCH and (
                entry.media_type in MANIFEST_TYPES + INDEX_TYPES or not entry.media_type):
            return entry
    if not seen and len(index.manifests) == 1:
        # An index without platforms (umoci/skopeo single images): the config decides later.
        return index.manifests[0]
    raise WrongArchitecture(what, [s for s in seen if s != "unknown/unknown"])
