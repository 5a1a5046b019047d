"""A small server for the Connect protocol (JSON codec only) on aiohttp.

It covers what the E2B SDKs use: unary calls, server streams and client streams over HTTP/1.1,
end-stream trailers, Connect error codes with their HTTP statuses, `Connect-Timeout-Ms` deadlines
and keepalive messages on long streams. Services register typed handlers on a `ConnectRouter`;
messages cross the boundary as generated protobuf classes, converted with `json_format`.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message

log = logging.getLogger("envd.connect")

M = TypeVar("M", bound=Message)

UNARY_CONTENT_TYPE = "application/json"
STREAM_CONTENT_TYPE = "application/connect+json"
FLAG_COMPRESSED = 0x01
FLAG_END_STREAM = 0x02
# One message may carry a large stdin chunk; anything bigger than this is refused, not buffered.
MAX_MESSAGE_BYTES = 32 * 1024 * 1024


class Code(enum.Enum):
    CANCELED = ("canceled", 499)
    UNKNOWN = ("unknown", 500)
    INVALID_ARGUMENT = ("invalid_argument", 400)
    DEADLINE_EXCEEDED = ("deadline_exceeded", 504)
    NOT_FOUND = ("not_found", 404)
    ALREADY_EXISTS = ("already_exists", 409)
    PERMISSION_DENIED = ("permission_denied", 403)
    RESOURCE_EXHAUSTED = ("resource_exhausted", 429)
    FAILED_PRECONDITION = ("failed_precondition", 400)
    ABORTED = ("aborted", 409)
    OUT_OF_RANGE = ("out_of_range", 400)
    UNIMPLEMENTED = ("unimplemented", 501)
    INTERNAL = ("internal", 500)
    UNAVAILABLE = ("unavailable", 503)
    DATA_LOSS = ("data_loss", 500)
    UNAUTHENTICATED = ("unauthenticated", 401)

    @property
    def wire(self) -> str:
        return self.value[0]

    @property
    def http_status(self) -> int:
        return self.value[1]


class ConnectError(Exception):
    def __init__(self, code: Code, message: str, metadata: dict[str, str] | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.metadata = metadata or {}

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code.wire, "message": self.message}


def error_response(err: ConnectError) -> web.Response:
    """A unary-style error: used for unary calls and for streams that fail before the first
    message (the SDK maps such a 404 to NotFoundException just like a unary one)."""
    return web.Response(
        status=err.code.http_status,
        body=json.dumps(err.to_json()).encode(),
        headers={"Content-Type": UNARY_CONTENT_TYPE, **err.metadata},
    )


def encode_message(msg: Message) -> bytes:
    d = json_format.MessageToDict(msg, preserving_proto_field_name=False)
    return json.dumps(d, separators=(",", ":")).encode()


def decode_message(data: bytes, cls: type[M]) -> M:
    try:
        text = data.decode("utf-8") if data else "{}"
        return json_format.Parse(text, cls(), ignore_unknown_fields=True)
    except (UnicodeDecodeError, json_format.ParseError, ValueError) as e:
        raise ConnectError(Code.INVALID_ARGUMENT, f"invalid {cls.DESCRIPTOR.name} JSON: {e}") from e


def envelope(payload: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(payload)) + payload


def end_stream_envelope(err: ConnectError | None) -> bytes:
    body: dict[str, Any] = {}
    if err is not None:
        body["error"] = err.to_json()
        if err.metadata:
            body["metadata"] = {k: [v] for k, v in err.metadata.items()}
    return envelope(json.dumps(body).encode(), FLAG_END_STREAM)


async def read_envelopes(request: web.Request) -> AsyncIterator[tuple[int, bytes]]:
    """Yields (flags, payload) from a (possibly chunked) enveloped request body."""
    content = request.content
    while True:
        try:
            header = await content.readexactly(5)
        except asyncio.IncompleteReadError as e:
            if not e.partial:
                return
            raise ConnectError(Code.INVALID_ARGUMENT, "truncated envelope header") from e
        flags, length = struct.unpack(">BI", header)
        if flags & FLAG_COMPRESSED:
            raise ConnectError(Code.INTERNAL, "compressed envelopes are not supported (identity only)")
        if length > MAX_MESSAGE_BYTES:
            raise ConnectError(Code.RESOURCE_EXHAUSTED, f"message of {length} bytes exceeds the limit")
        try:
            payload = await content.readexactly(length)
        except asyncio.IncompleteReadError as err:
            raise ConnectError(Code.INVALID_ARGUMENT, "truncated envelope payload") from err
        yield flags, payload


def parse_timeout_ms(raw: str | None) -> float | None:
    """Connect-Timeout-Ms as seconds. Old SDKs may send a float string like "30000.0"."""
    if raw is None or raw == "":
        return None
    try:
        ms = float(raw)
    except ValueError as e:
        raise ConnectError(Code.INVALID_ARGUMENT, f"invalid Connect-Timeout-Ms: {raw!r}") from e
    if ms < 0 or ms != ms:
        raise ConnectError(Code.INVALID_ARGUMENT, f"invalid Connect-Timeout-Ms: {raw!r}")
    return ms / 1000.0


@dataclass
class CallContext:
    """What a handler knows about its call beyond the request message."""

    request: web.Request
    procedure: str
    deadline: float | None  # loop.time() at which the call expires
    keepalive_interval: float | None
    # Set by the server before it closes a stream because the deadline passed, so a handler's
    # cleanup can tell expiry (Start kills its process) from a client that went away.
    deadline_exceeded: bool = False
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def headers(self):
        return self.request.headers

    def remaining(self) -> float | None:
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - asyncio.get_running_loop().time())


UnaryHandler = Callable[[CallContext, Any], Awaitable[Message]]
ServerStreamHandler = Callable[[CallContext, Any], AsyncIterator[Message]]
ClientStreamHandler = Callable[[CallContext, AsyncIterator[Any]], Awaitable[Message]]


@dataclass
class _Method(Generic[M]):
    kind: str  # "unary" | "server_stream" | "client_stream"
    request_type: type[Message]
    handler: Callable[..., Any]
    keepalive: Callable[[], Message] | None = None


# Connect-protocol peers name a keepalive interval in seconds with this header (the E2B SDK
# sends 50 on Start/Connect); without it long streams still ping at this default.
DEFAULT_KEEPALIVE_S = 30.0


class ConnectRouter:
    """Maps `/<package>.<Service>/<Method>` paths to typed handlers."""

    def __init__(self, default_keepalive_s: float = DEFAULT_KEEPALIVE_S) -> None:
        self._methods: dict[str, _Method] = {}
        self._default_keepalive_s = default_keepalive_s

    @property
    def paths(self) -> list[str]:
        return list(self._methods)

    def unary(self, path: str, request_type: type[Message], handler: UnaryHandler) -> None:
        self._methods[path] = _Method("unary", request_type, handler)

    def server_stream(
        self,
        path: str,
        request_type: type[Message],
        handler: ServerStreamHandler,
        keepalive: Callable[[], Message],
    ) -> None:
        self._methods[path] = _Method("server_stream", request_type, handler, keepalive)

    def client_stream(
        self, path: str, request_type: type[Message], handler: ClientStreamHandler
    ) -> None:
        self._methods[path] = _Method("client_stream", request_type, handler)

    def install(self, app: web.Application) -> None:
        for path in self._methods:
            app.router.add_route("*", path, self._dispatch)

    def is_connect_path(self, path: str) -> bool:
        return path in self._methods

    # -- dispatch ---------------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        method = self._methods[request.path]
        try:
            ctx = self._context(request, method)
        except _WithStatus as e:
            return e.response()
        except ConnectError as e:
            return error_response(e)
        if method.kind == "unary":
            return await self._unary(ctx, method)
        if method.kind == "server_stream":
            return await self._server_stream(ctx, method)
        return await self._client_stream(ctx, method)

    def _context(self, request: web.Request, method: _Method) -> CallContext:
        if request.method != "POST":
            raise ConnectError(Code.UNIMPLEMENTED, f"{request.method} is not supported; use POST")
        version = request.headers.get("Connect-Protocol-Version")
        if version is not None and version != "1":
            raise ConnectError(Code.INVALID_ARGUMENT, f"unsupported Connect-Protocol-Version {version!r}")
        ctype = request.headers.get("Content-Type", "")
        base = ctype.split(";", 1)[0].strip().lower()
        want = UNARY_CONTENT_TYPE if method.kind == "unary" else STREAM_CONTENT_TYPE
        if base != want:
            err = ConnectError(
                Code.INVALID_ARGUMENT,
                f"unsupported content-type {ctype!r}; this server speaks {want} only",
            )
            # Connect asks for 415 here; the body still has the Connect error shape.
            raise _WithStatus(err, 415)
        enc_header = "Content-Encoding" if method.kind == "unary" else "Connect-Content-Encoding"
        enc = request.headers.get(enc_header, "identity").strip().lower()
        if enc not in ("", "identity"):
            raise ConnectError(Code.UNIMPLEMENTED, f"unsupported compression {enc!r}; use identity")
        timeout = parse_timeout_ms(request.headers.get("Connect-Timeout-Ms"))
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        keepalive = None
        if method.kind == "server_stream":
            keepalive = self._default_keepalive_s
            raw = request.headers.get("Keepalive-Ping-Interval")
            if raw:
                try:
                    keepalive = max(0.05, float(raw))
                except ValueError as e:
                    raise ConnectError(Code.INVALID_ARGUMENT, f"invalid Keepalive-Ping-Interval {raw!r}") from e
        return CallContext(request, request.path, deadline, keepalive)

    async def _read_unary_body(self, request: web.Request) -> bytes:
        if request.content_length is not None and request.content_length > MAX_MESSAGE_BYTES:
            raise ConnectError(Code.RESOURCE_EXHAUSTED, "request body too large")
        chunks = []
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > MAX_MESSAGE_BYTES:
                raise ConnectError(Code.RESOURCE_EXHAUSTED, "request body too large")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _unary(self, ctx: CallContext, method: _Method) -> web.StreamResponse:
        try:
            req = decode_message(await self._read_unary_body(ctx.request), method.request_type)
            coro = method.handler(ctx, req)
            remaining = ctx.remaining()
            if remaining is None:
                resp = await coro
            else:
                try:
                    resp = await asyncio.wait_for(coro, remaining)
                except TimeoutError as err:
                    raise ConnectError(Code.DEADLINE_EXCEEDED, "the call's deadline passed") from err
        except ConnectError as e:
            return error_response(e)
        except Exception as e:  # the agent keeps serving whatever one call does
            log.exception("unary handler failed", extra={"procedure": ctx.procedure})
            return error_response(ConnectError(Code.INTERNAL, f"{type(e).__name__}: {e}"))
        return web.Response(
            status=200, body=encode_message(resp), headers={"Content-Type": UNARY_CONTENT_TYPE}
        )

    async def _single_stream_request(self, ctx: CallContext, method: _Method) -> Message:
        messages = []
        async for flags, payload in read_envelopes(ctx.request):
            if flags & FLAG_END_STREAM:
                raise ConnectError(Code.INVALID_ARGUMENT, "end-stream flag on a request envelope")
            messages.append(payload)
            if len(messages) > 1:
                raise ConnectError(Code.INVALID_ARGUMENT, "a server-streaming call takes exactly one request message")
        if not messages:
            raise ConnectError(Code.INVALID_ARGUMENT, "missing request envelope")
        return decode_message(messages[0], method.request_type)

    async def _server_stream(self, ctx: CallContext, method: _Method) -> web.StreamResponse:
        try:
            req = await self._single_stream_request(ctx, method)
            stream = method.handler(ctx, req)
            # The first message decides between a unary-style error and a 200 stream.
            first = await self._next_with_deadline(ctx, stream, first=True)
        except _WithStatus as e:
            return e.response()
        except ConnectError as e:
            return error_response(e)
        except Exception as e:
            log.exception("stream handler failed", extra={"procedure": ctx.procedure})
            return error_response(ConnectError(Code.INTERNAL, f"{type(e).__name__}: {e}"))

        resp = web.StreamResponse(status=200)
        resp.headers["Content-Type"] = STREAM_CONTENT_TYPE
        resp.headers["Connect-Content-Encoding"] = "identity"
        # Proxies in front must not buffer the stream.
        resp.headers["X-Accel-Buffering"] = "no"
        await resp.prepare(ctx.request)
        end_error: ConnectError | None = None
        try:
            if first is not _END:
                await resp.write(envelope(encode_message(first)))
                while True:
                    msg = await self._next_with_deadline(ctx, stream, keepalive=method.keepalive)
                    if msg is _END:
                        break
                    await resp.write(envelope(encode_message(msg)))
        except ConnectError as e:
            end_error = e
        except (ConnectionResetError, ConnectionError, asyncio.CancelledError) as e:
            # The client went away: stop without killing what the stream was watching. A closed
            # connection is the client's choice, not our error: no traceback in the log for it.
            await _cancel_pending(ctx)
            await _aclose(stream)
            if isinstance(e, asyncio.CancelledError):
                raise
            return resp
        except Exception as e:
            log.exception("stream handler failed", extra={"procedure": ctx.procedure})
            end_error = ConnectError(Code.INTERNAL, f"{type(e).__name__}: {e}")
        await _cancel_pending(ctx)
        await _aclose(stream)
        try:
            await resp.write(end_stream_envelope(end_error))
            await resp.write_eof()
        except (ConnectionResetError, ConnectionError):
            pass
        return resp

    async def _next_with_deadline(
        self,
        ctx: CallContext,
        stream: AsyncIterator[Message],
        first: bool = False,
        keepalive: Callable[[], Message] | None = None,
    ) -> Any:
        """The stream's next message, a keepalive when it is quiet, or _END; raises
        DEADLINE_EXCEEDED (after closing the stream) when the call's deadline passes."""
        task = ctx.state.get("_pending")
        if task is None:
            task = asyncio.ensure_future(_anext(stream))
            ctx.state["_pending"] = task
        while True:
            wait = ctx.remaining()
            ka = None if first or keepalive is None else ctx.keepalive_interval
            timeout = wait if ka is None else (ka if wait is None else min(ka, wait))
            done, _ = await asyncio.wait({task}, timeout=timeout)
            if done:
                ctx.state.pop("_pending", None)
                return task.result()
            if ctx.remaining() == 0.0:
                ctx.deadline_exceeded = True
                await _cancel_pending(ctx)
                await _aclose(stream)
                raise ConnectError(Code.DEADLINE_EXCEEDED, "the call's deadline passed")
            if ka is not None and keepalive is not None:  # ka is set only with a keepalive
                return keepalive()

    async def _client_stream(self, ctx: CallContext, method: _Method) -> web.StreamResponse:
        async def messages() -> AsyncIterator[Message]:
            async for flags, payload in read_envelopes(ctx.request):
                if flags & FLAG_END_STREAM:
                    return
                yield decode_message(payload, method.request_type)

        try:
            coro = method.handler(ctx, messages())
            remaining = ctx.remaining()
            if remaining is None:
                result = await coro
            else:
                try:
                    result = await asyncio.wait_for(coro, remaining)
                except TimeoutError as err:
                    raise ConnectError(Code.DEADLINE_EXCEEDED, "the call's deadline passed") from err
            body = envelope(encode_message(result)) + end_stream_envelope(None)
        except ConnectError as e:
            body = end_stream_envelope(e)
        except Exception as e:
            log.exception("client-stream handler failed", extra={"procedure": ctx.procedure})
            body = end_stream_envelope(ConnectError(Code.INTERNAL, f"{type(e).__name__}: {e}"))
        return web.Response(status=200, body=body, headers={"Content-Type": STREAM_CONTENT_TYPE})


class _WithStatus(ConnectError):
    def __init__(self, err: ConnectError, status: int):
        super().__init__(err.code, err.message, err.metadata)
        self.status = status

    def response(self) -> web.Response:
        r = error_response(self)
        r.set_status(self.status)
        return r


_END = object()


async def _anext(stream: AsyncIterator[Message]) -> Any:
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return _END


async def _cancel_pending(ctx: CallContext) -> None:
    # Cancelling the pending __anext__ runs the generator's cleanup; aclose() alone would fail
    # with "asynchronous generator is already running".
    task = ctx.state.pop("_pending", None)
    if task is not None and not task.done():
        task.cancel()
        try:
            await task
        except BaseException:
            pass


async def _aclose(stream: AsyncIterator[Message]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except (RuntimeError, Exception):  # already running / closed generators
            pass


def now_ms() -> int:
    return int(time.time() * 1000)
