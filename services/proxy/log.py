"""Logging for cube-proxy: JSON lines (services/jsonlog.py) on the root logger, tagged with the
proxy's id, so Envoy's own lines relayed by `envoy.py` share the format."""
from __future__ import annotations

from services import jsonlog


def setup(level: str = "INFO", **static: object) -> None:
    jsonlog.setup("cube-proxy", level, **static)
