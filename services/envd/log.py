"""Structured logs: one JSON object per line on stderr, carrying the sandbox ID once known."""

from __future__ import annotations

import json
import logging
import sys
import time

_sandbox_id: str | None = None

# Attributes every LogRecord has; anything else passed through `extra=` is logged as a field.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def set_sandbox_id(sandbox_id: str | None) -> None:
    global _sandbox_id
    _sandbox_id = sandbox_id


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if _sandbox_id:
            out["sandbox_id"] = _sandbox_id
        for k, v in record.__dict__.items():
            if k not in _STANDARD and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's access log would be one line per RPC; keep it out unless debugging.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
