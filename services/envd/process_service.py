"""The `process.Process` Connect service: a thin mapping between the wire messages and
`processes.ProcessTable`."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator

from .auth import rpc_user
from .connect import CallContext, Code, ConnectError, ConnectRouter
from .gen import process_pb2 as pb
from .identity import Identity
from .processes import Exit, ManagedProcess, Output, OutputKind, ProcessSpec, ProcessTable, SpawnError

_SIGNALS = {pb.SIGNAL_SIGKILL: signal.SIGKILL, pb.SIGNAL_SIGTERM: signal.SIGTERM}


def _event_message(ev: Output | Exit) -> pb.ProcessEvent:
    if isinstance(ev, Output):
        data = pb.ProcessEvent.DataEvent(**{ev.kind.value: ev.data})
        return pb.ProcessEvent(data=data)
    end = pb.ProcessEvent.EndEvent(exit_code=ev.exit_code, exited=ev.exited, status=ev.status)
    if ev.error is not None:
        end.error = ev.error
    return pb.ProcessEvent(end=end)


def _keepalive() -> pb.ProcessEvent:
    return pb.ProcessEvent(keepalive=pb.ProcessEvent.KeepAlive())


class ProcessService:
    def __init__(self, identity: Identity, table: ProcessTable) -> None:
        self.identity = identity
        self.table = table

    def register(self, router: ConnectRouter) -> None:
        p = "/process.Process/"
        router.server_stream(p + "Start", pb.StartRequest, self.start,
                             lambda: pb.StartResponse(event=_keepalive()))
        router.server_stream(p + "Connect", pb.ConnectRequest, self.connect,
                             lambda: pb.ConnectResponse(event=_keepalive()))
        router.unary(p + "List", pb.ListRequest, self.list)
        router.unary(p + "SendInput", pb.SendInputRequest, self.send_input)
        router.client_stream(p + "StreamInput", pb.StreamInputRequest, self.stream_input)
        router.unary(p + "SendSignal", pb.SendSignalRequest, self.send_signal)
        router.unary(p + "CloseStdin", pb.CloseStdinRequest, self.close_stdin)
        router.unary(p + "Update", pb.UpdateRequest, self.update)

    def _select(self, selector: pb.ProcessSelector) -> ManagedProcess:
        which = selector.WhichOneof("selector")
        if which == "pid":
            proc = self.table.by_pid(selector.pid)
            what = f"pid {selector.pid}"
        elif which == "tag":
            proc = self.table.by_tag(selector.tag)
            what = f"tag '{selector.tag}'"
        else:
            raise ConnectError(Code.INVALID_ARGUMENT, "process selector needs a pid or a tag")
        if proc is None:
            raise ConnectError(Code.NOT_FOUND, f"process with {what} not found")
        return proc

    async def start(self, ctx: CallContext, req: pb.StartRequest) -> AsyncIterator[pb.StartResponse]:
        user = rpc_user(self.identity, ctx.headers.get("Authorization"))
        cfg = req.process
        if not cfg.cmd:
            raise ConnectError(Code.INVALID_ARGUMENT, "process.cmd is required")
        pty_size = None
        if req.HasField("pty"):
            pty_size = (req.pty.size.cols, req.pty.size.rows)
        cwd = cfg.cwd if cfg.HasField("cwd") and cfg.cwd else None
        if cwd is None and self.identity.default_workdir:
            cwd = self.identity.default_workdir
        if cwd is not None and not cwd.startswith("/"):
            cwd = f"{user.home.rstrip('/')}/{cwd}"
        spec = ProcessSpec(
            cmd=cfg.cmd,
            args=tuple(cfg.args),
            envs=dict(cfg.envs),
            cwd=cwd,
            tag=req.tag if req.HasField("tag") else None,
            user=user,
            pty_size=pty_size,
            # Old SDKs omit the field and expect an open stdin.
            stdin=(req.stdin if req.HasField("stdin") else True) and pty_size is None,
            base_env=self.identity.process_env(user),
        )
        try:
            proc = self.table.start(spec)
        except SpawnError as e:
            raise ConnectError(Code.INVALID_ARGUMENT, str(e)) from e
        sub = proc.subscribe()
        try:
            yield pb.StartResponse(event=pb.ProcessEvent(start=pb.ProcessEvent.StartEvent(pid=proc.pid)))
            while True:
                ev = await sub.get()
                yield pb.StartResponse(event=_event_message(ev))
                if isinstance(ev, Exit):
                    return
        finally:
            proc.unsubscribe(sub)
            # Only the deadline ends the process; a client that disconnects leaves it running
            # so that it can connect again.
            if ctx.deadline_exceeded:
                proc.send_signal(signal.SIGKILL)

    async def connect(self, ctx: CallContext, req: pb.ConnectRequest) -> AsyncIterator[pb.ConnectResponse]:
        proc = self._select(req.process)
        sub = proc.subscribe()
        try:
            yield pb.ConnectResponse(event=pb.ProcessEvent(start=pb.ProcessEvent.StartEvent(pid=proc.pid)))
            while True:
                ev = await sub.get()
                yield pb.ConnectResponse(event=_event_message(ev))
                if isinstance(ev, Exit):
                    return
        finally:
            proc.unsubscribe(sub)

    async def list(self, ctx: CallContext, req: pb.ListRequest) -> pb.ListResponse:
        out = pb.ListResponse()
        for proc in self.table.all():
            info = out.processes.add(pid=proc.pid)
            info.config.cmd = proc.spec.cmd
            info.config.args.extend(proc.spec.args)
            info.config.envs.update(proc.spec.envs)
            if proc.spec.cwd:
                info.config.cwd = proc.spec.cwd
            if proc.tag is not None:
                info.tag = proc.tag
        return out

    async def _write_input(self, proc: ManagedProcess, inp: pb.ProcessInput) -> None:
        which = inp.WhichOneof("input")
        try:
            if which == "stdin":
                await proc.write_stdin(inp.stdin)
            elif which == "pty":
                await proc.write_pty(inp.pty)
            else:
                raise ConnectError(Code.INVALID_ARGUMENT, "input needs stdin or pty data")
        except ValueError as e:
            raise ConnectError(Code.FAILED_PRECONDITION, str(e)) from e
        except (BrokenPipeError, OSError) as e:
            raise ConnectError(Code.FAILED_PRECONDITION, f"cannot write input: {e}") from e

    async def send_input(self, ctx: CallContext, req: pb.SendInputRequest) -> pb.SendInputResponse:
        await self._write_input(self._select(req.process), req.input)
        return pb.SendInputResponse()

    async def stream_input(
        self, ctx: CallContext, messages: AsyncIterator[pb.StreamInputRequest]
    ) -> pb.StreamInputResponse:
        proc: ManagedProcess | None = None
        async for msg in messages:
            which = msg.WhichOneof("event")
            if which == "start":
                if proc is not None:
                    raise ConnectError(Code.INVALID_ARGUMENT, "start sent twice")
                proc = self._select(msg.start.process)
            elif which == "data":
                if proc is None:
                    raise ConnectError(Code.INVALID_ARGUMENT, "the first message must be start")
                await self._write_input(proc, msg.data.input)
            elif which == "keepalive":
                continue
            else:
                raise ConnectError(Code.INVALID_ARGUMENT, "empty stream input message")
        return pb.StreamInputResponse()

    async def send_signal(self, ctx: CallContext, req: pb.SendSignalRequest) -> pb.SendSignalResponse:
        proc = self._select(req.process)
        sig = _SIGNALS.get(req.signal)
        if sig is None:
            raise ConnectError(Code.INVALID_ARGUMENT, f"unsupported signal {req.signal}")
        proc.send_signal(sig)
        return pb.SendSignalResponse()

    async def close_stdin(self, ctx: CallContext, req: pb.CloseStdinRequest) -> pb.CloseStdinResponse:
        proc = self._select(req.process)
        try:
            proc.close_stdin()
        except ValueError as e:
            raise ConnectError(Code.FAILED_PRECONDITION, str(e)) from e
        return pb.CloseStdinResponse()

    async def update(self, ctx: CallContext, req: pb.UpdateRequest) -> pb.UpdateResponse:
        proc = self._select(req.process)
        if req.HasField("pty"):
            try:
                proc.resize(req.pty.size.cols, req.pty.size.rows)
            except ValueError as e:
                raise ConnectError(Code.FAILED_PRECONDITION, str(e)) from e
        return pb.UpdateResponse()


__all__ = ["OutputKind", "ProcessService"]
