"""Structured logs for every Cube service, on the host and in the guest: one JSON object per
line on stderr.

`log.info("sandbox running", extra={"sandbox_id": sid})`: every key of `extra` becomes a field, so
the sandbox ID is on every line that concerns a sandbox. A process that serves one sandbox only
(the guest agent) sets it once with `tag(sandbox_id=...)` and every later line carries it.
Standard library only: the guest agent imports this module inside every sandbox.
"""
from __future__ import annotations

import json
import logging
import sys
import time

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
# Third-party internals that are noisy at INFO and say nothing an operator needs.
_QUIET = ("grpc", "aetcd", "asyncio", "httpx", "httpcore", "sanic.access", "aiohttp.access")
# Fields set for the whole process after start-up (`tag`); one dict, shared by every formatter.
_TAGS: dict[str, object] = {}


def tag(**fields: object) -> None:
    """Add fields to every later line of this process (a None value removes the field)."""
    for k, v in fields.items():
        if v is None:
            _TAGS.pop(k, None)
        else:
            _TAGS[k] = v


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str, **static: object) -> None:
        super().__init__()
        self.static = {"service": service, **static}

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            **self.static,
            **_TAGS,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in vars(record).items():
            if k not in _STANDARD and not k.startswith("_") and v is not None:
                out[k] = v if isinstance(v, (str, int, float, bool, list, dict)) else str(v)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup(service: str, level: str = "INFO", *, logger: str = "", **static: object) -> None:
    """Send the records of `logger` (default: all) to stderr as JSON lines tagged with the service."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service, **static))
    target = logging.getLogger(logger)
    target.handlers[:] = [handler]
    target.setLevel(level.upper())
    if logger:
        target.propagate = False
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
