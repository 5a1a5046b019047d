"""E2B-shaped errors: every non-2xx answer is JSON ``{"code": <status>, "message": <text>}``.

gRPC status codes from the master map to HTTP statuses here; RESOURCE_EXHAUSTED (no capacity)
says ``Should-Retry: false`` so the SDK does not hammer a full cluster.
"""

from __future__ import annotations

import grpc
from sanic import response
from sanic.exceptions import MethodNotAllowed, SanicException

_STATUS = {
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNIMPLEMENTED: 501,
}


def http_status(code_name: str) -> int:
    """The HTTP status of a gRPC status code given by name (a fork's per-sandbox error)."""
    code = getattr(grpc.StatusCode, code_name, None)
    return _STATUS.get(code, 500) if code is not None else 500


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)


def from_grpc(e: grpc.RpcError) -> ApiError:
    code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
    status = _STATUS.get(code, 500)
    message = (e.details() if hasattr(e, "details") else "") or code.name.lower()
    headers = {}
    if status == 429:
        headers["Should-Retry"] = "false"
    elif status == 503:
        headers["Retry-After"] = "1"
    if code == grpc.StatusCode.UNAVAILABLE and "failed to connect" in message.lower():
        message = "the control plane is unavailable; try again"
    return ApiError(status, message, headers)


def error_response(status: int, message: str, headers: dict | None = None):
    return response.json({"code": status, "message": message}, status=status, headers=headers)


def _methods_of(request) -> list[str]:
    out = []
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        try:
            request.app.router.get(request.path, method, request.headers.get("host"))
        except SanicException:
            continue
        out.append(method)
    return out


def handle_exception(request, exc: Exception):
    """Sanic's exception handler: everything becomes an E2B error body."""
    if isinstance(exc, ApiError):
        return error_response(exc.status, exc.message, exc.headers)
    if isinstance(exc, grpc.RpcError):
        e = from_grpc(exc)
        return error_response(e.status, e.message, e.headers)
    if isinstance(exc, SanicException):
        status = getattr(exc, "status_code", 500) or 500
        headers = dict(getattr(exc, "headers", None) or {})
        if isinstance(exc, MethodNotAllowed) and "Allow" not in headers:
            # A 405 names the methods the path has (RFC 9110); Sanic leaves that out for a path
            # whose methods are separate routes (GET and DELETE /sandboxes/{id}).
            headers["Allow"] = ", ".join(_methods_of(request))
        return error_response(status, str(exc) or "error", headers)
    from services.api.log import get_logger
    get_logger("errors").exception("unhandled error", extra={"path": request.path})
    return error_response(500, f"internal error: {type(exc).__name__}")
