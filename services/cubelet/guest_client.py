"""The cubelet talking to the agent inside a sandbox, through the sandbox's CubeVS address.

CubeVS lets only the node's proxy source address reach a guest, so these requests bind it too.
"""
from __future__ import annotations

import asyncio
import base64
import os
import time
from dataclasses import dataclass

import httpx

from cube_common.envd import ENVD_PORT, INTERPRETER_PORT


class GuestAgentError(Exception):
    pass


@dataclass(frozen=True)
class GuestEndpoint:
    host_address: str
    source_address: str  # empty: don't bind (no CubeVS, e.g. tests on a namespace)

    def url(self, port: int, path: str) -> str:
        return f"http://{self.host_address}:{port}{path}"

    def client(self, timeout: float) -> httpx.AsyncClient:
        # Plain HTTP to the guest: verify=False spares building an SSL context from the CA bundle,
        # which costs ~10-25 ms per client here, on every claim's /init.
        transport = httpx.AsyncHTTPTransport(local_address=self.source_address or None, retries=0, verify=False)
        return httpx.AsyncClient(transport=transport, timeout=timeout, trust_env=False)


async def init_identity(ep: GuestEndpoint, *, sandbox_id: str, access_token: str, env_vars: dict[str, str],
                        current_token: str = "", timeout: float = 30.0, default_user: str = "",
                        default_workdir: str = "", client: httpx.AsyncClient | None = None) -> None:
    """POST /init: token, env vars, clock and entropy for the agent of a freshly restored sandbox,
    and the template's default user and working directory when it has them.

    `client` is a connection already open to the agent (a pooled clone's): it spares the claim a
    TCP handshake with the guest and a client set-up (~9 ms together). If that connection turns out
    closed, a new one is made."""
    body = {
        "sandboxID": sandbox_id,
        "accessToken": access_token,
        "envVars": env_vars,
        "timestamp": time.time(),
        "entropy": base64.b64encode(os.urandom(64)).decode(),
    }
    if default_user:
        body["defaultUser"] = default_user
    if default_workdir:
        body["defaultWorkdir"] = default_workdir
    headers = {"X-Access-Token": current_token} if current_token else {}
    r = None
    if client is not None:
        try:
            r = await client.post(ep.url(ENVD_PORT, "/init"), json=body, headers=headers, timeout=timeout)
        except httpx.TransportError:
            r = None  # the kept connection was closed under us: once more on a new one
    if r is None:
        async with ep.client(timeout) as c:
            try:
                r = await c.post(ep.url(ENVD_PORT, "/init"), json=body, headers=headers)
            except httpx.HTTPError as e:
                raise GuestAgentError(f"agent /init unreachable: {e!r}") from e
    if r.status_code >= 300:
        raise GuestAgentError(f"agent /init answered {r.status_code}: {r.text[:300]}")


async def warm_interpreter(ep: GuestEndpoint, timeout: float = 120.0) -> None:
    """POST /warmup on the code interpreter: a throwaway cell in each default kernel, so that a
    pooled clone has the first cell's code paths translated before a sandbox claims it."""
    async with ep.client(timeout) as c:
        try:
            r = await c.post(ep.url(INTERPRETER_PORT, "/warmup"))
        except httpx.HTTPError as e:
            raise GuestAgentError(f"interpreter /warmup unreachable: {e!r}") from e
    if r.status_code == 404:
        return  # an agent older than /warmup (a template built before it): pool it unwarmed
    if r.status_code >= 300:
        raise GuestAgentError(f"interpreter /warmup answered {r.status_code}: {r.text[:300]}")


async def wait_healthy(ep: GuestEndpoint, ports: tuple[int, ...] = (ENVD_PORT, INTERPRETER_PORT),
                       timeout: float = 120.0) -> None:
    """Until every port answers GET /health with a 2xx."""
    deadline = time.monotonic() + timeout
    async with ep.client(5.0) as c:
        for port in ports:
            while True:
                try:
                    r = await c.get(ep.url(port, "/health"))
                    if r.status_code < 300:
                        break
                    last = f"HTTP {r.status_code}"
                except httpx.HTTPError as e:
                    last = repr(e)
                if time.monotonic() > deadline:
                    raise GuestAgentError(f"port {port} not healthy within {timeout}s: {last}")
                await asyncio.sleep(0.05)


async def wait_tcp(ep: GuestEndpoint, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, w = await asyncio.wait_for(asyncio.open_connection(
                ep.host_address, port, local_addr=(ep.source_address, 0) if ep.source_address else None), 2.0)
            w.close()
            return
        except (TimeoutError, OSError) as e:
            if time.monotonic() > deadline:
                raise GuestAgentError(f"port {port} did not accept connections within {timeout}s: {e!r}") from e
            await asyncio.sleep(0.05)


async def wait_http(ep: GuestEndpoint, port: int, path: str, timeout: float) -> None:
    """Until GET <path> on the guest port answers with a status below 400 (a template's probe)."""
    deadline = time.monotonic() + timeout
    last = ""
    async with ep.client(5.0) as c:
        while True:
            try:
                r = await c.get(ep.url(port, path if path.startswith("/") else "/" + path))
                if r.status_code < 400:
                    return
                last = f"HTTP {r.status_code}"
            except httpx.HTTPError as e:
                last = repr(e)
            if time.monotonic() > deadline:
                raise GuestAgentError(f"probe GET {path} on port {port} did not succeed within {timeout:.0f}s: {last}")
            await asyncio.sleep(0.2)
