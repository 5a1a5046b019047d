"""Container images for templates: references, registry pulls (guarded: egress.py), local archives,
a content-addressed layer cache with a size limit, an unpacker that keeps an untrusted image's
metadata out of the host (unpack.py) and writes it into the template's ext4 (ext4.py), and the
limits every image is held to (limits.py). The public surface is what this module exports."""
from .auth import Credentials
from .cache import LayerCache
from .config import ImageConfig
from .egress import RegistryAccess, parse_allowlist, registry_listed
from .errors import (
    AuthFailed,
    DigestMismatch,
    ImageNotFound,
    ImageTooLarge,
    InvalidImage,
    InvalidReference,
    OciError,
    RegistryError,
    RegistryNotAllowed,
    UnsafeLayer,
    WrongArchitecture,
)
from .ext4 import Ext4Error, apply_metadata
from .fetch import UnpackedImage, fetch_image, pull_image
from .limits import DEFAULT_LIMITS, Limits
from .progress import Phase, Progress, ProgressCallback
from .reference import ImageRef, Transport
from .unpack import ImageTree, LayerStats, Meta, unpack_layer

__all__ = [
    "DEFAULT_LIMITS", "AuthFailed", "Credentials", "DigestMismatch", "Ext4Error", "ImageConfig",
    "ImageNotFound", "ImageRef", "ImageTooLarge", "ImageTree", "InvalidImage", "InvalidReference",
    "LayerCache", "LayerStats", "Limits", "Meta", "OciError", "Phase", "Progress",
    "ProgressCallback", "RegistryAccess", "RegistryError", "RegistryNotAllowed", "Transport",
    "UnpackedImage", "UnsafeLayer", "WrongArchitecture", "apply_metadata", "fetch_image",
    "parse_allowlist", "pull_image", "registry_listed", "unpack_layer",
]
