"""Typed errors of the image layer. Each carries a reason a person can act on."""
from __future__ import annotations


class OciError(Exception):
    """Base of every error this package raises on purpose."""


class InvalidReference(OciError, ValueError):
    """The image reference string cannot be parsed."""


class ImageNotFound(OciError):
    """The repository, tag, digest or local file/tag does not exist."""


class AuthFailed(OciError):
    """The registry (or its token service) refused our credentials or lack of them."""


class DigestMismatch(OciError):
    """A blob or layer's content does not hash to the digest that names it."""

    def __init__(self, what: str, expected: str, actual: str) -> None:
        super().__init__(f"{what}: digest mismatch: expected {expected}, got {actual}")
        self.expected = expected
        self.actual = actual


class WrongArchitecture(OciError):
    """The image has no linux/amd64 variant."""

    def __init__(self, reference: str, available: list[str]) -> None:
        have = ", ".join(available) if available else "none declared"
        super().__init__(f"{reference}: no linux/amd64 image (available: {have})")
        self.available = available


class RegistryError(OciError):
    """The registry misbehaved or could not be reached (transport errors, 5xx, bad answers)."""


class RegistryNotAllowed(OciError):
    """The registry (or a redirect, or its token service) resolves to an address this node does
    not pull from: loopback, private, link-local, metadata and other non-global addresses, unless
    the build is an operator's or the host is on the allowlist (egress.py). Never retried."""


class InvalidImage(OciError):
    """The image is malformed: bad manifest/config JSON, unsupported media type, bad layer tar."""


class UnsafeLayer(InvalidImage):
    """A layer tries to write outside the root (path traversal, escaping hard link)."""


class ImageTooLarge(InvalidImage):
    """The image exceeds a limit (limits.py): uncompressed bytes per layer or image (a
    decompression bomb), entries, path length, manifest or config size."""
