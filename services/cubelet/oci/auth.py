"""Registry credentials and the two auth schemes of the distribution API.

Basic: the registry answers 401 with ``WWW-Authenticate: Basic realm=...``; we resend with the
credentials. Bearer: the 401 names a token service (``Bearer realm=...,service=...,scope=...``);
we GET ``realm?service=...&scope=...`` (with basic credentials when we have them, anonymously
otherwise) and resend with ``Authorization: Bearer <token>``.

The token realm is fetched with the registry client's own (guarded) httpx client, so its address
is checked like the registry's. Error messages carry a short status line (`error_text`): the
HTTP status, the registry's error codes and the challenge's `error` token, never free text from
a response body, which may come from a service the registry redirected us to.
"""
from __future__ import annotations

import base64
import json
import re
import time
from dataclasses import dataclass

import httpx

from .errors import AuthFailed, RegistryError

_PARAM_RE = re.compile(r'([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')
# The distribution spec's error codes (MANIFEST_UNKNOWN, DENIED, ...) and RFC 6750's error
# tokens (insufficient_scope): a fixed vocabulary, safe to show; anything else is not shown.
_CODE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}\Z")
_ERROR_BODY_BYTES = 64 << 10
_TOKEN_BODY_BYTES = 1 << 20


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def __repr__(self) -> str:  # never log a password
        return f"Credentials(username={self.username!r}, password=***)"


@dataclass(frozen=True)
class Challenge:
    scheme: str  # "basic" or "bearer", lowercased
    params: dict[str, str]


def parse_challenge(header: str) -> Challenge:
    """Parse the first challenge of a WWW-Authenticate header."""
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
              for m in _PARAM_RE.finditer(rest)}
    params = {k: re.sub(r"\\(.)", r"\1", v) for k, v in params.items()}
    return Challenge(scheme.lower(), params)


class Authenticator:
    """Holds the Authorization header for one repository and renews it on a 401."""

    def __init__(self, credentials: Credentials | None, default_scope: str, what: str) -> None:
        self._credentials = credentials
        self._default_scope = default_scope
        self._what = what
        self._header: str | None = None
        self._expires = float("inf")

    def header(self) -> dict[str, str]:
        if self._header and time.monotonic() < self._expires:
            return {"Authorization": self._header}
        return {}

    async def on_unauthorized(self, client: httpx.AsyncClient, response: httpx.Response,
                              detail: str = "") -> None:
        """Learn from a 401 how to authenticate; raises AuthFailed when we cannot. `detail` is
        the response's status line (`error_text`)."""
        detail = detail or error_text(response)
        challenge_header = response.headers.get("www-authenticate", "")
        if not challenge_header:
            raise AuthFailed(f"{self._what}: unauthorized without a challenge ({detail})")
        challenge = parse_challenge(challenge_header)
        if challenge.scheme == "basic":
            if self._credentials is None:
                raise AuthFailed(f"{self._what}: registry requires credentials ({detail})")
            if self._header == self._credentials.basic_header():
                raise AuthFailed(f"{self._what}: credentials rejected ({detail})")
            self._header = self._credentials.basic_header()
            self._expires = float("inf")
            return
        if challenge.scheme == "bearer":
            await self._fetch_token(client, challenge, detail)
            return
        scheme = challenge.scheme if _CODE_RE.match(challenge.scheme) else "?"
        raise AuthFailed(f"{self._what}: unsupported auth scheme {scheme!r}")

    async def _fetch_token(self, client: httpx.AsyncClient, challenge: Challenge, detail: str) -> None:
        realm = challenge.params.get("realm", "")
        if not realm.startswith(("http://", "https://")):
            raise AuthFailed(f"{self._what}: bearer challenge has no usable realm")
        if self._header and self._header.startswith("Bearer ") and challenge.params.get("error"):
            # We already presented a token and it was not enough.
            error = challenge.params["error"]
            raise AuthFailed(f"{self._what}: token refused: "
                             f"{error if _CODE_RE.match(error) else 'error'} ({detail})")
        params = {}
        if challenge.params.get("service"):
            params["service"] = challenge.params["service"]
        params["scope"] = challenge.params.get("scope") or self._default_scope
        headers = {}
        if self._credentials is not None:
            headers["Authorization"] = self._credentials.basic_header()
        try:
            async with client.stream("GET", realm, params=params, headers=headers) as r:
                raw = await read_some(r, _TOKEN_BODY_BYTES + 1)
        except httpx.HTTPError as e:
            raise RegistryError(f"{self._what}: token service {realm[:200]} unreachable: "
                                f"{type(e).__name__}: {e}") from None
        if r.status_code in (401, 403):
            who = "credentials" if self._credentials else "anonymous access"
            raise AuthFailed(f"{self._what}: token service refused {who}: {error_text(r, raw)}")
        if r.status_code != 200:
            raise RegistryError(f"{self._what}: token service answered {error_text(r, raw)}")
        if len(raw) > _TOKEN_BODY_BYTES:
            raise RegistryError(f"{self._what}: token service answered more than {_TOKEN_BODY_BYTES} bytes")
        body: object = None
        try:
            body = json.loads(raw)
        except ValueError:
            pass
        if not isinstance(body, dict):
            raise RegistryError(f"{self._what}: token service returned no token")
        token = body.get("token") or body.get("access_token")
        if not isinstance(token, str) or not token:
            raise RegistryError(f"{self._what}: token service returned no token")
        expires_in = body.get("expires_in")
        lifetime = float(expires_in) if isinstance(expires_in, (int, float)) and expires_in > 0 else 60.0
        # Renew a little early; the registry checks expiry to the second.
        self._expires = time.monotonic() + max(lifetime - 10.0, lifetime / 2)
        self._header = f"Bearer {token}"


async def read_some(response: httpx.Response, limit: int = _ERROR_BODY_BYTES) -> bytes:
    """At most `limit` bytes of a streamed response's body (the rest is not read)."""
    parts, total = [], 0
    async for chunk in response.aiter_bytes():
        parts.append(chunk[:limit - total])
        total += len(parts[-1])
        if total >= limit:
            break
    return b"".join(parts)


def error_text(response: httpx.Response, body: bytes = b"") -> str:
    """A short status line for an error answer: "HTTP 404 Not Found" plus the error codes of
    the registry's error list (`{"errors": [{"code": ...}]}`) when they are well-formed codes.
    The reason phrase is the standard one, not the server's; no other text of the body is used."""
    line = f"HTTP {response.status_code} {httpx.codes.get_reason_phrase(response.status_code)}".strip()
    codes: list[str] = []
    try:
        doc = json.loads(body) if body else None
    except ValueError:
        doc = None
    errors = doc.get("errors") if isinstance(doc, dict) else None
    for e in errors if isinstance(errors, list) else ():
        code = e.get("code") if isinstance(e, dict) else None
        if isinstance(code, str) and _CODE_RE.match(code) and code not in codes and len(codes) < 4:
            codes.append(code)
    return f"{line} ({', '.join(codes)})" if codes else line
