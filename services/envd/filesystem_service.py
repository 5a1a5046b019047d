"""The `filesystem.Filesystem` Connect service. Every file operation runs with the file identity
of the user the request acts as (`users.run_as`)."""

from __future__ import annotations

import asyncio
import os
import posixpath
import shutil
import stat
import uuid
from collections.abc import AsyncIterator

from .auth import rpc_user
from .connect import CallContext, Code, ConnectError, ConnectRouter
from .entries import ensure_dirs, entry_info, list_dir, os_error, resolve_path
from .gen import filesystem_pb2 as pb
from .identity import Identity
from .users import User, run_as
from .watcher import DirectoryWatcher, FsEvent

# Polling watchers (CreateWatcher) that nobody polls for this long are dropped.
WATCHER_IDLE_TTL_S = 600.0


def _stat_entry(path: str) -> pb.EntryInfo:
    return entry_info(path)


def _make_dir(path: str, user: User) -> pb.EntryInfo:
    if os.path.isdir(path):
        raise ConnectError(Code.ALREADY_EXISTS, f"directory '{path}' already exists")
    if os.path.lexists(path):
        raise ConnectError(Code.INVALID_ARGUMENT, f"path '{path}' already exists but it is not a directory")
    ensure_dirs(path, user)  # each new directory chowned to the user, as upstream does
    return entry_info(path)


def _move(src: str, dst: str) -> pb.EntryInfo:
    if not os.path.lexists(src):
        raise ConnectError(Code.NOT_FOUND, f"path '{src}' does not exist")
    parent = posixpath.dirname(dst)
    if parent:
        os.makedirs(parent, exist_ok=True)
    os.rename(src, dst)
    return entry_info(dst)


def _remove(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return  # like upstream: removing what is not there succeeds
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _watch_prepare(path: str, recursive: bool) -> DirectoryWatcher:
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise ConnectError(Code.INVALID_ARGUMENT, f"path '{path}' is not a directory")
    w = DirectoryWatcher(path, recursive)
    try:
        w.add_tree()
    except BaseException:
        w.close()
        raise
    return w


class _PolledWatcher:
    def __init__(self, watcher: DirectoryWatcher, include_entry: bool) -> None:
        self.watcher = watcher
        self.include_entry = include_entry
        self.last_poll = asyncio.get_running_loop().time()


class FilesystemService:
    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self._watchers: dict[str, _PolledWatcher] = {}

    def register(self, router: ConnectRouter) -> None:
        p = "/filesystem.Filesystem/"
        router.unary(p + "Stat", pb.StatRequest, self.stat)
        router.unary(p + "ListDir", pb.ListDirRequest, self.list_dir)
        router.unary(p + "MakeDir", pb.MakeDirRequest, self.make_dir)
        router.unary(p + "Move", pb.MoveRequest, self.move)
        router.unary(p + "Remove", pb.RemoveRequest, self.remove)
        router.server_stream(p + "WatchDir", pb.WatchDirRequest, self.watch_dir,
                             lambda: pb.WatchDirResponse(keepalive=pb.WatchDirResponse.KeepAlive()))
        router.unary(p + "CreateWatcher", pb.CreateWatcherRequest, self.create_watcher)
        router.unary(p + "GetWatcherEvents", pb.GetWatcherEventsRequest, self.get_watcher_events)
        router.unary(p + "RemoveWatcher", pb.RemoveWatcherRequest, self.remove_watcher)

    async def _call(self, user: User, path: str, fn, *args):
        try:
            return await run_as(user, fn, *args)
        except OSError as e:
            raise os_error(e, e.filename if isinstance(e.filename, str) else path) from e

    def _user_and_path(self, ctx: CallContext, raw: str) -> tuple[User, str]:
        user = rpc_user(self.identity, ctx.headers.get("Authorization"))
        return user, resolve_path(raw, user)

    async def stat(self, ctx: CallContext, req: pb.StatRequest) -> pb.StatResponse:
        user, path = self._user_and_path(ctx, req.path)
        return pb.StatResponse(entry=await self._call(user, path, _stat_entry, path))

    async def list_dir(self, ctx: CallContext, req: pb.ListDirRequest) -> pb.ListDirResponse:
        user, path = self._user_and_path(ctx, req.path)
        entries = await self._call(user, path, list_dir, path, max(1, req.depth))
        return pb.ListDirResponse(entries=entries)

    async def make_dir(self, ctx: CallContext, req: pb.MakeDirRequest) -> pb.MakeDirResponse:
        user, path = self._user_and_path(ctx, req.path)
        return pb.MakeDirResponse(entry=await self._call(user, path, _make_dir, path, user))

    async def move(self, ctx: CallContext, req: pb.MoveRequest) -> pb.MoveResponse:
        user = rpc_user(self.identity, ctx.headers.get("Authorization"))
        src = resolve_path(req.source, user)
        dst = resolve_path(req.destination, user)
        return pb.MoveResponse(entry=await self._call(user, src, _move, src, dst))

    async def remove(self, ctx: CallContext, req: pb.RemoveRequest) -> pb.RemoveResponse:
        user, path = self._user_and_path(ctx, req.path)
        if path == "/":
            raise ConnectError(Code.INVALID_ARGUMENT, "refusing to remove '/'")
        await self._call(user, path, _remove, path)
        return pb.RemoveResponse()

    # -- watching -----------------------------------------------------------------------------

    async def _event_message(self, user: User, ev: FsEvent, include_entry: bool) -> pb.FilesystemEvent:
        msg = pb.FilesystemEvent(name=ev.name, type=ev.type)
        if include_entry and ev.type not in (pb.EVENT_TYPE_REMOVE, pb.EVENT_TYPE_RENAME):
            try:
                msg.entry.CopyFrom(await run_as(user, entry_info, ev.path))
            except OSError:
                pass  # gone again already
        return msg

    async def watch_dir(self, ctx: CallContext, req: pb.WatchDirRequest) -> AsyncIterator[pb.WatchDirResponse]:
        user, path = self._user_and_path(ctx, req.path)
        watcher = await self._call(user, path, _watch_prepare, path, req.recursive)
        watcher.start()
        try:
            yield pb.WatchDirResponse(start=pb.WatchDirResponse.StartEvent())
            while True:
                ev = await watcher.queue.get()
                if ev is None:
                    return
                yield pb.WatchDirResponse(filesystem=await self._event_message(user, ev, req.include_entry))
        finally:
            watcher.close()

    async def create_watcher(self, ctx: CallContext, req: pb.CreateWatcherRequest) -> pb.CreateWatcherResponse:
        user, path = self._user_and_path(ctx, req.path)
        self._expire_idle()
        watcher = await self._call(user, path, _watch_prepare, path, req.recursive)
        watcher.start()
        wid = uuid.uuid4().hex
        self._watchers[wid] = _PolledWatcher(watcher, req.include_entry)
        return pb.CreateWatcherResponse(watcher_id=wid)

    def _polled(self, wid: str) -> _PolledWatcher:
        w = self._watchers.get(wid)
        if w is None:
            raise ConnectError(Code.NOT_FOUND, f"watcher '{wid}' not found")
        return w

    async def get_watcher_events(
        self, ctx: CallContext, req: pb.GetWatcherEventsRequest
    ) -> pb.GetWatcherEventsResponse:
        user = rpc_user(self.identity, ctx.headers.get("Authorization"))
        w = self._polled(req.watcher_id)
        w.last_poll = asyncio.get_running_loop().time()
        out = pb.GetWatcherEventsResponse()
        for ev in w.watcher.drain():
            out.events.append(await self._event_message(user, ev, w.include_entry))
        return out

    async def remove_watcher(self, ctx: CallContext, req: pb.RemoveWatcherRequest) -> pb.RemoveWatcherResponse:
        w = self._polled(req.watcher_id)
        w.watcher.close()
        del self._watchers[req.watcher_id]
        return pb.RemoveWatcherResponse()

    def _expire_idle(self) -> None:
        now = asyncio.get_running_loop().time()
        for wid, w in list(self._watchers.items()):
            if now - w.last_poll > WATCHER_IDLE_TTL_S:
                w.watcher.close()
                del self._watchers[wid]

    def close(self) -> None:
        for w in self._watchers.values():
            w.watcher.close()
        self._watchers.clear()

