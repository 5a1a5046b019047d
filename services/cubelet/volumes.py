"""The node's volumes: ext4 images under ``<state>/cubelet/volumes/<team>/<volume_id>.ext4``.

Rules common to every service are in cube_common/volumes.py; what is this module's:

Invariants:
- One owner of "who mounts what": the sandbox records (SandboxManager); this store asks it
  (``mounted_by``) and keeps no second copy.
- Every operation on a volume's image (create, delete, content calls, and a sandbox taking it)
  holds the volume's lock, so a content call never writes an image a QEMU has opened, and a
  sandbox never opens one a content call is writing.
- The host never mounts an image (its filesystem was written by untrusted guests): content calls
  go through e2fsprogs' debugfs in a subprocess (volume_fs.py).
- Images and their directories are root's, 0600/0700: a volume is its team's data. A jailed QEMU
  gets the one image it mounts bound into its jail, chowned to its uid while it runs.
- Nothing partial is left: an image is made under a temporary name and renamed; an upload is
  written to a private temporary file that is removed whatever happens.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Generator
from contextlib import asynccontextmanager
from pathlib import Path

from cube_common.teams import TEAM_ID_RE
from cube_common.volumes import ID_RE, VolumeRuleError, normalize_path
from sdk.gen.cube.v1 import cubelet_pb2 as pb

from .keyed_locks import KeyedLocks
from .settings import CubeletSettings
from .volume_fs import VolumeFs, VolumeFsError

log = logging.getLogger("cubelet.volumes")

MIN_SIZE = 16 << 20
MAX_SIZE = 1 << 40
CHUNK = 1 << 20
LABEL = "cube-vol"
VOLUME_ROOT_OWNER = "1000:1000"  # the templates' default user (E2B's `user`) writes the volume's root


class VolumeError(Exception):
    """A refusal with the gRPC status the caller should see."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class VolumeStore:
    def __init__(self, settings: CubeletSettings, mounted_by: Callable[[str], str | None]) -> None:
        self.settings = settings
        self.root = settings.cubelet_dir / "volumes"
        self.mounted_by = mounted_by
        self.locks = KeyedLocks()
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)

    # ---- paths and checks --------------------------------------------------------------------

    def image(self, team_id: str, volume_id: str) -> Path:
        if not ID_RE.fullmatch(volume_id or ""):
            raise VolumeError("INVALID_ARGUMENT", f"invalid volume id {volume_id!r}")
        if not TEAM_ID_RE.match(team_id or ""):
            raise VolumeError("INVALID_ARGUMENT", f"invalid team id {team_id!r}")
        return self.root / team_id / f"{volume_id}.ext4"

    def existing(self, team_id: str, volume_id: str) -> Path:
        path = self.image(team_id, volume_id)
        if not path.is_file():
            raise VolumeError("NOT_FOUND", f"volume {volume_id} is not on node {self.settings.node_id}")
        return path

    @asynccontextmanager
    async def hold(self, volume_ids: list[str]) -> AsyncIterator[None]:
        """The locks of these volumes, taken in one order so two holders never deadlock."""
        async with contextlib.AsyncExitStack() as held:
            for vid in sorted(set(volume_ids)):
                await held.enter_async_context(self.locks.hold(vid))
            yield

    def _refuse_mounted(self, volume_id: str) -> None:
        sid = self.mounted_by(volume_id)
        if sid is not None:
            raise VolumeError("FAILED_PRECONDITION",
                              f"volume {volume_id} is mounted by sandbox {sid}: its guest owns the filesystem "
                              "until the sandbox is killed")

    # ---- lifecycle ---------------------------------------------------------------------------

    async def create(self, req: pb.NodeVolumeRequest) -> pb.NodeVolume:
        path = self.image(req.team_id, req.volume_id)
        size = req.size_bytes
        if not MIN_SIZE <= size <= MAX_SIZE:
            raise VolumeError("INVALID_ARGUMENT", f"volume size must be {MIN_SIZE >> 20} MiB to {MAX_SIZE >> 30} GiB")
        free = shutil.disk_usage(self.settings.state_dir).free
        if free - (self.settings.min_free_disk_mb << 20) < 64 << 20:
            raise VolumeError("RESOURCE_EXHAUSTED", f"node {self.settings.node_id} has {free >> 20} MiB free under "
                                                    f"{self.settings.state_dir}, below its watermark")
        async with self.hold([req.volume_id]):
            if path.exists():
                raise VolumeError("ALREADY_EXISTS", f"volume {req.volume_id} exists on this node")
            await asyncio.to_thread(self._make, path, size)
        log.info("volume created", extra={"volume_id": req.volume_id, "team_id": req.team_id, "size": size})
        return self._info(req.volume_id, path)

    def _make(self, path: Path, size: int) -> None:
        path.parent.mkdir(mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".new-", suffix=".ext4", dir=path.parent)
        try:
            os.ftruncate(fd, size)  # sparse: an empty volume costs its metadata, not its size
            os.close(fd)
            fd = -1
            r = subprocess.run(["mkfs.ext4", "-q", "-F", "-L", LABEL, "-E",
                                f"root_owner={VOLUME_ROOT_OWNER},lazy_itable_init=1,nodiscard", tmp],
                               capture_output=True, text=True, timeout=120)
            if r.returncode != 0:
                raise VolumeError("INTERNAL", f"mkfs.ext4: {(r.stderr or r.stdout).strip()[-300:]}")
            os.chmod(tmp, 0o600)
            os.rename(tmp, path)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            Path(tmp).unlink(missing_ok=True)
            raise

    def _info(self, volume_id: str, path: Path) -> pb.NodeVolume:
        st = path.stat()
        return pb.NodeVolume(volume_id=volume_id, size_bytes=st.st_size, used_bytes=st.st_blocks * 512)

    async def delete(self, req: pb.NodeVolumeRequest) -> bool:
        path = self.image(req.team_id, req.volume_id)
        async with self.hold([req.volume_id]):
            self._refuse_mounted(req.volume_id)
            try:
                path.unlink()
            except FileNotFoundError:
                return False
        log.info("volume deleted", extra={"volume_id": req.volume_id, "team_id": req.team_id})
        return True

    # ---- content (volumes no sandbox mounts) -------------------------------------------------

    def _fs(self, req: pb.VolumeContentRequest) -> tuple[VolumeFs, str]:
        path = self.existing(req.team_id, req.volume_id)
        try:
            inner = normalize_path(req.path)
        except VolumeRuleError as e:
            raise VolumeError("INVALID_ARGUMENT", str(e)) from None
        return VolumeFs(path), inner

    async def content(self, req: pb.VolumeContentRequest) -> pb.VolumeContentResponse:
        async with self.hold([req.volume_id]):
            fs, path = self._fs(req)
            self._refuse_mounted(req.volume_id)
            uid = req.uid if req.HasField("uid") else None
            gid = req.gid if req.HasField("gid") else None
            mode = req.mode if req.HasField("mode") else None
            op = req.op
            try:
                if op == pb.VOLUME_OP_STAT:
                    entries = [await asyncio.to_thread(fs.stat, path)]
                elif op == pb.VOLUME_OP_LIST:
                    entries = await asyncio.to_thread(fs.list, path, max(1, req.depth))
                elif op == pb.VOLUME_OP_MAKE_DIR:
                    entries = [await asyncio.to_thread(fs.make_dir, path, uid, gid, mode, req.force)]
                elif op == pb.VOLUME_OP_UPDATE_METADATA:
                    entries = [await asyncio.to_thread(fs.update_metadata, path, uid, gid, mode)]
                elif op == pb.VOLUME_OP_REMOVE:
                    await asyncio.to_thread(fs.remove, path)
                    entries = []
                else:
                    raise VolumeError("INVALID_ARGUMENT", f"operation {pb.VolumeOp.Name(op)} is not a content call")
            except VolumeFsError as e:
                raise VolumeError(e.code.name, str(e)) from None
        return pb.VolumeContentResponse(entries=entries)

    async def read_file(self, req: pb.VolumeContentRequest) -> AsyncIterator[pb.VolumeFileChunk]:
        """The file's entry, then its bytes. The lock is held until the last chunk went out."""
        async with self.hold([req.volume_id]):
            fs, path = self._fs(req)
            self._refuse_mounted(req.volume_id)
            try:
                entry = await asyncio.to_thread(fs.stat, path)
                if entry.type != pb.VOLUME_ENTRY_TYPE_FILE:
                    raise VolumeError("INVALID_ARGUMENT", f"{path} is not a regular file")
                chunks: Generator[bytes, None, None] = await asyncio.to_thread(fs.read_file, path, CHUNK)
                try:
                    yield pb.VolumeFileChunk(entry=entry)
                    while (data := await asyncio.to_thread(next, chunks, b"")):
                        yield pb.VolumeFileChunk(data=data)
                finally:  # a reader that went away: debugfs goes too
                    await asyncio.to_thread(chunks.close)
            except VolumeFsError as e:
                raise VolumeError(e.code.name, str(e)) from None

    async def write_file(self, first: pb.VolumeContentRequest, rest: AsyncIterator[bytes]) -> pb.VolumeEntry:
        """Takes the upload into a private temporary file (bounded by the image's size), then
        writes it into the image in one go under the lock."""
        image = self.existing(first.team_id, first.volume_id)
        limit = image.stat().st_size
        fd, tmp = tempfile.mkstemp(prefix=".upload-", dir=image.parent)
        try:
            size = 0
            with os.fdopen(fd, "wb") as f:
                async for data in rest:
                    size += len(data)
                    if size > limit:
                        raise VolumeError("INVALID_ARGUMENT", f"the file is larger than the volume ({limit} bytes)")
                    await asyncio.to_thread(f.write, data)
            async with self.hold([first.volume_id]):
                fs, path = self._fs(first)
                self._refuse_mounted(first.volume_id)
                try:
                    return await asyncio.to_thread(
                        fs.write_file, path, Path(tmp), first.uid if first.HasField("uid") else None,
                        first.gid if first.HasField("gid") else None,
                        first.mode if first.HasField("mode") else None, first.force)
                except VolumeFsError as e:
                    raise VolumeError(e.code.name, str(e)) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

