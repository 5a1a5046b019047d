"""API-key authentication (the SDK sends ``X-API-KEY`` on every control-plane call).

Off (default): any non-empty key is accepted, as local users expect. On: the key must be one
issued by ``cubemastercli apikey create`` and not revoked; the master checks it against the
SHA-256 it stored. Either way a missing key is 401 with an E2B error body.
"""

from __future__ import annotations

import grpc

from sdk.gen.cube.v1 import master_pb2 as P
from services.api.errors import ApiError, from_grpc

PUBLIC_PATHS = {"/health", "/openapi.json"}


async def authenticate(request) -> None:
    """Sanic request middleware: sets ``request.ctx.client_id`` or raises 401."""
    if request.path in PUBLIC_PATHS or request.method == "OPTIONS":
        return
    key = (request.headers.get("x-api-key") or "").strip()
    if not key:
        raise ApiError(401, "missing API key: set the X-API-KEY header (E2B_API_KEY)")
    app = request.app
    if not app.ctx.settings.auth:
        request.ctx.client_id = "local"
        return
    try:
        rec = await app.ctx.master.call("ValidateApiKey", P.ValidateApiKeyRequest(key=key))
    except grpc.RpcError as e:
        err = from_grpc(e)
        if err.status == 401:
            raise ApiError(401, "invalid API key") from e
        raise err from e
    request.ctx.client_id = rec.key_id
