"""Wiring of one master process: store, node clients, registries, gRPC server, election and the
leader's duties (default aliases and the local team, reconciler, timeouts, lost sandboxes)."""

from __future__ import annotations

import asyncio
import signal

import grpc

from cube_common import mtls
from cube_common.etcd import EtcdUnavailable
from sdk.gen.cube.v1 import master_pb2, master_pb2_grpc
from services.master import lost, reconcile, timeouts
from services.master.apikeys import ApiKeys
from services.master.builds import Builds
from services.master.caller import Policy
from services.master.leader import Election
from services.master.log import get_logger
from services.master.lost import LostSandboxes
from services.master.node_admin import NodeAdministration
from services.master.nodes import NodeClients
from services.master.quotas import Quotas
from services.master.reconcile import Reconciler
from services.master.sandboxes import Sandboxes
from services.master.server import MasterService
from services.master.settings import Settings
from services.master.store import Store
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
        self.sandboxes = Sandboxes(self.store, self.nodes, self.templates, s, self.quotas)
        self.teams = Teams(self.store)
        self.apikeys = ApiKeys(self.store, self.teams)
        self.builds = Builds(self.store, self.nodes, self.templates, s)
        self.reconciler = Reconciler(self.sandboxes, s.reconcile_grace_s, s.orphan_grace_s, self.builds)
        # Between the cheap passes that only read the nodes, a full one every reconcile interval.
        self.lost = LostSandboxes(self.sandboxes, s.lost_retention_s, full_every_s=s.reconcile_interval_s)
        self.node_admin = NodeAdministration(self.store)
        identity = master_pb2.MasterIdentity(master_id=s.master_id, address=s.advertised)
        self.election = Election(self.store, identity, s.leader_ttl_s, self._duties)
        self.server: grpc.aio.Server | None = None
        self._election_task: asyncio.Task | None = None

    def _duties(self):
        return [self._defaults_then_reconcile(), timeouts.run(self.sandboxes, self.settings.timeout_tick_s),
                lost.run(self.lost, self.settings.lost_check_interval_s)]

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
        self.server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        master_pb2_grpc.add_MasterServicer_to_server(
            MasterService(self.sandboxes, self.templates, self.apikeys, self.election, self.builds, self.teams,
                          self.quotas, Policy(secure=self.tls is not None), self.node_admin),
            self.server)
        port = mtls.add_port(self.server, self.settings.listen, self.tls)
        if port == 0:
            raise RuntimeError(f"cannot listen on {self.settings.listen}")
        await self.server.start()
        self._election_task = asyncio.ensure_future(self.election.run())
        log.info("listening", extra={"listen": self.settings.listen, "master_id": self.settings.master_id,
                                     "mtls": str(self.tls.dir) if self.tls else None,
                                     "etcd": list(self.settings.etcd_endpoints), "prefix": self.settings.prefix})
        return port

    async def stop(self) -> None:
        if self._election_task is not None:
            self._election_task.cancel()
            try:
                await self._election_task
            except BaseException:
                pass
        if self.server is not None:
            await self.server.stop(grace=3)
        await self.builds.stop()
        await self.nodes.close()
        await self.store.close()


async def serve(settings: Settings) -> None:
    master = Master(settings)
    await master.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping")
    await master.stop()
