"""Logging for cube-vs: JSON lines (cube_common/jsonlog.py) under the `cube.vs` logger.

``log.info("allocated", extra={"sandbox_id": sid, "tap": name})`` -> every key of ``extra``
becomes a field of the line.
"""
from __future__ import annotations

import logging

from cube_common import jsonlog

JsonFormatter = jsonlog.JsonFormatter


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(f"cube.vs.{name}")


def setup(level: str = "INFO") -> None:
    jsonlog.setup("cube-vs", level, logger="cube.vs")
