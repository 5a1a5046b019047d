"""Logging for cube-proxy: JSON lines (cube_common/jsonlog.py) on the root logger, tagged with the
proxy's id, so Envoy's own lines relayed by `envoy.py` share the format."""
from __future__ import annotations

from cube_common import jsonlog


def setup(level: str = "INFO", **static: object) -> None:
    jsonlog.setup("cube-proxy", level, logger="", **static)
