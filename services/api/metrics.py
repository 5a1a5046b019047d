"""Prometheus figures of cube-api: every request it answers, by route, method and status.

They are served on the API's own metrics listener (``metrics_listen``, cube_common/metrics.py),
not on the API port: Prometheus sends no X-API-KEY, and the listener exposes nothing else.

Labels stay bounded: ``route`` is the path template the request matched (``/sandboxes/<raw_id:str>``),
never the raw path (which holds sandbox ids and anything a client sends), and ``unmatched`` for a
request no route took; ``method`` is one of HTTP's usual methods or ``other``.
"""

from __future__ import annotations

import time

from prometheus_client import Histogram
from sanic import Request
from sanic.response import BaseHTTPResponse

from cube_common.metrics import CALL_BUCKETS

REQUEST_SECONDS = Histogram("cube_api_request_duration_seconds", "Requests cube-api answered, by route template, "
                            "method and HTTP status, and how long each took (its _count is the request rate)",
                            ["route", "method", "status"], buckets=CALL_BUCKETS)

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"


def route_of(request: Request) -> str:
    return request.uri_template or UNMATCHED


def observe(request: Request, response: BaseHTTPResponse, started: float) -> None:
    """Count ``request``, answered with ``response``; ``started`` is its time.monotonic()."""
    method = request.method if request.method in METHODS else "other"
    REQUEST_SECONDS.labels(route_of(request), method, str(response.status)).observe(time.monotonic() - started)
