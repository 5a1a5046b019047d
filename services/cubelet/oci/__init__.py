"""Container images for templates: references, registry pulls, local archives, a content-addressed
layer cache and a safe unpacker. The public surface is what this module exports."""
from .auth import Credentials
from .cache import LayerCache
from .config import ImageConfig
from .errors import (
    AuthFailed,
    DigestMismatch,
    ImageNotFound,
    InvalidImage,
    InvalidReference,
    OciError,
    RegistryError,
    UnsafeLayer,
    WrongArchitecture,
)
from .fetch import fetch_image, pull_image
from .progress import Phase, Progress, ProgressCallback
from .reference import ImageRef, Transport
from .unpack import LayerStats, unpack_layer

__all__ = [
    "AuthFailed", "Credentials", "DigestMismatch", "ImageConfig", "ImageNotFound", "ImageRef",
    "InvalidImage", "InvalidReference", "LayerCache", "LayerStats", "OciError", "Phase",
    "Progress", "ProgressCallback", "RegistryError", "Transport", "UnsafeLayer",
    "WrongArchitecture", "fetch_image", "pull_image", "unpack_layer",
]
