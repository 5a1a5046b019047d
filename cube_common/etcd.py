"""The one etcd client of every Cube component: endpoint failover, deadlines, one error type.

    etcd = EtcdClient(("10.0.0.1:2379", "10.0.0.2:2379"), timeout_s=3.0)
    await etcd.put(key, value, lease=lease)              # the usual single-key operations ...
    value = await etcd.call(lambda c: c.get_prefix(p))   # ... and any other call, the same way
    async with etcd.using() as c:                        # long calls: watches, leases
        async for event in await c.watch_prefix(prefix): ...
    await etcd.close()

Invariants:
- Any failure of etcd (refused, timed out, channel gone) surfaces as ``EtcdUnavailable`` within
  ``timeout_s`` (plus half a second), never as a hang and never as a raw gRPC error.
- A call that fails retires the channel it used: the next call opens a fresh one to the next
  endpoint, so a dead member is left at once instead of after gRPC's reconnect back-off.
- A channel is closed only once no call uses it any more: closing a gRPC channel cancels its calls,
  and a call cancelled from below looks to its caller like a cancelled task, which must never happen.
  Such a cancellation is turned into ``EtcdUnavailable`` unless the caller's task is really being
  cancelled.
- With ``tls`` (the component's TLS directory, cube_common/mtls.py) every channel is mutual TLS:
  it presents the component's certificate, trusts only the cluster CA and accepts only a server
  proving ``etcd.cube.internal``, whatever address it dials; there is no fall-back to plaintext. A
  refused handshake is a failure like any other (``EtcdUnavailable``, within the deadline). The
  files are read once, when the client is made: a missing or unsafe key fails at start-up.
- Every ``call`` (so every single-key operation) is timed and its failure counted, by operation,
  in the process's Prometheus figures (cube_common/metrics.py):
  ``cube_etcd_request_duration_seconds{op}`` and ``cube_etcd_request_errors_total{op}``; a retired
  channel counts in ``cube_etcd_failovers_total``. Here, once, for every component.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import aetcd
import aetcd.exceptions
import aetcd.rpc
import aetcd.watcher
import grpc
from prometheus_client import Counter, Histogram

from cube_common import mtls
from cube_common.addresses import split_host_port
from cube_common.metrics import CALL_BUCKETS

log = logging.getLogger("cube.etcd")

T = TypeVar("T")

# What a failing etcd channel looks like from aetcd: its own errors, raw gRPC errors from below
# it, a channel used after close, and socket errors. Timeouts are not here: inside ``using`` a
# timeout is the caller's own (TimeoutError is an OSError, so it is let through explicitly);
# ``call`` maps the timeout of its own deadline.
FAILURES: tuple[type[BaseException], ...] = (aetcd.exceptions.ClientError, grpc.RpcError, grpc.aio.UsageError,
                                             OSError)


# Between tries of a retried call: an etcd leader election takes about a second.
RETRY_PAUSE_S = 0.2

# `op` is the operation's name (get, put, txn, ...): a handful per component, never a key.
CALL_SECONDS = Histogram("cube_etcd_request_duration_seconds", "etcd calls through EtcdClient.call, retries "
                         "included, whatever their outcome", ["op"], buckets=CALL_BUCKETS)
CALL_ERRORS = Counter("cube_etcd_request_errors_total", "etcd calls that failed (EtcdUnavailable: refused, "
                      "timed out, channel gone)", ["op"])
FAILOVERS = Counter("cube_etcd_failovers_total", "etcd channels retired after a failure (the next call goes to "
                    "the next endpoint)")


class EtcdUnavailable(Exception):
    """etcd could not be reached, or did not answer in time."""


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port``."""
    try:
        return split_host_port(endpoint)
    except ValueError as e:
        raise ValueError(f"bad etcd endpoint {endpoint!r} (want host:port): {e}") from None


class _TlsChannelClient(aetcd.Client):
    """An aetcd client whose channel is a TLS one.

    Why it exists: aetcd 1.0.0's ``connect`` only ever opens ``grpc.aio.insecure_channel``, and has
    no parameter for credentials. This ``connect`` opens a secure channel instead and then wires
    up what the rest of ``aetcd.Client`` expects to find after a connect: the stubs and the
    watcher. aetcd's username/password authentication is left out (Cube does not use it: the
    certificate is the credential), and so is its wait for a concurrent connect: nothing here
    awaits, so two tasks cannot interleave in the middle of it.
    """

    def __init__(self, *, credentials: grpc.ChannelCredentials, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._credentials = credentials

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        host = f"[{self._host}]" if ":" in self._host else self._host  # a bare IPv6 address
        self.channel = grpc.aio.secure_channel(f"{host}:{self._port}", self._credentials,
                                               options=list(self._options.items()))
        self.kvstub = aetcd.rpc.KVStub(self.channel)
        self.clusterstub = aetcd.rpc.ClusterStub(self.channel)
        self.leasestub = aetcd.rpc.LeaseStub(self.channel)
        self.maintenancestub = aetcd.rpc.MaintenanceStub(self.channel)
        self._watcher = aetcd.watcher.Watcher(aetcd.rpc.WatchStub(self.channel), timeout=self._timeout,
                                              metadata=self.metadata)
        self._connected.set()


class EtcdClient:
    def __init__(self, endpoints: Sequence[str], timeout_s: float = 3.0,
                 tls: mtls.TlsFiles | None = None) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoints")
        self.endpoints = tuple(parse_endpoint(e) for e in endpoints)
        self.timeout_s = timeout_s
        # Made now: the files are read (and the key's mode checked) at start-up, not at a failover.
        self._credentials = mtls.channel_credentials(tls) if tls is not None else None
        self._ep = 0
        self._client: aetcd.Client | None = None
        self._users: dict[int, int] = {}  # calls in flight per channel (id of its client)
        self._retired: dict[int, aetcd.Client] = {}
        self._closing: set[asyncio.Task] = set()

    @property
    def attempt_s(self) -> float:
        """One try's deadline. With several members, a third of ``timeout_s`` (at least half a
        second), so that a member that went silent (a host cut off: nothing refuses, packets just
        vanish) still leaves time for another within the call's deadline."""
        if len(self.endpoints) == 1:
            return self.timeout_s
        return max(0.5, self.timeout_s / 3)

    @property
    def endpoint(self) -> str:
        """The endpoint the next call goes to (for logs)."""
        host, port = self.endpoints[self._ep % len(self.endpoints)]
        return f"{host}:{port}"

    @property
    def client(self) -> aetcd.Client:
        """The current channel. Prefer ``call``/``using``, which keep it open while they use it."""
        if self._client is None:
            host, port = self.endpoints[self._ep % len(self.endpoints)]
            # timeout is the per-call gRPC deadline; keepalive so that a dead etcd is noticed.
            options: dict[str, Any] = {"grpc.keepalive_time_ms": 5000, "grpc.keepalive_timeout_ms": 2000}
            kwargs: dict[str, Any] = {"host": host, "port": port, "timeout": self.attempt_s,
                                      "connect_wait_timeout": int(self.attempt_s) or 1, "options": options}
            if self._credentials is None:
                self._client = aetcd.Client(**kwargs)
            else:
                # The server's certificate names its role, not an address (deploy/pki.py).
                options["grpc.ssl_target_name_override"] = mtls.server_name(mtls.Role.ETCD)
                self._client = _TlsChannelClient(credentials=self._credentials, **kwargs)
        return self._client

    @property
    def transactions(self):
        """Builders of transaction compares and operations (they need no channel)."""
        return self.client.transactions

    @staticmethod
    async def _close_client(client: aetcd.Client) -> None:
        try:
            await asyncio.wait_for(client.close(), 2)
        except Exception:  # noqa: BLE001 - closing a broken channel may fail in any way; it is gone
            pass

    async def close(self) -> None:
        clients = list(self._retired.values())
        self._retired.clear()
        if self._client is not None:
            clients.append(self._client)
            self._client = None
        for client in clients:
            await self._close_client(client)
        # Retired channels whose closing is under way: done before we return, not left to the loop.
        await asyncio.gather(*self._closing)

    def retire(self, client: aetcd.Client) -> None:
        """Stop using ``client``'s channel: new calls get a fresh one (to the next endpoint if
        there are several). The old channel is closed when its last call has finished."""
        if self._client is not client:
            return  # another failing call replaced it already
        FAILOVERS.inc()
        self._ep += 1
        self._client = None
        self._retired[id(client)] = client
        if not self._users.get(id(client)):
            self._release(id(client))

    def _release(self, key: int) -> None:
        retired = self._retired.pop(key, None)
        if retired is not None:
            closing = asyncio.ensure_future(self._close_client(retired))
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    @contextlib.asynccontextmanager
    async def using(self) -> AsyncIterator[aetcd.Client]:
        """The current channel, held open for the block even if another call retires it. For
        calls that do not fit ``call`` (watches, leases kept for long); failures inside the block
        that the caller lets out retire the channel and become ``EtcdUnavailable``."""
        client = self.client
        key = id(client)
        self._users[key] = self._users.get(key, 0) + 1
        try:
            yield client
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # our caller is being cancelled: let it be
            log.warning("etcd call cancelled by its channel", extra={"endpoint": self.endpoint})
            self.retire(client)
            raise EtcdUnavailable("etcd call cancelled") from None
        except TimeoutError:
            raise
        except FAILURES as e:
            log.warning("etcd unavailable", extra={"endpoint": self.endpoint, "error": f"{type(e).__name__}: {e}"})
            self.retire(client)
            raise EtcdUnavailable(str(e) or type(e).__name__) from e
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key]
                self._release(key)

    # The single-key operations every component uses, each one ``call``: callers pass values, never
    # a closure over their own (loop) variables.

    # These may run twice without harm (a put of the same value, a second lease that lapses), so they
    # ride over a lost member or an etcd leader election (``call``'s ``retry``).
    async def get(self, key: bytes) -> Any:
        return await self.call(lambda c: c.get(key), retry=True, op="get")

    async def get_prefix(self, prefix: bytes, **kw: Any) -> Any:
        return await self.call(lambda c: c.get_prefix(prefix, **kw), retry=True, op="get_prefix")

    async def put(self, key: bytes, value: bytes, lease: aetcd.Lease | None = None) -> Any:
        return await self.call(lambda c: c.put(key, value, lease=lease), retry=True, op="put")

    async def delete(self, key: bytes) -> Any:
        return await self.call(lambda c: c.delete(key), retry=True, op="delete")

    async def lease(self, ttl: int) -> aetcd.Lease:
        return await self.call(lambda c: c.lease(ttl), retry=True, op="lease")

    async def refresh_lease(self, lease_id: int) -> Any:
        return await self.call(lambda c: c.refresh_lease(lease_id), retry=True, op="refresh_lease")

    async def revoke_lease(self, lease_id: int) -> Any:
        return await self.call(lambda c: c.revoke_lease(lease_id), retry=True, op="revoke_lease")

    async def wait_change(self, key: bytes, after_revision: int, timeout: float) -> bool:
        """Wait until ``key`` changes after ``after_revision`` (an etcd watch): True when it did,
        False when ``timeout`` passed first. A watch that cannot be opened or breaks leaves the
        caller to read again, after a pause (a quarter of ``timeout``) so that it does not spin."""
        deadline = time.monotonic() + timeout
        try:
            async with self.using() as client:
                watch = await asyncio.wait_for(client.watch(key, start_revision=after_revision + 1), self.attempt_s)
                try:
                    async def first() -> None:
                        async for _ in watch:
                            return

                    await asyncio.wait_for(first(), max(0.0, deadline - time.monotonic()))
                    return True
                except TimeoutError:
                    return False
                finally:
                    try:
                        await asyncio.wait_for(watch.cancel(), 2)
                    except Exception:  # noqa: BLE001 - best effort on a channel that may be failing
                        pass
        except (EtcdUnavailable, TimeoutError):
            await asyncio.sleep(max(0.0, min(timeout / 4, deadline - time.monotonic())))
            return False

    async def call(self, make: Callable[[aetcd.Client], Awaitable[T]], retry: bool = False, op: str = "call") -> T:
        """Run ``make(client)`` (a coroutine factory) with the deadline, failover and error mapping,
        timed and counted as operation ``op`` (module docstring).

        A failed call retires its channel, so the next call goes to the next endpoint. With ``retry``
        (for operations that may run twice: reads, puts, deletes, leases) the call itself goes on
        to the next endpoints until ``timeout_s`` has passed: a member that is gone or an etcd leader
        election (about a second) then costs time, not an error. A transaction is never retried
        here: after "leader changed" it may have been applied; its caller's compare decides."""
        t0 = time.monotonic()
        try:
            return await self._call(make, retry)
        except EtcdUnavailable:
            CALL_ERRORS.labels(op).inc()
            raise
        finally:
            CALL_SECONDS.labels(op).observe(time.monotonic() - t0)

    async def _call(self, make: Callable[[aetcd.Client], Awaitable[T]], retry: bool) -> T:
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                async with self.using() as client:
                    left = min(self.attempt_s, max(0.1, deadline - time.monotonic()))
                    try:
                        return await asyncio.wait_for(make(client), left + 0.5)
                    except TimeoutError as e:
                        log.warning("etcd did not answer in time", extra={"endpoint": self.endpoint})
                        self.retire(client)
                        raise EtcdUnavailable(f"no answer from etcd within {left:g}s") from e
            except EtcdUnavailable:
                if not retry or time.monotonic() + RETRY_PAUSE_S >= deadline:
                    raise
            await asyncio.sleep(RETRY_PAUSE_S)
