"""A client of the OCI distribution API (pull side) for one repository.

Every connection goes through `egress.GuardedTransport` (no loopback, private or metadata
addresses unless the pull's `RegistryAccess` allows them), redirects included. What a registry
says is never echoed at length: errors carry the HTTP status and the distribution spec's error
codes (`MANIFEST_UNKNOWN`), not the body's text, and at most `_ERROR_BODY_BYTES` of an error body
are read. Manifests and configs are read up to `Limits.max_manifest_bytes` / `max_config_bytes`.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import httpx

from .auth import Authenticator, Credentials, error_text, read_some
from .cache import LayerCache
from .egress import GuardedTransport, RegistryAccess
from .errors import (
    AuthFailed,
    DigestMismatch,
    ImageNotFound,
    ImageTooLarge,
    OciError,
    RegistryError,
    RegistryNotAllowed,
)
from .limits import DEFAULT_LIMITS, Limits
from .manifest import ACCEPT, Descriptor, sha256_digest
from .reference import ImageRef

log = logging.getLogger(__name__)

_RETRIES = 3
_RETRY_STATUS = {429, 500, 502, 503, 504}
_CHUNK = 1 << 20


class RegistryClient:
    """Fetches manifests and blobs of `ref.repository` from `ref.endpoint`.

    Use as an async context manager. Redirects are followed (blob storage on another host gets
    no Authorization header: httpx drops it on a cross-origin redirect), each one's address
    checked by `access` like the first. `transport` replaces the guarded one (tests only)."""

    def __init__(self, ref: ImageRef, credentials: Credentials | None = None, *,
                 timeout: float = 60.0, transport: httpx.AsyncBaseTransport | None = None,
                 access: RegistryAccess | None = None, limits: Limits = DEFAULT_LIMITS) -> None:
        if ref.is_local:
            raise ValueError("RegistryClient needs a registry reference")
        self.ref = ref
        self._what = str(ref)
        self._limits = limits
        self._auth = Authenticator(credentials, f"repository:{ref.repository}:pull", self._what)
        self._client = httpx.AsyncClient(
            follow_redirects=True, transport=transport or GuardedTransport(access or RegistryAccess()),
            trust_env=False, timeout=httpx.Timeout(timeout, connect=min(timeout, 15.0)),
            headers={"User-Agent": "cube-oci/1"})
        self._base = f"{ref.endpoint}/v2/{ref.repository}"

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def get_manifest(self, reference: str) -> tuple[bytes, str, str]:
        """(body, content type, digest) of a manifest or index, verified against the digest
        when `reference` is one, and against the registry's Docker-Content-Digest otherwise."""
        url = f"{self._base}/manifests/{reference}"
        async with self._open(url, {"Accept": ACCEPT}, what=f"manifest {reference}") as r:
            body = await _read_limited(r, self._limits.max_manifest_bytes, f"{self._what}: manifest")
            content_type = r.headers.get("content-type", "")
            claimed = r.headers.get("docker-content-digest")
        digest = sha256_digest(body)
        expected = reference if reference.startswith("sha256:") else claimed
        if expected and expected.startswith("sha256:") and expected != digest:
            raise DigestMismatch(f"{self._what}: manifest", expected, digest)
        return body, content_type, digest

    async def get_blob_bytes(self, desc: Descriptor, what: str = "blob") -> bytes:
        """A small blob (a config) into memory, verified."""
        if desc.size > self._limits.max_config_bytes:
            raise ImageTooLarge(f"{self._what}: {what} {desc.digest} is {desc.size} bytes, more than the "
                                f"limit of {self._limits.max_config_bytes}")
        async with self._open(f"{self._base}/blobs/{desc.digest}", {}, what=f"{what} {desc.digest}") as r:
            body = await _read_limited(r, desc.size, f"{self._what}: {what} {desc.digest}")
        actual = sha256_digest(body)
        if actual != desc.digest:
            raise DigestMismatch(f"{self._what}: {what}", desc.digest, actual)
        return body

    async def fetch_blob(self, desc: Descriptor, cache: LayerCache,
                         on_bytes: Callable[[int], None] | None = None, what: str = "layer") -> Path:
        """Stream a blob into the cache (verified, atomic). Transport errors are retried from
        the start; a digest mismatch is not (the registry would serve the same bytes)."""
        url = f"{self._base}/blobs/{desc.digest}"
        label = f"{self._what}: {what}"
        for attempt in range(_RETRIES):
            done = 0
            try:
                with cache.writer(desc.digest, desc.size, label) as w:
                    async with self._open(url, {}, what=f"{what} {desc.digest}") as r:
                        async for chunk in r.aiter_bytes(_CHUNK):
                            w.write(chunk)
                            done += len(chunk)
                            if on_bytes:
                                on_bytes(len(chunk))
                    return w.commit()
            except RegistryError:
                if on_bytes and done:
                    on_bytes(-done)  # progress goes back: the retry starts over
                if attempt == _RETRIES - 1:
                    raise
                await asyncio.sleep(0.5 * (attempt + 1))
        raise AssertionError("unreachable")

    def _open(self, url: str, headers: dict[str, str], what: str) -> _Response:
        return _Response(self, url, headers, what)

    async def _send(self, url: str, headers: dict[str, str], what: str) -> httpx.Response:
        """GET with auth, retries on transport errors and 429/5xx; returns an open 200 response
        (stream mode) or raises a typed error."""
        reauthed = False
        attempt = 0
        while True:
            request = self._client.build_request("GET", url, headers={**headers, **self._auth.header()})
            try:
                r = await self._client.send(request, stream=True)
            except httpx.HTTPError as e:
                attempt += 1
                if attempt >= _RETRIES:
                    raise RegistryError(f"{self._what}: {what}: cannot reach {self.ref.endpoint}: "
                                        f"{type(e).__name__}: {e}") from None
                await asyncio.sleep(0.3 * attempt)
                continue
            if r.status_code == 200:
                return r
            try:
                body = await read_some(r)
            except httpx.HTTPError:
                body = b""
            finally:
                await r.aclose()
            status = error_text(r, body)
            if r.status_code == 401:
                # A second 401 means what we presented was refused; the authenticator raises
                # with the reason (bad basic credentials, insufficient token scope).
                await self._auth.on_unauthorized(self._client, r, status)
                if reauthed:
                    raise AuthFailed(f"{self._what}: {what}: unauthorized: {status}")
                reauthed = True
                continue
            if r.status_code == 403:
                raise AuthFailed(f"{self._what}: {what}: denied: {status}")
            if r.status_code == 404:
                raise ImageNotFound(f"{self._what}: {what}: not found: {status}")
            if r.status_code in _RETRY_STATUS and attempt + 1 < _RETRIES:
                attempt += 1
                await asyncio.sleep(0.3 * attempt)
                continue
            raise RegistryError(f"{self._what}: {what}: {status}")


class _Response:
    """`async with` wrapper: sends on enter, closes the stream on exit; transport errors while
    reading the body become RegistryError."""

    def __init__(self, client: RegistryClient, url: str, headers: dict[str, str], what: str) -> None:
        self._args = (url, headers, what)
        self._client = client
        self._response: httpx.Response | None = None

    async def __aenter__(self) -> httpx.Response:
        try:
            self._response = await self._client._send(*self._args)
        except RegistryNotAllowed as e:  # raised in a connect, which knows no image
            raise RegistryNotAllowed(f"{self._client._what}: {self._args[2]}: {e}") from None
        return self._response

    async def __aexit__(self, exc_type, exc, tb) -> bool:
        if self._response is not None:
            await self._response.aclose()
        if isinstance(exc, httpx.HTTPError) and not isinstance(exc, OciError):
            raise RegistryError(f"{self._client._what}: {self._args[2]}: transfer failed: "
                                f"{type(exc).__name__}: {exc}") from None
        return False


async def _read_limited(r: httpx.Response, limit: int, what: str) -> bytes:
    parts, total = [], 0
    async for chunk in r.aiter_bytes():
        total += len(chunk)
        if total > limit:
            raise ImageTooLarge(f"{what}: larger than the limit of {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)
