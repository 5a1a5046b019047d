"""Wiring of one master process: store, node clients, registries, gRPC server, election and the
leader's duties (default aliases and the local team, reconciler, timeouts, lost sandboxes)."""

from __future__ import annotations

import asyncio
import secrets
import signal

import grpc

from cube_common import metrics as cube_metrics, mtls
from cube_common.etcd import EtcdUnavailable
from cube_common.leased_key import LeasedKey
from sdk.gen.cube.v1 import master_pb2, master_pb2_grpc
from services.master import lost, reconcile, timeouts
from services.master.apikeys import ApiKeys
from services.master.builds import Builds
from services.master.caller import Policy
from services.master.clock import ts
from services.master.leader import Election
from services.master.log import get_logger
from services.master.lost import LostSandboxes
from services.master.metrics import MasterMetrics
from services.master.node_admin import NodeAdministration
from services.master.nodes import NodeClients
from services.master.quotas import Quotas
from services.master.reconcile import Reconciler
from services.master.sandboxes import Sandboxes
from services.master.server import MasterService
from services.master.settings import Settings
from services.master.snapshots import Snapshots
from services.master.store import Store, to_json
from services.master.teams import Teams
from services.master.templates import Templates

log = get_logger("app")


class Master:
    def __init__(self, settings: Settings):
        self.settings = settings
        s = settings
        self.tls = mtls.files(s.mtls_dir, mtls.Role.MASTER)
        self.store = Store(s.etcd_endpoints, s.prefix, s.etcd_timeout_s, self.tls)
        self.nodes = NodeClients(s.node_rpc_timeout_s, self.tls)
        self.templates = Templates(self.store, self.nodes, s)
        self.quotas = Quotas(self.store)
        # This process, as other masters see it: what it leaves half-done in etcd names it, and
        # its presence key lapses a lease TTL after it is gone (then that work is undone at once).
        self.identity = master_pb2.MasterIdentity(master_id=s.master_id, address=s.advertised,
                                                  incarnation=f"{s.master_id}/{secrets.token_hex(8)}")
        self.sandboxes = Sandboxes(self.store, self.nodes, self.templates, s, self.quotas,
                                   incarnation=self.identity.incarnation)
        self.teams = Teams(self.store)
        self.apikeys = ApiKeys(self.store, self.teams)
        self.builds = Builds(self.store, self.nodes, self.templates, s)
        self.snapshots = Snapshots(self.sandboxes, self.templates)
        self.reconciler = Reconciler(self.sandboxes, s.reconcile_grace_s, s.orphan_grace_s, self.builds,
                                     self.snapshots)
        # Between the cheap passes that only read the nodes, a full one every reconcile interval.
        self.lost = LostSandboxes(self.sandboxes, s.lost_retention_s, full_every_s=s.reconcile_interval_s)
        self.node_admin = NodeAdministration(self.store)
        self.election = Election(self.store, self.identity, s.leader_ttl_s, self._duties)
        self.metrics = MasterMetrics(self.store, self.election, s.metrics_refresh_s)
        self.presence = LeasedKey(self.store.etcd, self.store.keys.master(s.master_id),
                                  lambda: to_json(self.identity), s.leader_ttl_s)
        self.server: grpc.aio.Server | None = None
        self._election_task: asyncio.Task | None = None
        self._presence_task: asyncio.Task | None = None

    def _duties(self):
        return [self._defaults_then_reconcile(), timeouts.run(self.sandboxes, self.settings.timeout_tick_s),
                lost.run(self.lost, self.settings.lost_check_interval_s), self.metrics.count_loop()]

    async def _defaults_then_reconcile(self):
        while True:
            try:
                await self.templates.ensure_default_aliases()
                await self.teams.ensure_local()
                break
            except EtcdUnavailable:
                await asyncio.sleep(1)
        await reconcile.run(self.reconciler, self.settings.reconcile_interval_s)

    async def start(self) -> int:
        self.server = grpc.aio.server(options=[("grpc.so_reuseport", 0)],
                                      interceptors=[cube_metrics.GrpcServerMetrics()])
        master_pb2_grpc.add_MasterServicer_to_server(
            MasterService(self.sandboxes, self.templates, self.apikeys, self.election, self.builds, self.teams,
                          self.quotas, Policy(secure=self.tls is not None), self.node_admin, self.snapshots),
            self.server)
        port = mtls.add_port(self.server, self.settings.listen, self.tls)
        if port == 0:
            raise RuntimeError(f"cannot listen on {self.settings.listen}")
        self.identity.since.CopyFrom(ts())
        self.metrics.register()
        self._presence_task = asyncio.ensure_future(self.presence.run())
        # Present before serving, so that nothing this process writes can look ownerless; with
        # etcd away it serves anyway (every write fails until etcd is back, and so does presence).
        await self.presence.written(self.settings.etcd_timeout_s)
        await self.server.start()
        self._election_task = asyncio.ensure_future(self.election.run())
        log.info("listening", extra={"listen": self.settings.listen, "master_id": self.settings.master_id,
                                     "mtls": str(self.tls.dir) if self.tls else None,
                                     "etcd": list(self.settings.etcd_endpoints), "prefix": self.settings.prefix})
        return port

    async def stop(self) -> None:
        self.metrics.unregister()
        await self._cancel(self._election_task)
        if self.server is not None:
            await self.server.stop(grace=3)
        # Present until the last call it served has ended; then gone at once, not a TTL later.
        await self._cancel(self._presence_task)
        await self.presence.close()
        await self.builds.stop()
        await self.nodes.close()
        await self.store.close()

    @staticmethod
    async def _cancel(task: asyncio.Task | None) -> None:
        if task is not None:
            task.cancel()
            try:
                await task
            except BaseException:
                pass


async def serve(settings: Settings) -> None:
    master = Master(settings)
    listener = cube_metrics.serve(settings.metrics_listen, loop=asyncio.get_running_loop())
    await master.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping")
    await master.stop()
    if listener is not None:
        listener.close()
