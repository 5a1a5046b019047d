"""Plain-HTTP envd endpoints: `GET/POST /files` (streamed both ways), `GET /health`,
`POST /init`, `GET /envs`. Errors are JSON `{"code": <http status>, "message": ...}`.

An upload does what upstream's envd does, in its order, because watchers see every step (the
SDK's own tests count the events of a create-then-write): missing parents are made and chowned
to the user one by one; a new file is created, then chowned (CREATE, CHMOD); an existing one is
chowned, then truncated (CHMOD, WRITE); then the data (WRITE) and the file's metadata set, which
replaces the previous upload's (`X-Metadata-*`, stored as `user.e2b.*` xattrs). Unlike upstream,
whose envd runs everything as root, every step runs as the user, so the kernel's permission
checks apply and a chown the user may not make is skipped.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import posixpath
import re
import stat
from urllib.parse import unquote

from aiohttp import web
from aiohttp.multipart import BodyPartReader, MultipartReader

from . import users
from .auth import resolve_user
from .connect import ConnectError
from .entries import (
    ensure_dirs,
    read_metadata,
    replace_metadata,
    resolve_path,
    take_ownership,
    validate_metadata,
)
from .identity import Identity, InitError, InitRequest, SignatureRejected
from .users import User, run_as

log = logging.getLogger("envd.files")

CHUNK = 1024 * 1024
METADATA_HEADER_PREFIX = "x-metadata-"


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def json_error(status: int, message: str) -> web.Response:
    return web.json_response({"code": status, "message": message}, status=status)


def _http_from_os(e: OSError, path: str) -> HttpError:
    if e.errno == errno.ENOENT:
        return HttpError(404, f"path '{path}' does not exist")
    if e.errno == errno.EISDIR:
        return HttpError(400, f"path '{path}' is a directory")
    if e.errno == errno.ENOTDIR:
        return HttpError(400, f"a component of path '{path}' is not a directory")
    if e.errno in (errno.EACCES, errno.EPERM):
        return HttpError(403, f"permission denied: '{path}'")
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return HttpError(507, f"not enough disk space to write '{path}'")
    if e.errno == errno.ENAMETOOLONG:
        return HttpError(400, f"path '{path}' is too long")
    return HttpError(500, f"{path}: {e.strerror or e}")


def _open_for_read(path: str) -> tuple[int, int]:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    st = os.fstat(fd)
    if stat.S_ISDIR(st.st_mode):
        os.close(fd)
        raise IsADirectoryError(errno.EISDIR, "is a directory", path)
    return fd, st.st_size


def _open_for_write(path: str, user: User) -> int:
    """The upload's file, created or emptied, owned by the user where the kernel allows it (see
    the module docstring for the order of the steps). Runs as the user."""
    ensure_dirs(posixpath.dirname(path), user)
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "is a directory", path)
    try:
        fd, existed = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666), False
    except FileExistsError:
        try:
            fd, existed = os.open(path, os.O_WRONLY | os.O_CLOEXEC), True
        except FileNotFoundError:  # a dangling link (the file is created through it), or just removed
            fd, existed = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666), False
    try:
        take_ownership(fd, user)
        # After the chown, as upstream's O_TRUNC comes after its chown; O_TRUNC ignores what is no
        # regular file (/dev/null), ftruncate would refuse it.
        if existed and stat.S_ISREG(os.fstat(fd).st_mode):
            os.ftruncate(fd, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class FilesHttp:
    def __init__(self, identity: Identity) -> None:
        self.identity = identity

    def install(self, app: web.Application) -> None:
        app.router.add_get("/health", self.health)
        app.router.add_get("/files", self.download)
        app.router.add_post("/files", self.upload)
        app.router.add_post("/init", self.init)
        app.router.add_get("/envs", self.envs)

    # -- auth ---------------------------------------------------------------------------------

    def _authorize_files(self, request: web.Request, operation: str) -> User:
        """The header token or a signed URL, checked as upstream does: a header that is present
        must match (a signature does not make up for a wrong one), and a signature is checked
        before its expiry, each failure with upstream's own 401 message."""
        q = request.query
        username = q.get("username") or None
        if self.identity.token_required():
            header = request.headers.get("X-Access-Token")
            if header:
                if not self.identity.token_ok(header):
                    raise HttpError(401, "access token present in header but does not match")
            else:
                try:
                    self.identity.check_signature(q.get("path", ""), operation, username, q.get("signature"),
                                                  q.get("signature_expiration"))
                except SignatureRejected as e:
                    raise HttpError(e.status, e.message) from None
        try:
            return resolve_user(self.identity, username)
        except users.UnknownUser as e:
            raise HttpError(401, f"invalid username: '{username}'") from e

    def _path(self, raw: str, user: User) -> str:
        try:
            return resolve_path(raw, user)
        except ConnectError as e:
            raise HttpError(400, e.message) from e

    # -- endpoints ----------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def envs(self, request: web.Request) -> web.Response:
        return web.json_response(self.identity.env_vars)

    async def init(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read() or b"{}")
            req = InitRequest.from_json(body)
        except (ValueError, InitError) as e:
            return json_error(400, f"invalid init request: {e}")
        if req.default_user:
            try:
                users.lookup(req.default_user)
            except users.UnknownUser:
                return json_error(400, f"defaultUser '{req.default_user}' does not exist")
        self.identity.apply(req)
        return web.Response(status=204)

    async def download(self, request: web.Request) -> web.StreamResponse:
        try:
            user = self._authorize_files(request, "read")
            raw = request.query.get("path")
            if not raw:
                raise HttpError(400, "query parameter 'path' is required")
            path = self._path(raw, user)
            try:
                fd, size = await run_as(user, _open_for_read, path)
            except OSError as e:
                raise _http_from_os(e, path) from e
        except HttpError as e:
            return json_error(e.status, e.message)

        loop = asyncio.get_running_loop()
        try:
            resp = web.StreamResponse(status=200)
            resp.content_type = "application/octet-stream"
            resp.content_length = size
            name = posixpath.basename(path).replace('"', "")
            resp.headers["Content-Disposition"] = f'attachment; filename="{name}"'
            await resp.prepare(request)
            sent = 0
            while sent < size:
                chunk = await loop.run_in_executor(users.FS_POOL, os.read, fd, min(CHUNK, size - sent))
                if not chunk:
                    break  # truncated while being read; the client sees a short body
                await resp.write(chunk)
                sent += len(chunk)
            await resp.write_eof()
            return resp
        finally:
            os.close(fd)

    async def upload(self, request: web.Request) -> web.Response:
        try:
            user = self._authorize_files(request, "write")
            metadata = _metadata_headers(request)
            if (problem := validate_metadata(metadata)) is not None:
                raise HttpError(400, f"invalid metadata: {problem}")
            path_param = request.query.get("path") or None
            written = []
            if request.content_type.startswith("multipart/"):
                reader = await request.multipart()
                async for part in _file_parts(reader):
                    raw = path_param or raw_filename(part.headers.get("Content-Disposition", ""))
                    if not raw:
                        raise HttpError(400, "a file part needs a filename or the 'path' parameter")
                    path = self._path(raw, user)
                    persisted = await self._write(user, path, _part_chunks(part), metadata)
                    written.append(self._written(path, persisted))
            else:
                if not path_param:
                    raise HttpError(400, "query parameter 'path' is required for a raw upload")
                path = self._path(path_param, user)
                persisted = await self._write(user, path, request.content.iter_chunked(CHUNK), metadata)
                written.append(self._written(path, persisted))
            if not written:
                raise HttpError(400, "no file in the upload")
            return web.json_response(written)
        except HttpError as e:
            return json_error(e.status, e.message)
        except ValueError as e:  # malformed multipart bodies surface as ValueError in aiohttp
            return json_error(400, f"malformed upload: {e}")

    @staticmethod
    def _written(path: str, metadata: dict[str, str]) -> dict[str, str | dict[str, str]]:
        out: dict[str, str | dict[str, str]] = {"name": posixpath.basename(path), "type": "file", "path": path}
        if metadata:
            out["metadata"] = metadata
        return out

    async def _write(self, user: User, path: str, chunks, metadata: dict[str, str]) -> dict[str, str]:
        """Writes one file; returns the metadata it has now (read back, as upstream answers)."""
        loop = asyncio.get_running_loop()
        try:
            fd = await run_as(user, _open_for_write, path, user)
        except OSError as e:
            raise _http_from_os(e, path) from e
        try:
            async for chunk in chunks:
                if chunk:
                    await loop.run_in_executor(users.FS_POOL, _write_all, fd, chunk)
            try:
                await loop.run_in_executor(users.FS_POOL, replace_metadata, fd, metadata)
            except OSError as e:
                if e.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
                # Virtual filesystems (/proc, /sys) have no xattrs: there is nothing to clear, and
                # metadata asked for is lost while the data is written (upstream does the same).
                if metadata:
                    log.warning("no xattrs on this filesystem; metadata not kept", extra={"path": path})
            return await loop.run_in_executor(users.FS_POOL, read_metadata, fd)
        except OSError as e:
            raise _http_from_os(e, path) from e
        finally:
            os.close(fd)


def _metadata_headers(request: web.Request) -> dict[str, str]:
    """`X-Metadata-<key>: <value>` headers as upstream reads them: keys lower-cased, the first
    value of a repeated header."""
    out: dict[str, str] = {}
    for name, value in request.headers.items():
        if name.lower().startswith(METADATA_HEADER_PREFIX) and len(name) > len(METADATA_HEADER_PREFIX):
            out.setdefault(name[len(METADATA_HEADER_PREFIX):].lower(), value)
    return out


async def _file_parts(reader: MultipartReader):
    """File parts of a multipart body, nested multiparts flattened; other fields skipped."""
    while True:
        try:
            part = await reader.next()
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as e:  # aiohttp raises assorted types for a malformed body
            raise HttpError(400, f"malformed multipart body: {e or type(e).__name__}") from e
        if part is None:
            return
        if isinstance(part, MultipartReader):
            async for inner in _file_parts(part):
                yield inner
            continue
        assert isinstance(part, BodyPartReader)
        if raw_filename(part.headers.get("Content-Disposition", "")) is None and part.name != "file":
            await part.release()
            continue
        yield part


_DISPOSITION_PARAM = re.compile(
    r""";\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+\*?)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)"""
)


def raw_filename(header: str) -> str | None:
    """The `filename` of a Content-Disposition header exactly as sent, directories included.
    aiohttp's own parser strips leading slashes, and the SDK puts the destination path there."""
    params: dict[str, str] = {}
    for key, value in _DISPOSITION_PARAM.findall(header):
        value = value.strip()
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params.setdefault(key.lower(), value)
    if "filename*" in params:
        charset, _, rest = params["filename*"].partition("'")
        _lang, _, encoded = rest.partition("'")
        try:
            return unquote(encoded, charset or "utf-8", "strict")
        except (LookupError, UnicodeDecodeError):
            pass
    return params.get("filename") or None


async def _part_chunks(part: BodyPartReader):
    while True:
        chunk = await part.read_chunk(CHUNK)
        if not chunk:
            return
        yield chunk
