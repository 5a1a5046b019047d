"""A template build's COPY archives, fetched from cube-api when this node does not share its disk.

The API keeps the archives the E2B SDK uploads (services/api/build_files.py). On one machine the
node reads the same directory; on several it does not, and the API hands each COPY step of a build
a signed read URL (`BuildStep.files_url`, a path on the API). The node fetches it here, from its
own `api_url` setting, into the build's private work directory; the step removes the file once it
is in the build VM.

Invariants:
- Only the API's build file paths are fetched: `files_url` is a relative `/build-files/...` path
  of plain URL characters, joined to the operator's `api_url`; it cannot name another host.
- Bounded and whole: at most `max_bytes` are written (a longer body fails the step), the body must
  be as long as its Content-Length says, and the file appears under its final name (0600) only
  once complete; any failure removes it.
- Environment proxies are not used: the API is reached directly, as configured.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import httpx

from cube_common.build_files import HASH_RE

_URL_RE = re.compile(r"/build-files/[A-Za-z0-9_-]{1,64}/[0-9a-f]{64}\?[A-Za-z0-9._~%&=-]{1,1024}\Z")
_CHUNK = 1 << 20


class FetchError(Exception):
    """The archive could not be fetched; the message says why (the API's words when it answered)."""


class Fetcher:
    def __init__(self, api_url: str, dest_dir: Path, *, max_bytes: int, timeout_s: float = 600.0) -> None:
        self.api_url = api_url.rstrip("/")
        self.dest_dir = dest_dir
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def fetch(self, files_url: str, files_hash: str) -> Path:
        """The archive of ``files_hash`` at ``files_url`` (a path on the API), as a file of its own."""
        if not _URL_RE.match(files_url) or not HASH_RE.match(files_hash) or f"/{files_hash}?" not in files_url:
            raise FetchError("the build carries no valid URL for them")
        self.dest_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        final = self.dest_dir / f"{files_hash}.tar"
        tmp = self.dest_dir / f".{files_hash}.part"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                await self._download(self.api_url + files_url, f)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return final

    async def _download(self, url: str, f) -> None:
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s, trust_env=False) as client:
                async with client.stream("GET", url) as r:
                    if r.status_code != 200:
                        body = (await r.aread())[:300].decode("utf-8", "replace")
                        raise FetchError(f"the API answered {r.status_code}: {_message(body)}")
                    declared = r.headers.get("content-length")
                    if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
                        raise FetchError(f"the archive is larger than this node takes ({self.max_bytes} bytes)")
                    got = 0
                    async for chunk in r.aiter_raw(_CHUNK):
                        got += len(chunk)
                        if got > self.max_bytes:
                            raise FetchError(f"the archive is larger than this node takes ({self.max_bytes} bytes)")
                        f.write(chunk)
                    if declared is not None and got != int(declared):
                        raise FetchError(f"the transfer was cut ({got} of {declared} bytes)")
        except httpx.HTTPError as e:
            raise FetchError(f"cube-api at {self.api_url} is unreachable: {e!r}") from None


def _message(body: str) -> str:
    """The message of an E2B-shaped error body, else the text itself."""
    try:
        doc = json.loads(body)
    except ValueError:
        return body.strip()
    return str(doc.get("message", body)).strip() if isinstance(doc, dict) else body.strip()
