"""API-key authentication (the SDK sends ``X-API-KEY`` on every control-plane call).

Off (default): any non-empty key is accepted, as local users expect, and every request acts for
the local team as its admin (cube_common.teams.LOCAL_ADMIN). On: the key must be one issued by
``cubemastercli apikey create`` and not revoked; the master checks it against the SHA-256 it
stored and answers with the key's team and role, which the request then acts for. Either way a
missing key is 401 with an E2B error body. The web console's page and assets (routes/console.py)
need no key: they hold no data, and the page's own calls carry the key. Nor do uploads of build
files (routes/build_files.py): the E2B SDK PUTs them to a presigned URL, whose signature the route
checks. Volume content calls (``/volumecontent/...``, routes/volumes.py) take no key either, and no
key opens them: they carry ``Authorization: Bearer <volume token>``, which the master checks; here
a missing or malformed one is 401, and the token goes to ``request.ctx.volume_token``.

Sets ``request.ctx.caller`` (a ``Caller``, which routes hand to the master client) and
``request.ctx.client_id`` (E2B's ``clientID``: the key id, "local" with auth off).
"""

from __future__ import annotations

import grpc

from cube_common.teams import LOCAL_ADMIN, Caller
from sdk.gen.cube.v1 import master_pb2 as P
from services.api.errors import ApiError, from_grpc
from services.api.routes.build_files import is_public as signed_upload
from services.api.routes.console import is_public as console_path
from services.api.routes.volumes import MAX_TOKEN, is_content as volume_content

PUBLIC_PATHS = {"/health", "/openapi.json"}


async def authenticate(request) -> None:
    """Sanic request middleware: sets ``request.ctx.caller`` and ``client_id`` or raises 401."""
    if request.path in PUBLIC_PATHS or console_path(request.path) or request.method == "OPTIONS":
        return
    if signed_upload(request.method, request.path):
        return  # its URL's signature authorises it (routes/build_files.py); the SDK sends no key
    if volume_content(request.path):
        request.ctx.volume_token = _bearer(request)
        request.ctx.client_id = ""
        request.ctx.caller = None  # the API calls the master as itself; the token authorises
        return
    key = (request.headers.get("x-api-key") or "").strip()
    if not key:
        raise ApiError(401, "missing API key: set the X-API-KEY header (E2B_API_KEY)")
    app = request.app
    if not app.ctx.settings.auth:
        request.ctx.client_id = "local"
        request.ctx.caller = LOCAL_ADMIN
        return
    if not key.isascii() or not key.isprintable():
        # Never a key the master issued, and one that is not UTF-8 (Sanic hands such header
        # bytes over as surrogates) could not even be put in the request to the master.
        raise ApiError(401, "invalid API key")
    try:
        # As the API itself (no caller): only an operator may validate keys.
        rec = await app.ctx.master.call("ValidateApiKey", P.ValidateApiKeyRequest(key=key), None)
    except grpc.RpcError as e:
        err = from_grpc(e)
        if err.status == 401:
            raise ApiError(401, "invalid API key") from e
        raise err from e
    request.ctx.client_id = rec.key_id
    request.ctx.caller = Caller(team_id=rec.team_id, admin=rec.role == P.API_KEY_ROLE_ADMIN)


def _bearer(request) -> str:
    """The volume token of a content call (E2B's ``Authorization: Bearer <token>``)."""
    scheme, _, token = (request.headers.get("authorization") or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "missing volume token: set Authorization: Bearer <the volume's token>")
    if len(token) > MAX_TOKEN or not token.isascii() or not token.isprintable():
        raise ApiError(401, "invalid volume token")
    return token
