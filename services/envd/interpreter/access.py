"""Who may use the code-interpreter port: the one access check of port 49999.

Invariants:
- Once /init (on the envd port) has set an access token, every request to this port must carry it
  in ``X-Access-Token``, whatever its path or method (unknown paths included, so routes are not
  revealed either), except the paths in ``OPEN``. A missing or wrong token gets 401 with envd's JSON
  error body, before the handler runs or the body is read.
- The context routes (``/contexts...``) are the one exception the SDKs force: the E2B
  code-interpreter SDKs (Python 2.11.5, JS 2.8.0, the newest) send the token with ``run_code``
  only, never with their context calls, so requiring it there would break ``create_code_context``
  for every sandbox. A context call without the header passes; one that presents a token must
  present the right one. (Issue 11 asked for the token on every endpoint; the SDK wins.)
- Before a token is set (a template being built, a pooled clone before its claim, local
  development) every request passes, as on the envd port (``Identity.token_ok``).
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from ..files_http import json_error
from ..identity import Identity

# Open without a token, each because it returns no sandbox data and changes nothing:
# - /health: a constant "OK". The cubelet's readiness probe (guest_client.wait_healthy: template
#   builds, warm-pool fills) sends no token, and probes of this kind must keep working whatever
#   state the agent is in.
# Not open although the host calls it: /warmup runs a cell in every default kernel (CPU, and
# kernel state a sandbox would see). The warm pool calls it before a claim's /init, when no token
# is set yet, so it passes then; once a sandbox owns the clone it needs the sandbox's token.
OPEN = frozenset({"/health"})
# Where a request without the header passes (see the module docstring): the SDKs send none there.
TOKENLESS_PREFIX = "/contexts"

ACCESS_TOKEN_HEADER = "X-Access-Token"


def require_token(identity: Identity) -> Middleware:
    """aiohttp middleware enforcing the module's invariants against ``identity``'s token."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        presented = request.headers.get(ACCESS_TOKEN_HEADER)
        sdk_context_call = presented is None and _is_context_route(request.path)
        if request.path not in OPEN and not sdk_context_call and not identity.token_ok(presented):
            # The E2B code-interpreter SDKs report any status but 404/502 as
            # "SandboxException: 401 Unauthorized: <body>" (Python) or SandboxError (JS).
            return json_error(401, "missing or invalid access token")
        return await handler(request)

    return guard


def _is_context_route(path: str) -> bool:
    return path == TOKENLESS_PREFIX or path.startswith(TOKENLESS_PREFIX + "/")
