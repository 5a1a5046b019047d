"""Structured JSON logs: one object per line, with the sandbox ID whenever there is one.

``log.info("created", extra={"sandbox_id": sid, "node_id": n})`` -> every key of ``extra``
becomes a field of the line.
"""

from __future__ import annotations

import json
import logging
import sys
import time

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in vars(record).items():
            if k not in _STANDARD and not k.startswith("_"):
                out[k] = v if isinstance(v, (str, int, float, bool, type(None), list, dict)) else str(v)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(f"cube.master.{name}")


def setup(level: str = "INFO", service: str = "cube-master", root: str = "cube.master") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    logger = logging.getLogger(root)
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False
