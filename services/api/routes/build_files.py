"""Build file uploads, as the unmodified E2B SDK's ``Template.build()`` makes them for COPY steps:

- ``GET /templates/{templateID}/files/{hash}`` (API key): whether the caller's team already has
  the archive of that hash, and a signed URL to upload it to (E2B's ``TemplateBuildFileUpload``,
  status 201 as E2B answers it: the SDK reads the body of no other status).
  The URL names this API as the client reached it (scheme and Host), so the SDK's PUT comes back
  to the same listener.
- ``PUT /build-files/{team}/{hash}?template=&expires=&sig=``: the archive (tar, gzip or not). No
  API key (the SDK sends none to a presigned URL): the signature is the authorisation, and it
  names the team, template, hash and expiry the GET granted.
- ``GET /build-files/{team}/{hash}?template=&expires=&sig=&read=1``: the stored archive (a plain
  tar), for the node that runs a build and does not share this API's build files directory. The
  URL is made when the build starts (``read_url``, a read signature: an upload URL does not read)
  and reaches the node with the build's steps only.

The archives themselves belong to services/api/build_files.py. Uploads are streamed (Sanic
``stream=True``): Sanic lifts REQUEST_MAX_SIZE (max_body_bytes) for streaming handlers, so the
cap here is ``build_file_max_bytes``, applied to Content-Length before reading and to the bytes
as they come (a chunked body has no Content-Length).
"""

from __future__ import annotations

import asyncio
import re
from urllib.parse import quote

from sanic import Blueprint, response

from cube_common.build_files import HASH_RE, TEAM_DIR_RE, team_dir
from sdk.gen.cube.v1 import master_pb2 as P
from services.api import models as M
from services.api.build_files import BuildFileError, BuildFiles
from services.api.errors import ApiError, bad_request
from services.api.routes import master_call, template_ref

bp = Blueprint("build_files")

UPLOAD_PREFIX = "/build-files/"
# Body bytes gathered before a write goes to a worker thread: few thread hops, bounded memory.
_FLUSH_BYTES = 1 << 20
# What a Host header may be to be put in a URL we hand back (a name or address, and a port).
_HOST_RE = re.compile(r"^[A-Za-z0-9._~%!$&'()*+,;=:\[\]-]{1,255}\Z")


def is_public(method: str, path: str) -> bool:
    """An upload to, or a node's read of, a signed URL: it carries no API key (auth.py lets it
    through; the signature is checked here)."""
    return method in ("PUT", "GET") and path.startswith(UPLOAD_PREFIX)


def read_url(store: BuildFiles, team_id: str, template_id: str, files_hash: str) -> str:
    """The path and query a node reads the team's archive ``files_hash`` from, for a build of
    ``template_id`` (relative: each node knows where it reaches the API)."""
    expires, sig = store.sign(team_id, template_id, files_hash, read=True)
    return (f"{UPLOAD_PREFIX}{team_dir(team_id)}/{files_hash}"
            f"?template={quote(template_id, safe='')}&expires={expires}&sig={sig}&read=1")


def files_store(app) -> BuildFiles:
    # One store per app, made on first use: the directory is created only when files come.
    store = getattr(app.ctx, "build_files", None)
    if store is None:
        store = app.ctx.build_files = BuildFiles.from_settings(app.ctx.settings)
    return store


@bp.get("/templates/<template_id>/files/<files_hash>")
async def upload_link(request, template_id: str, files_hash: str):
    template_id = template_ref(template_id)
    if not HASH_RE.match(files_hash):
        raise bad_request("the files hash must be 64 lowercase hex digits (sha256)")
    host = request.host
    if not _HOST_RE.match(host or ""):
        raise bad_request("the request's Host header cannot name this API in an upload URL")
    # The caller must see the template (its own, a public one, or one a deferred build reserved).
    t = await master_call(request, "GetTemplate", P.GetTemplateRequest(template=template_id))
    store = files_store(request.app)
    team = request.ctx.caller.team_id
    try:
        team_name = team_dir(team)
    except ValueError as e:
        raise ApiError(500, str(e)) from None
    present = await asyncio.to_thread(store.path, team, files_hash) is not None
    expires, sig = await asyncio.to_thread(store.sign, team, t.template_id, files_hash)
    url = (f"{request.scheme}://{host}{UPLOAD_PREFIX}{team_name}/{files_hash}"
           f"?template={quote(t.template_id, safe='')}&expires={expires}&sig={sig}")
    # 201, not 200: E2B's spec says so, and the SDK parses no other success.
    return response.json({"present": present, "url": url}, status=201)


@bp.get("/build-files/<team>/<files_hash>")
async def read(request, team: str, files_hash: str):
    if not TEAM_DIR_RE.match(team) or not HASH_RE.match(files_hash) or request.args.get("read") != "1":
        raise bad_request("not a build file read URL this API made")
    store = files_store(request.app)
    args = request.args
    try:
        store.verify(team, args.get("template", ""), files_hash, args.get("expires", ""), args.get("sig", ""),
                     read=True)
    except BuildFileError as e:
        raise ApiError(e.status, e.message) from None
    path = await asyncio.to_thread(store.path, team, files_hash)  # team_dir of a directory name is itself
    if path is None:
        raise ApiError(404, f"build file {files_hash} is no longer stored; upload it again")
    return await response.file_stream(path, mime_type="application/x-tar", headers={
        "Content-Length": str(path.stat().st_size)})


@bp.put("/build-files/<team>/<files_hash>", stream=True)
async def upload(request, team: str, files_hash: str):
    if not TEAM_DIR_RE.match(team) or not HASH_RE.match(files_hash):
        raise bad_request("not an upload URL this API made")
    store = files_store(request.app)
    args = request.args
    try:
        store.verify(team, args.get("template", ""), files_hash, args.get("expires", ""), args.get("sig", ""))
        declared = M.content_length(request)
        up = await asyncio.to_thread(store.begin, team, files_hash, declared)
    except BuildFileError as e:
        raise ApiError(e.status, e.message) from None
    try:
        buf = bytearray()
        while (chunk := await request.stream.read()) is not None:
            buf += chunk
            if len(buf) >= _FLUSH_BYTES:
                await asyncio.to_thread(up.write, bytes(buf))
                buf.clear()
        if buf:
            await asyncio.to_thread(up.write, bytes(buf))
        await asyncio.to_thread(up.commit)
    except BuildFileError as e:
        up.abort()
        raise ApiError(e.status, e.message) from None
    except BaseException:
        # The client went away (cancellation) or Sanic refused the body: no partial file stays.
        up.abort()
        raise
    return response.empty(status=201)
