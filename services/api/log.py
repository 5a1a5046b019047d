"""Logging for cube-api: JSON lines (cube_common/jsonlog.py) under the `cube.api` logger."""
from __future__ import annotations

import logging

from cube_common import jsonlog


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(f"cube.api.{name}")


def setup(level: str = "INFO") -> None:
    jsonlog.setup("cube-api", level, logger="cube.api")
