"""Commands and file uploads in a guest, through its agent (envd), for template builds.

The cubelet reaches the agent at the build VM's CubeVS address like any guest request
(guest_client.GuestEndpoint). Commands go through envd's Connect `process.Process/Start` with the
connect+json stream encoding; uploads through its HTTP `/files` raw body. The build VM's agent has
no access token (none was handed over by /init), so no token is sent.

Bounds: a command's output reaches the caller line by line, each line cut at MAX_LINE_BYTES (what a
guest prints is not trusted to be small), and a partial line is held at most MAX_LINE_BYTES before it
is passed on. The stream's envelopes are refused above MAX_ENVELOPE_BYTES.
"""
from __future__ import annotations

import asyncio
import base64
import json
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from cube_common.envd import ENVD_PORT

from .guest_client import GuestAgentError, GuestEndpoint

MAX_LINE_BYTES = 4096
MAX_ENVELOPE_BYTES = 4 << 20
_STREAM = "application/connect+json"


@dataclass(frozen=True)
class Exited:
    exit_code: int
    status: str  # the agent's words ("exit status 3", "signal: killed")
    error: str = ""


OnLine = Callable[[str, bool], Awaitable[None]]  # (line, is_stderr)


def _basic(user: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:".encode()).decode()}


def _envelope(payload: dict) -> bytes:
    data = json.dumps(payload).encode()
    return struct.pack(">BI", 0, len(data)) + data


async def _envelopes(resp: httpx.Response) -> AsyncIterator[tuple[int, dict]]:
    buf = b""
    async for chunk in resp.aiter_bytes():
        buf += chunk
        while len(buf) >= 5:
            flags, n = struct.unpack(">BI", buf[:5])
            if n > MAX_ENVELOPE_BYTES:
                raise GuestAgentError(f"the agent sent a {n}-byte message")
            if len(buf) < 5 + n:
                break
            body, buf = buf[5:5 + n], buf[5 + n:]
            yield flags, json.loads(body or b"{}")
    if buf:
        raise GuestAgentError("the agent's stream ended inside a message")


class _Lines:
    """Splits a byte stream into bounded text lines."""

    def __init__(self, on_line: OnLine, stderr: bool):
        self.on_line, self.stderr, self.buf = on_line, stderr, b""

    async def feed(self, data: bytes) -> None:
        self.buf += data
        while b"\n" in self.buf or len(self.buf) >= MAX_LINE_BYTES:
            line, sep, rest = self.buf.partition(b"\n")
            if not sep:
                line, rest = self.buf[:MAX_LINE_BYTES], self.buf[MAX_LINE_BYTES:]
            self.buf = rest
            await self.on_line(_text(line), self.stderr)

    async def flush(self) -> None:
        if self.buf:
            line, self.buf = self.buf, b""
            await self.on_line(_text(line), self.stderr)


def _text(line: bytes) -> str:
    text = line[:MAX_LINE_BYTES].decode("utf-8", "replace").rstrip("\r")
    return text + (" [line cut]" if len(line) > MAX_LINE_BYTES else "")


async def run(ep: GuestEndpoint, argv: list[str], *, user: str, env: dict[str, str], cwd: str | None,
              on_line: OnLine | None = None, timeout: float = 1800.0) -> Exited:
    """Run ``argv`` in the guest as ``user`` and wait for it; its output goes to ``on_line``.
    GuestAgentError when the agent refuses or the stream breaks; a command that outlives
    ``timeout`` is reported as such (the agent kills it when the stream closes)."""
    async def drop(_line: str, _err: bool) -> None:
        return None

    sink = on_line or drop
    out, err = _Lines(sink, False), _Lines(sink, True)
    process: dict = {"cmd": argv[0], "args": argv[1:], "envs": env}
    if cwd:
        process["cwd"] = cwd
    headers = {"Content-Type": _STREAM, "Connect-Protocol-Version": "1", **_basic(user)}
    body = _envelope({"process": process, "stdin": False})
    end: dict | None = None
    try:
        async with ep.client(timeout) as c:
            async with c.stream("POST", ep.url(ENVD_PORT, "/process.Process/Start"), content=body,
                                headers=headers) as resp:
                if resp.status_code != 200:
                    raise GuestAgentError(f"the agent refused the command ({resp.status_code}): "
                                          f"{(await resp.aread())[:500].decode('utf-8', 'replace')}")
                async for flags, msg in _envelopes(resp):
                    if flags & 0x02:  # end of stream: an error, or nothing
                        if msg.get("error"):
                            e = msg["error"]
                            raise GuestAgentError(f"the agent: {e.get('code', '')}: {e.get('message', '')}")
                        break
                    event = msg.get("event", {})
                    if "data" in event:
                        data = event["data"]
                        if "stdout" in data:
                            await out.feed(base64.b64decode(data["stdout"]))
                        elif "stderr" in data:
                            await err.feed(base64.b64decode(data["stderr"]))
                    elif "end" in event:
                        end = event["end"]
    except httpx.TimeoutException:
        return Exited(-1, "timed out", f"the command did not finish within {timeout:g}s")
    except httpx.HTTPError as e:
        raise GuestAgentError(f"the agent's process stream broke: {e}") from e
    await out.flush()
    await err.flush()
    if end is None:
        raise GuestAgentError("the agent's process stream ended without the command's end")
    return Exited(int(end.get("exitCode", 0)), end.get("status", ""), end.get("error", ""))


async def start_background(ep: GuestEndpoint, argv: list[str], *, user: str, env: dict[str, str],
                           cwd: str | None) -> int:
    """Start ``argv`` in the guest and return its pid once the agent reports it started; the
    process goes on running (the agent keeps it after the stream closes)."""
    process: dict = {"cmd": argv[0], "args": argv[1:], "envs": env}
    if cwd:
        process["cwd"] = cwd
    headers = {"Content-Type": _STREAM, "Connect-Protocol-Version": "1", **_basic(user)}
    try:
        async with ep.client(60.0) as c:
            async with c.stream("POST", ep.url(ENVD_PORT, "/process.Process/Start"),
                                content=_envelope({"process": process, "stdin": False}), headers=headers) as resp:
                if resp.status_code != 200:
                    raise GuestAgentError(f"the agent refused the start command ({resp.status_code})")
                async for flags, msg in _envelopes(resp):
                    if flags & 0x02:
                        e = msg.get("error") or {}
                        raise GuestAgentError(f"the start command did not start: {e.get('message', '')}")
                    start = msg.get("event", {}).get("start")
                    if start is not None:
                        return int(start.get("pid", 0))
    except httpx.HTTPError as e:
        raise GuestAgentError(f"the agent's process stream broke: {e}") from e
    raise GuestAgentError("the agent's stream ended before the start command started")


async def upload(ep: GuestEndpoint, source: Path, guest_path: str, *, user: str = "root",
                 timeout: float = 600.0) -> None:
    """Write the host file ``source`` to ``guest_path`` as ``user`` (streamed, not read whole)."""
    async def chunks() -> AsyncIterator[bytes]:
        f = await asyncio.to_thread(source.open, "rb")
        try:
            while block := await asyncio.to_thread(f.read, 1 << 20):
                yield block
        finally:
            f.close()

    try:
        async with ep.client(timeout) as c:
            resp = await c.post(ep.url(ENVD_PORT, "/files"), params={"path": guest_path, "username": user},
                                content=chunks(), headers={"Content-Type": "application/octet-stream"})
    except httpx.HTTPError as e:
        raise GuestAgentError(f"upload to {guest_path} failed: {e}") from e
    if resp.status_code >= 300:
        raise GuestAgentError(f"upload to {guest_path} refused ({resp.status_code}): {resp.text[:500]}")
