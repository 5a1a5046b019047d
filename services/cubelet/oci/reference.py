"""Image references: where an image comes from, parsed into a typed value.

Accepted forms (the transports' names follow containers-transports(5)):

- ``[docker://]host[:port]/repo/path[:tag][@sha256:<hex>]`` — an OCI distribution registry.
  A first component without a ``.`` or ``:`` (and not ``localhost``) is not a host: such bare names
  (``busybox``, ``library/python:3.12``) mean Docker Hub, exactly as ``docker pull`` reads them
  (``docker.io/library/busybox``, fetched from ``registry-1.docker.io``). No tag and no digest means
  ``latest``. Plain http is used only when the caller passes ``insecure=True``.
- ``oci:DIR[:tag]`` — an OCI image layout directory (tag = ``org.opencontainers.image.ref.name``).
- ``oci-archive:PATH[:tag]`` — a tar of an OCI image layout.
- ``docker-archive:PATH[:name:tag|:@N]`` — ``docker save`` output; optional image choice.

Local paths end at the first ``:`` after the transport (as in containers/image), so they cannot
contain a colon.
"""
from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidReference

DOCKER_HUB = "docker.io"
DOCKER_HUB_ENDPOINT = "registry-1.docker.io"

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(
    rf"^(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?$"
)
_PATH_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")


class Transport(str, enum.Enum):
    REGISTRY = "docker"
    OCI_LAYOUT = "oci"
    OCI_ARCHIVE = "oci-archive"
    DOCKER_ARCHIVE = "docker-archive"


@dataclass(frozen=True)
class ImageRef:
    """A parsed reference. Registry fields are empty for local transports, and `path` is None
    for registries. `selector` is a local source's tag/name (or ``@N`` for docker-archive)."""

    transport: Transport
    registry: str = ""
    repository: str = ""
    tag: str | None = None
    digest: str | None = None
    path: Path | None = None
    selector: str | None = None
    insecure: bool = False

    @classmethod
    def parse(cls, text: str, *, insecure: bool = False) -> ImageRef:
        text = text.strip()
        if not text:
            raise InvalidReference("empty image reference")
        for transport in (Transport.OCI_ARCHIVE, Transport.DOCKER_ARCHIVE, Transport.OCI_LAYOUT):
            prefix = transport.value + ":"
            if text.startswith(prefix):
                return _parse_local(transport, text[len(prefix):], text)
        if text.startswith("docker://"):
            text = text[len("docker://"):]
        return _parse_registry(text, insecure)

    @property
    def is_local(self) -> bool:
        return self.transport is not Transport.REGISTRY

    @property
    def reference(self) -> str:
        """What to put after ``/manifests/``: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    @property
    def endpoint(self) -> str:
        """Base URL of the registry's API."""
        host = DOCKER_HUB_ENDPOINT if self.registry == DOCKER_HUB else self.registry
        return f"{'http' if self.insecure else 'https'}://{host}"

    def __str__(self) -> str:
        if self.transport is Transport.REGISTRY:
            out = f"{self.registry}/{self.repository}"
            if self.tag:
                out += f":{self.tag}"
            if self.digest:
                out += f"@{self.digest}"
            return out
        out = f"{self.transport.value}:{self.path}"
        return f"{out}:{self.selector}" if self.selector else out


def _parse_local(transport: Transport, rest: str, original: str) -> ImageRef:
    path, sep, selector = rest.partition(":")
    if not path:
        raise InvalidReference(f"{original!r}: missing path")
    if sep and not selector:
        raise InvalidReference(f"{original!r}: empty tag after ':'")
    if selector and transport is not Transport.DOCKER_ARCHIVE and not _TAG_RE.match(selector):
        # OCI layout ref names are looser than docker tags, but a colon-free printable name is
        # what skopeo/umoci write; refuse obvious garbage early.
        if not re.match(r"^[A-Za-z0-9._/@+-]+$", selector):
            raise InvalidReference(f"{original!r}: invalid tag {selector!r}")
    if transport is Transport.DOCKER_ARCHIVE and selector and selector.startswith("@"):
        if not selector[1:].isdigit():
            raise InvalidReference(f"{original!r}: expected @<index>, got {selector!r}")
    return ImageRef(transport=transport, path=Path(path), selector=selector or None)


def _parse_registry(text: str, insecure: bool) -> ImageRef:
    name, digest = text, None
    if "@" in text:
        name, _, digest = text.partition("@")
        if not _DIGEST_RE.match(digest):
            raise InvalidReference(f"{text!r}: digest must be sha256:<64 hex>, got {digest!r}")
    tag = None
    last_slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > last_slash:  # a ':' after the last '/' is a tag, before it a port
        name, tag = name[:colon], name[colon + 1:]
        if not _TAG_RE.match(tag):
            raise InvalidReference(f"{text!r}: invalid tag {tag!r}")
    first, slash, remainder = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost" or first.startswith("[")
                  or first != first.lower()):
        registry, repository = first, remainder
        if not _DOMAIN_RE.match(registry):
            raise InvalidReference(f"{text!r}: invalid registry host {registry!r}")
    else:
        registry, repository = DOCKER_HUB, name
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    if not repository or len(repository) > 255:
        raise InvalidReference(f"{text!r}: invalid repository name")
    for component in repository.split("/"):
        if not _PATH_COMPONENT_RE.match(component):
            raise InvalidReference(
                f"{text!r}: invalid repository component {component!r} "
                "(lowercase letters, digits and . _ - separators)")
    if tag is None and digest is None:
        tag = "latest"
    return ImageRef(transport=Transport.REGISTRY, registry=registry, repository=repository,
                    tag=tag, digest=digest, insecure=insecure)
