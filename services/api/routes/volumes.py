"""E2B volumes (persistent storage a sandbox mounts), as the unmodified SDKs call them.

Two kinds of routes:

- ``/volumes`` (API key, the caller's team, like every other resource): create, list, get,
  delete. A volume's body carries its content token and ``domain``: the SDK sends content calls
  to ``https://api.<domain>`` with that token, so ``domain`` is always this API's sandbox domain
  (settings.domain, never one of E2B's: the token would go to E2B's cloud). The node's proxy
  routes ``api.<domain>/volumecontent/...`` here.
- ``/volumecontent/{volumeID}/...`` (``Authorization: Bearer <volume token>``, no API key:
  auth.py lets exactly these paths through and keeps the token in ``request.ctx.volume_token``):
  directory listings, stat, mkdir, metadata, remove, and the file's bytes both ways. The master
  checks the token (VolumeContentRequest.token); the API calls it as itself, without a team.

Every query input is checked and bounded here (400, E2B's error body) before the master sees it.
File bodies stream both ways: a read is relayed chunk by chunk from ReadVolumeFile, an upload
(Sanic ``stream=True``, which lifts REQUEST_MAX_SIZE) chunk by chunk to WriteVolumeFile, capped at
``volume_file_max_bytes`` by its Content-Length before anything is sent and by the bytes as they
come (the volume's own filesystem bounds it further: the node answers RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

import asyncio

import grpc
import grpc.aio
from google.protobuf.timestamp_pb2 import Timestamp
from sanic import Blueprint, response

from sdk.gen.cube.v1 import cubelet_pb2 as C, master_pb2 as P
from services.api import models as M
from services.api.errors import ApiError, bad_request, from_grpc
from services.api.log import get_logger
from services.api.routes import master_call

bp = Blueprint("volumes")
log = get_logger("volumes")

CONTENT_PREFIX = "/volumecontent/"
MAX_DEPTH = 16
MAX_ID = 255  # a volume id or name from a path: longer is no volume of ours
MAX_UID = 2**32 - 2  # (uint32)-1 is "no change" to chown, never an owner
MAX_MODE = 0o7777
MAX_TOKEN = 512
# Upload bytes gathered into one WriteVolumeFile message (well under gRPC's 4 MiB message cap).
_CHUNK = 256 << 10

_EOF = grpc.aio.EOF  # type: ignore[attr-defined]  # the stubs lack it
_TYPES = {C.VOLUME_ENTRY_TYPE_FILE: "file", C.VOLUME_ENTRY_TYPE_DIRECTORY: "directory",
          C.VOLUME_ENTRY_TYPE_SYMLINK: "symlink"}


def is_content(path: str) -> bool:
    """A content route: authorised by the volume's bearer token, not an API key (auth.py)."""
    return path.startswith(CONTENT_PREFIX)


# ---- bodies -----------------------------------------------------------------------------------

def volume_body(v: P.Volume, domain: str) -> dict:
    """E2B's VolumeAndToken."""
    return {"volumeID": v.volume_id, "name": v.name, "token": v.token, "domain": domain}


def _time(t: Timestamp) -> str:
    # Microseconds at most: every RFC 3339 parser the SDKs use reads six fraction digits.
    out = Timestamp(seconds=t.seconds, nanos=t.nanos - t.nanos % 1000)
    return out.ToJsonString()


def entry_body(e: C.VolumeEntry) -> dict:
    """E2B's VolumeEntryStat."""
    out = {"name": e.name, "type": _TYPES.get(e.type, "unknown"), "path": e.path, "size": e.size,
           "mode": e.mode, "uid": e.uid, "gid": e.gid, "atime": _time(e.atime), "mtime": _time(e.mtime),
           "ctime": _time(e.ctime)}
    if e.type == C.VOLUME_ENTRY_TYPE_SYMLINK or e.target:
        out["target"] = e.target
    return out


# ---- inputs -----------------------------------------------------------------------------------

def _ref(raw: str) -> str:
    """A volume id (or name) from the URL path; one too long to be ours is simply not found."""
    if not raw or len(raw) > MAX_ID:
        raise ApiError(404, "volume not found")
    return raw


def _path(args) -> str:
    raw = args.get("path")
    if raw is None:
        raise bad_request("query parameter 'path' is required")
    return M.volume_path(raw)


def _args(request):
    # Blank values kept: `depth=` is no number and is refused, not taken as absent.
    return request.get_args(keep_blank_values=True)


def _bool(args, key: str) -> bool:
    v = args.get(key)
    if v is None:
        return False
    if v.lower() not in ("true", "false"):
        raise bad_request(f"query parameter '{key}' must be true or false")
    return v.lower() == "true"


def _owner_mode(req: C.VolumeContentRequest, source, from_query: bool) -> None:
    """uid, gid and mode from the query (mkdir, upload) or a JSON body (metadata update)."""
    for key, hi in (("uid", MAX_UID), ("gid", MAX_UID), ("mode", MAX_MODE)):
        n = M.query_int(source, key, 0, hi) if from_query else M.opt_int(source, key, 0, hi)
        if n is not None:
            setattr(req, key, n)


def _content_request(request, volume_id: str, op: C.VolumeOp, **fields) -> C.VolumeContentRequest:
    return C.VolumeContentRequest(volume_id=_ref(volume_id), token=request.ctx.volume_token, op=op, **fields)


async def _content(request, req: C.VolumeContentRequest) -> C.VolumeContentResponse:
    try:
        return await request.app.ctx.master.call("VolumeContent", req, None)
    except grpc.RpcError as e:
        raise from_grpc(e) from None


# ---- volumes (API key) ------------------------------------------------------------------------

@bp.post("/volumes")
async def create_volume(request):
    body = M.parse_body(request.body)
    name = body.get("name")
    if not isinstance(name, str):
        raise bad_request("'name' is required (a string)")
    v = await master_call(request, "CreateVolume", P.CreateVolumeRequest(name=M.volume_name(name)))
    return response.json(volume_body(v, request.app.ctx.settings.domain), status=201)


@bp.get("/volumes")
async def list_volumes(request):
    resp = await master_call(request, "ListVolumes", P.ListVolumesRequest())
    return response.json([{"volumeID": v.volume_id, "name": v.name} for v in resp.volumes])


@bp.get("/volumes/<volume_id>")
async def get_volume(request, volume_id: str):
    v = await master_call(request, "GetVolume", P.GetVolumeRequest(volume_id=_ref(volume_id)))
    return response.json(volume_body(v, request.app.ctx.settings.domain))


@bp.delete("/volumes/<volume_id>")
async def delete_volume(request, volume_id: str):
    await master_call(request, "DeleteVolume", P.DeleteVolumeRequest(volume_id=_ref(volume_id)))
    return response.empty(status=204)


# ---- content (volume token) -------------------------------------------------------------------

@bp.get("/volumecontent/<volume_id>/dir")
async def list_dir(request, volume_id: str):
    args = _args(request)
    depth = M.query_int(args, "depth", 1, MAX_DEPTH) or 1
    resp = await _content(request, _content_request(request, volume_id, C.VOLUME_OP_LIST, path=_path(args),
                                                    depth=depth))
    return response.json([entry_body(e) for e in resp.entries])


@bp.post("/volumecontent/<volume_id>/dir")
async def make_dir(request, volume_id: str):
    args = _args(request)
    req = _content_request(request, volume_id, C.VOLUME_OP_MAKE_DIR, path=_path(args), force=_bool(args, "force"))
    _owner_mode(req, args, from_query=True)
    resp = await _content(request, req)
    return response.json(_one(resp), status=201)


@bp.get("/volumecontent/<volume_id>/path")
async def stat_path(request, volume_id: str):
    req = _content_request(request, volume_id, C.VOLUME_OP_STAT, path=_path(_args(request)))
    resp = await _content(request, req)
    return response.json(_one(resp))


@bp.patch("/volumecontent/<volume_id>/path")
async def update_metadata(request, volume_id: str):
    req = _content_request(request, volume_id, C.VOLUME_OP_UPDATE_METADATA, path=_path(_args(request)))
    _owner_mode(req, M.parse_body(request.body, required=False), from_query=False)
    resp = await _content(request, req)
    return response.json(_one(resp))


@bp.delete("/volumecontent/<volume_id>/path")
async def remove_path(request, volume_id: str):
    req = _content_request(request, volume_id, C.VOLUME_OP_REMOVE, path=_path(_args(request)))
    if req.path == "/":
        raise bad_request("the volume's root directory cannot be removed")
    await _content(request, req)
    return response.empty(status=204)


def _one(resp: C.VolumeContentResponse) -> dict:
    if not resp.entries:
        raise ApiError(500, "the node answered no entry")
    return entry_body(resp.entries[0])


@bp.get("/volumecontent/<volume_id>/file")
async def read_file(request, volume_id: str):
    req = _content_request(request, volume_id, C.VOLUME_OP_READ_FILE, path=_path(_args(request)))
    settings = request.app.ctx.settings
    call = request.app.ctx.master.stream("ReadVolumeFile", None, settings.volume_file_timeout_s, req)
    try:
        # The first message (it carries the entry) before any header goes out: a missing file
        # or a wrong token is still a proper status.
        try:
            first = await call.read()
        except grpc.RpcError as e:
            raise from_grpc(e) from None
        if first is _EOF:
            raise ApiError(500, "the node sent no file")
        if first.HasField("entry") and first.entry.type != C.VOLUME_ENTRY_TYPE_FILE:
            raise ApiError(409, f"{req.path!r} is not a regular file")
        resp = await request.respond(content_type="application/octet-stream")
        if first.data:
            await resp.send(first.data)
        while (msg := await call.read()) is not _EOF:
            if msg.data:
                await resp.send(msg.data)
        await resp.eof()
    except grpc.RpcError as e:
        # Mid-body: the status is gone; the unterminated chunked body tells the client.
        log.warning("volume file read failed mid-body", extra={"volume_id": req.volume_id, "error": str(e)})
        raise
    finally:
        if not call.done():
            call.cancel()
    return None


@bp.put("/volumecontent/<volume_id>/file", stream=True)
async def write_file(request, volume_id: str):
    args = _args(request)
    req = _content_request(request, volume_id, C.VOLUME_OP_WRITE_FILE, path=_path(args), force=_bool(args, "force"))
    _owner_mode(req, args, from_query=True)
    if req.path == "/":
        raise bad_request("the volume's root directory is not a file")
    settings = request.app.ctx.settings
    cap = settings.volume_file_max_bytes
    declared = M.content_length(request)
    if declared is not None and declared > cap:
        raise ApiError(413, f"the file is {declared} bytes; at most {cap} are accepted")
    # The token, the volume and that no sandbox mounts it, checked before any byte goes: a stream
    # the master ends early loses its status on this side (gRPC reports INTERNAL for the write).
    await _content(request, C.VolumeContentRequest(volume_id=req.volume_id, token=req.token, op=C.VOLUME_OP_STAT,
                                                   path="/"))
    call = request.app.ctx.master.stream("WriteVolumeFile", None, settings.volume_file_timeout_s)
    try:
        await _write(call, C.VolumeFileChunk(request=req))
        total = 0
        buf = bytearray()
        while (chunk := await request.stream.read()) is not None:
            total += len(chunk)
            if total > cap:
                raise ApiError(413, f"the file is over {cap} bytes")
            buf += chunk
            while len(buf) >= _CHUNK:
                await _write(call, C.VolumeFileChunk(data=bytes(buf[:_CHUNK])))
                del buf[:_CHUNK]
        await _write(call, C.VolumeFileChunk(data=bytes(buf), eof=True))  # the whole body arrived
        await call.done_writing()
        entry = await call
    except grpc.RpcError as e:
        raise from_grpc(e) from None
    finally:
        if not call.done():
            # A cap, a client gone: cancelled, never half-closed, so the file is not complete.
            # (gRPC ends the master's request stream normally on a cancel; it must not commit one.)
            call.cancel()
    return response.json(entry_body(entry), status=201)


async def _write(call, msg: C.VolumeFileChunk) -> None:
    try:
        await call.write(msg)
    except asyncio.InvalidStateError:
        await call  # the master already answered (an error): raises it
        raise ApiError(500, "the master ended the upload early") from None
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.INTERNAL:
            raise
        # The master answered while this message was on its way; gRPC keeps no status then.
        raise ApiError(500, "the master ended the upload early: the volume may be full, or now mounted by a "
                            "sandbox") from None
