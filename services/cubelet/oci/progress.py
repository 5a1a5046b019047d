"""Progress reports of an image fetch, shaped like the cubelet's TemplateBuildEvent."""
from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass


class Phase(str, enum.Enum):
    # The names match cube.v1.TemplateBuildPhase so the cubelet can map them by name.
    PULLING = "PULLING"
    UNPACKING = "UNPACKING"


@dataclass(frozen=True)
class Progress:
    """PULLING counts compressed bytes fetched (cache hits count as done at once);
    UNPACKING counts compressed bytes of layers consumed by the unpacker."""

    phase: Phase
    layers_done: int
    layers_total: int
    bytes_done: int
    bytes_total: int
    message: str = ""


ProgressCallback = Callable[[Progress], None]


class Throttle:
    """Lets a report through at most every `interval` seconds, plus forced ones (layer edges)."""

    def __init__(self, callback: ProgressCallback | None, interval: float = 0.1) -> None:
        self._callback = callback
        self._interval = interval
        self._last = 0.0

    def __call__(self, progress: Progress, *, force: bool = False) -> None:
        if self._callback is None:
            return
        now = time.monotonic()
        if force or now - self._last >= self._interval:
            self._last = now
            self._callback(progress)
