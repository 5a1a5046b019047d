"""Time helpers: protobuf Timestamps from and to wall-clock seconds."""

from __future__ import annotations

import time

from google.protobuf.timestamp_pb2 import Timestamp


def ts(seconds: float | None = None) -> Timestamp:
    t = Timestamp()
    t.FromNanoseconds(int((time.time() if seconds is None else seconds) * 1e9))
    return t


def secs(t: Timestamp) -> float:
    return t.ToNanoseconds() / 1e9
