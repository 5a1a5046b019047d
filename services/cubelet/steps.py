"""How long each step of a sandbox create or a pool fill took, for the `steps_ms` of its log line
(the figures operators size the warm pool and read latency from)."""
from __future__ import annotations

import time


class Steps:
    def __init__(self) -> None:
        self._seconds: dict[str, float] = {}
        self._mark = self._began = time.monotonic()

    def done(self, name: str) -> None:
        """The step `name` ended now; it began where the previous one ended."""
        now = time.monotonic()
        self._seconds[name] = now - self._mark
        self._mark = now

    def add(self, name: str, seconds: float) -> None:
        """A step timed apart (one that overlaps others)."""
        self._seconds[name] = seconds

    def total(self) -> float:
        """Seconds from the first step's start to now."""
        return time.monotonic() - self._began

    def ms(self) -> dict[str, float]:
        return {k: round(v * 1000, 1) for k, v in self._seconds.items()}
