"""How much of an untrusted image this library accepts before it stops with ImageTooLarge.

An image is chosen by a tenant, so everything it makes the node hold is bounded: what a manifest or
config may weigh in memory, what its layers may expand to on disk (a gzip of zeros grows 1000x),
how many entries they may create, and how long a path may be. The defaults are generous (a big
Debian root with compilers is ~0.5 GB and 13k entries); the cubelet passes its settings
(`image_max_mb`, `layer_max_mb`, `image_max_entries`), the rest are constants of this module.
"""
from __future__ import annotations

from dataclasses import dataclass

GiB = 1 << 30
MiB = 1 << 20


@dataclass(frozen=True)
class Limits:
    # Uncompressed tar bytes: each layer, and all layers of an image together. Also the most a
    # single layer blob may weigh compressed (it cannot be smaller than its content is large
    # without being a bomb, and a bigger download is refused before it starts).
    max_image_bytes: int = 16 * GiB
    max_layer_bytes: int = 8 * GiB
    # Tar entries of all layers together (whiteouts and headers of every kind count).
    max_entries: int = 1_000_000
    # A name or link target in a layer (PATH_MAX); one component may not exceed NAME_MAX.
    max_path_bytes: int = 4096
    max_name_bytes: int = 255
    # Documents held in memory: a manifest or index, and the image config.
    max_manifest_bytes: int = 4 * MiB
    max_config_bytes: int = 4 * MiB
    # One PAX / GNU long-name header (tarfile holds it in memory): names, link targets, xattrs.
    max_header_bytes: int = 1 * MiB
    # /etc/passwd and /etc/group, kept in memory while unpacking to resolve the image's user.
    max_user_db_bytes: int = 1 * MiB

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"limit {name} must be a positive integer, got {value!r}")


DEFAULT_LIMITS = Limits()
