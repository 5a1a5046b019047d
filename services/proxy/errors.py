"""The error bodies the E2B SDK understands (wire spec §3.3), in one place.

The SDK looks for substrings: "was not found" raises SandboxNotRunningException and
"port is not open" raises SandboxUnreachableException; any other 502 is "state unknown". Bodies
that depend on the request are rendered by Envoy itself (local-reply mappers and direct
responses, see xds.py), so this module offers both Python renderings (tests, docs) and the Envoy
format strings built from the same words.
"""

from __future__ import annotations

import json

NOT_FOUND = "The sandbox was not found"
PORT_NOT_OPEN = "The sandbox is running but port is not open"
UNREACHABLE = "The sandbox is unreachable"
# api.<domain> (E2B's API host) carries only the volume content calls through the proxy.
API_NOT_FOUND = "Not found: this host serves only /volumecontent/ through the Cube proxy"
API_UNREACHABLE = "The Cube API is unreachable"

# Envoy substitution commands for values the request-normalising Lua filter stores as dynamic
# metadata (namespace "cube"); they were validated there ([A-Za-z0-9_-] and digits only), so
# they can be pasted into JSON text without escaping.
ENVOY_SANDBOX_ID = "%DYNAMIC_METADATA(cube:sandbox_id)%"
ENVOY_PORT = "%DYNAMIC_METADATA(cube:port)%"


def paused_message(sandbox_id: str) -> str:
    return f"The sandbox {sandbox_id} is paused"


def not_found(sandbox_id: str) -> dict:
    return {"sandboxId": sandbox_id, "message": NOT_FOUND, "code": 502}


def port_not_open(sandbox_id: str, port: int) -> dict:
    return {"sandboxId": sandbox_id, "message": PORT_NOT_OPEN, "port": port, "code": 502}


def paused(sandbox_id: str) -> dict:
    return {"sandboxId": sandbox_id, "message": paused_message(sandbox_id), "code": 502}


def client_error(code: int, message: str, sandbox_id: str | None = None) -> dict:
    body: dict = {"code": code, "message": message}
    if sandbox_id:
        body["sandboxId"] = sandbox_id
    return body


def dumps(body: dict) -> str:
    return json.dumps(body, separators=(",", ":"))


# Envoy text formats for local replies whose content depends on the request.
ENVOY_NOT_FOUND = ('{"sandboxId":"' + ENVOY_SANDBOX_ID + '","message":"' + NOT_FOUND
                   + '","code":502}')
ENVOY_PORT_NOT_OPEN = ('{"sandboxId":"' + ENVOY_SANDBOX_ID + '","message":"' + PORT_NOT_OPEN
                       + '","port":' + ENVOY_PORT + ',"code":502}')
ENVOY_UNREACHABLE = ('{"sandboxId":"' + ENVOY_SANDBOX_ID + '","message":"' + UNREACHABLE
                     + '","code":502}')
# cube-api refused, reset or unresolvable on the volume content route.
ENVOY_API_UNREACHABLE = dumps({"code": 502, "message": API_UNREACHABLE})
