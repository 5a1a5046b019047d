"""Structured JSON logs for cube-api (same line format as the master's)."""

from __future__ import annotations

import logging

from services.master import log as _mlog


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(f"cube.api.{name}")


def setup(level: str = "INFO") -> None:
    _mlog.setup(level, service="cube-api", root="cube.api")
