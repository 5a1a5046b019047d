"""Registry credentials and the two auth schemes of the distribution API.

Basic: the registry answers 401 with ``WWW-Authenticate: Basic realm=...``; we resend with the
credentials. Bearer: the 401 names a token service (``Bearer realm=...,service=...,scope=...``);
we GET ``realm?service=...&scope=...`` (with basic credentials when we have them, anonymously
otherwise) and resend with ``Authorization: Bearer <token>``.
"""
from __future__ import annotations

import base64
import re
import time
from dataclasses import dataclass

import httpx

from .errors import AuthFailed, RegistryError

_PARAM_RE = re.compile(r'([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


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

    async def on_unauthorized(self, client: httpx.AsyncClient, response: httpx.Response) -> None:
        """Learn from a 401 how to authenticate; raises AuthFailed when we cannot."""
        detail = _error_text(response)
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
        raise AuthFailed(f"{self._what}: unsupported auth scheme {challenge.scheme!r}")

    async def _fetch_token(self, client: httpx.AsyncClient, challenge: Challenge, detail: str) -> None:
        realm = challenge.params.get("realm", "")
        if not realm.startswith(("http://", "https://")):
            raise AuthFailed(f"{self._what}: bearer challenge has no usable realm ({realm!r})")
        if self._header and self._header.startswith("Bearer ") and challenge.params.get("error"):
            # We already presented a token and it was not enough.
            raise AuthFailed(f"{self._what}: token refused: {challenge.params['error']} ({detail})")
        params = {}
        if challenge.params.get("service"):
            params["service"] = challenge.params["service"]
        params["scope"] = challenge.params.get("scope") or self._default_scope
        headers = {}
        if self._credentials is not None:
            headers["Authorization"] = self._credentials.basic_header()
        try:
            r = await client.get(realm, params=params, headers=headers)
        except httpx.HTTPError as e:
            raise RegistryError(f"{self._what}: token service {realm} unreachable: {e!r}") from None
        if r.status_code in (401, 403):
            who = "credentials" if self._credentials else "anonymous access"
            raise AuthFailed(f"{self._what}: token service refused {who}: "
                             f"HTTP {r.status_code} {_error_text(r)}")
        if r.status_code != 200:
            raise RegistryError(f"{self._what}: token service answered HTTP {r.status_code}: "
                                f"{_error_text(r)}")
        try:
            body = r.json()
            token = body.get("token") or body.get("access_token")
        except ValueError:
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"{self._what}: token service returned no token")
        expires_in = body.get("expires_in")
        lifetime = float(expires_in) if isinstance(expires_in, (int, float)) and expires_in > 0 else 60.0
        # Renew a little early; the registry checks expiry to the second.
        self._expires = time.monotonic() + max(lifetime - 10.0, lifetime / 2)
        self._header = f"Bearer {token}"


def _error_text(response: httpx.Response) -> str:
    """The registry's error list ({"errors":[{code,message}]}) or the start of the body."""
    try:
        body = response.json()
        errors = body.get("errors") if isinstance(body, dict) else None
        if errors:
            return "; ".join(f"{e.get('code', '')}: {e.get('message', '')}".strip(": ")
                             for e in errors if isinstance(e, dict))
        if isinstance(body, dict) and body.get("details"):
            return str(body["details"])
    except (ValueError, httpx.ResponseNotRead):
        pass
    try:
        text = response.text.strip()
    except httpx.ResponseNotRead:
        text = ""
    return text[:200] or response.reason_phrase
