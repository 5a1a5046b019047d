"""A stand-in guest server for proxy tests and the benchmark (aiohttp, HTTP/1.1).

    python -m testkit.upstream HOST PORT [CERT KEY]

It listens on the one address it is given (the harness gives it loopback ones) and keeps no state;
with CERT and KEY (PEM files) it serves HTTPS instead of HTTP.

GET  /echo           JSON: method, path (with query), host, headers, the address it listens on,
                     whether the request came over TLS
POST /upload         reads the body as it streams; JSON: bytes, sha256, whether it came chunked
GET  /download?mb=N  N MiB of a fixed pattern, streamed in 1 MiB writes (Content-Length set)
GET  /ndjson?n=&gap= n NDJSON lines, `gap` seconds apart (the response starts at once)
GET  /small          a 2-byte body (latency benchmark)
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl
import sys

from aiohttp import web

PATTERN = bytes(range(256)) * 4096  # 1 MiB


async def echo(request: web.Request) -> web.Response:
    return web.json_response({
        "method": request.method, "path": request.path_qs, "host": request.host,
        "headers": {k.lower(): v for k, v in request.headers.items()},
        "me": request.app["me"], "secure": request.secure,
    })


async def upload(request: web.Request) -> web.Response:
    h = hashlib.sha256()
    n = 0
    async for chunk in request.content.iter_any():
        h.update(chunk)
        n += len(chunk)
    return web.json_response({"bytes": n, "sha256": h.hexdigest(),
                              "chunked": request.headers.get("Transfer-Encoding", "").lower() == "chunked"})


async def download(request: web.Request) -> web.StreamResponse:
    mb = int(request.query.get("mb", "1"))
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    resp.content_length = mb * len(PATTERN)
    await resp.prepare(request)
    for _ in range(mb):
        await resp.write(PATTERN)
    await resp.write_eof()
    return resp


async def ndjson(request: web.Request) -> web.StreamResponse:
    n = int(request.query.get("n", "3"))
    gap = float(request.query.get("gap", "1"))
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)
    loop = asyncio.get_running_loop()
    for i in range(n):
        if i:
            await asyncio.sleep(gap)
        await resp.write(json.dumps({"i": i, "t": loop.time()}).encode() + b"\n")
    await resp.write_eof()
    return resp


async def small(request: web.Request) -> web.Response:
    return web.Response(body=b"ok")


def make_app(me: str) -> web.Application:
    app = web.Application(client_max_size=1 << 40)
    app["me"] = me
    app.router.add_get("/echo", echo)
    app.router.add_route("*", "/echo/{tail:.*}", echo)
    app.router.add_post("/upload", upload)
    app.router.add_get("/download", download)
    app.router.add_get("/ndjson", ndjson)
    app.router.add_get("/small", small)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    tls = None
    if len(sys.argv) == 5:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(sys.argv[3], sys.argv[4])
    web.run_app(make_app(f"{host}:{port}"), host=host, port=port, ssl_context=tls, print=None, access_log=None)


if __name__ == "__main__":
    main()
