"""HTTP routes of cube-api, one blueprint per resource."""

from __future__ import annotations

from urllib.parse import unquote

import grpc

from services.api.errors import from_grpc


async def master_call(request, method: str, req, slow: bool = False):
    """Call the master for the request's caller (auth.py); its gRPC errors become E2B errors."""
    try:
        return await request.app.ctx.master.call(method, req, request.ctx.caller, slow)
    except grpc.RpcError as e:
        raise from_grpc(e) from None


def template_ref(raw: str) -> str:
    """A template id or name from a path: the SDKs percent-encode it as one segment (a snapshot's id
    carries its tag, `id:default` → `id%3Adefault`), which the router leaves as it came."""
    return unquote(raw)


def sandbox_id(raw: str) -> str:
    # SDKs <= 1.5.6 address sandboxes as <sandboxID>-<clientID>; ids never contain '-'.
    return raw.split("-", 1)[0]
