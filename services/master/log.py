"""Logging for cube-master: JSON lines (cube_common/jsonlog.py) under the `cube.master` logger."""
from __future__ import annotations

import logging

from cube_common import jsonlog


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(f"cube.master.{name}")


def setup(level: str = "INFO", service: str = "cube-master", root: str = "cube.master") -> None:
    jsonlog.setup(service, level, logger=root)
