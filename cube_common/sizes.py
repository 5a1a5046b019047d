"""Human sizes (``512M``, ``1G``) as whole MiB, for the CLI and the API alike."""

from __future__ import annotations

import math
import re

# ASCII: with Unicode case folding the Kelvin sign (U+212A) would match "K".
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE | re.ASCII)
_SIZE_UNITS = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}


def parse_size_mb(value: object) -> int:
    """A size in MiB from ``512M``, ``1G``, ``1.5G``, ``2048K``, ``1GiB`` (binary units; a bare
    number is MiB), rounded up to whole MiB. Anything else (other types included) raises ValueError."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"invalid size {value!r}")
    if isinstance(value, (int, float)):
        n = float(value)
    else:
        m = _SIZE_RE.match(value or "")
        if not m:
            raise ValueError(f"invalid size {value!r} (want e.g. 512M or 1G)")
        n = float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "M").upper()]
    if not math.isfinite(n):
        raise ValueError(f"invalid size {value!r}")
    mb = int(-(-n // 1))
    if mb < 1 or mb > 1 << 30:
        raise ValueError(f"invalid size {value!r}")
    return mb
