"""Host end of the guest control channel (virtio-serial port `cube.ctl`, a unix socket here).

One JSON object per line each way; requests carry a `seq` echoed in the reply. The guest side is
`guest/init.py`.
"""
from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import time
from pathlib import Path

from .errors import GuestTimeoutError, MachineGoneError


class ControlChannel:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._seq = itertools.count(1)
        self._lock = asyncio.Lock()

    async def _connect(self) -> None:
        if self._writer is not None and not self._writer.is_closing():
            return
        try:
            self._reader, self._writer = await asyncio.open_unix_connection(str(self.path))
        except OSError as e:
            raise MachineGoneError(f"control channel {self.path}: {e}") from e

    async def call(self, op: str, timeout: float = 10.0, **args: object) -> dict:
        try:
            return await self._call(op, timeout, **args)
        except (ConnectionError, BrokenPipeError) as e:
            self.close()
            raise MachineGoneError(f"control channel lost during {op!r}: {e}") from e

    async def _call(self, op: str, timeout: float, **args: object) -> dict:
        async with self._lock:
            await self._connect()
            seq = next(self._seq)
            assert self._writer and self._reader
            self._writer.write(json.dumps({"op": op, "seq": seq, **args}).encode() + b"\n")
            await self._writer.drain()
            deadline = time.monotonic() + timeout
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise GuestTimeoutError(f"guest did not answer {op!r} within {timeout}s")
                try:
                    line = await asyncio.wait_for(self._reader.readline(), remaining)
                except TimeoutError:
                    raise GuestTimeoutError(f"guest did not answer {op!r} within {timeout}s") from None
                if not line:
                    self.close()
                    raise MachineGoneError(f"control channel closed during {op!r}")
                reply = json.loads(line)
                if reply.get("seq") == seq:
                    if not reply.get("ok"):
                        raise GuestTimeoutError(f"guest refused {op!r}: {reply.get('error')}")
                    return reply
                # Replies to requests abandoned by an earlier timeout are skipped.

    async def sync_identity(self, timeout: float = 10.0) -> dict:
        """Give the guest the current wall clock and 64 fresh bytes for its RNG."""
        return await self.call("sync", timeout=timeout, realtime_ns=time.time_ns(),
                               entropy=base64.b64encode(os.urandom(64)).decode())

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None
