"""Paused sandboxes between nodes (services/cubelet/paused_manifest.py, transfer.py's PausedSource,
paused_pull.py, SandboxManager's arrival), with real parts: the probe template booted and
snapshotted under TCG on node A, real SandboxManagers on A and B (each its own state dir) running
real clones, A's real Cubelet gRPC server under mutual TLS with the node's role gate, and a real
etcd where A's registration says it holds the template. CubeVS is played by a TEST DOUBLE (a
network namespace with a tap per sandbox, testkit.netlab), and the guest agent's /init by a
recorder: the probe guest runs no agent.

- A sandbox runs on A, writes a file, its counter process counts; paused on A. B, told A holds it,
  pulls the template and the saved state, resumes it: the file is there and the same process goes
  on counting; every file the machine uses is B's own (its template copy, the overlay's backing
  file), the guest was handed its identity with the token it held. A's copy goes only when A is
  told (KillSandbox), and only the paused copy.
- A byte of the saved state rotten on A after its digest was taken: B's resume fails with a digest
  error and leaves nothing on B; A still holds the sandbox. Another build of the template on B:
  FAILED_PRECONDITION before any transfer.
- A peer gets only the table's names of a sandbox paused there, only for the save it was
  described, and only with a cubelet certificate.
- The node's Prometheus figures (services/cubelet/metrics.py), scraped from a metrics listener in
  this loop and read with Prometheus' parser, move with a create through A's gRPC server (a fresh
  clone, a pool miss), its pause and resume (a memory restore).
"""
from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from cube_common import metrics, mtls
from cube_common.keys import Keys
from cube_common.mtls import Role
from sdk.gen.cube.v1 import cubelet_pb2 as pb, cubelet_pb2_grpc, network_pb2, vs_pb2
from services.cubelet import sandboxes as sandboxes_mod
from services.cubelet.metrics import CubeletMetrics
from services.cubelet.paused_pull import PausedStatePuller
from services.cubelet.pull import EtcdPeers, TemplatePuller
from services.cubelet.sandboxes import SandboxError, SandboxManager, State
from services.cubelet.server import CubeletService, grpc_server
from services.cubelet.settings import CubeletSettings
from services.cubelet.templates import TemplateStore
from testkit import netlab
from testkit.ports import free_port
from tests.cubelet.test_transfer import build_probe, flip_a_byte, node_settings, register, tls
from tests.support.prometheus import ascrape
from vmm_core import NetworkAttachment, VmmSettings
from vmm_core.disks import qcow2_header

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, taps, the VMM jail)"),
    pytest.mark.vm, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(600),
]

TEMPLATE = "probe"


@dataclass
class FakeVs:
    """TEST DOUBLE of CubeVS: each allocation is a network namespace of its own with the tap in it
    (its name is the namespace's; ``attachment`` below puts QEMU there)."""

    nets: dict[str, netlab.TestNet] = field(default_factory=dict)

    async def allocate(self, vs_id: str, policy: network_pb2.NetworkPolicy) -> vs_pb2.SandboxNetwork:
        net = await asyncio.to_thread(netlab.TestNet.create)
        self.nets[vs_id] = net
        return vs_pb2.SandboxNetwork(sandbox_id=vs_id, tap=net.name, host_address=netlab.GUEST.ip)

    async def update_policy(self, vs_id: str, policy: network_pb2.NetworkPolicy) -> vs_pb2.SandboxNetwork:
        return vs_pb2.SandboxNetwork(sandbox_id=vs_id)

    async def release(self, vs_id: str) -> bool:
        net = self.nets.pop(vs_id, None)
        if net is not None:
            await asyncio.to_thread(net.destroy)
        return net is not None

    def guest(self, vs_id: str, path: str) -> str:
        return self.nets[vs_id].http_get(path)

    async def stats(self, vs_ids: list[str]) -> dict[str, vs_pb2.SandboxStats]:
        return {}  # no datapath here, so no drop counters (tests/vs/test_vs_metrics.py has them)


def attachment(net: vs_pb2.SandboxNetwork) -> NetworkAttachment:
    """What SandboxManager attaches QEMU to: FakeVs's "tap" names the namespace holding tap0."""
    return NetworkAttachment("tap0", netlab.GUEST.mac, net.tap)


@dataclass
class Node:
    settings: CubeletSettings
    sandboxes: SandboxManager
    vs: FakeVs
    puller: TemplatePuller | None = None


@dataclass
class World:
    a: Node
    address: str  # A's cubelet
    keys: Keys
    inits: list[dict]  # every /init the "agent" got, in order
    workdir: Path


@pytest.fixture(scope="module")
def workdir():
    d = Path(tempfile.mkdtemp(prefix="cube-paused-test-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(workdir, pki, etcd_server) -> AsyncIterator[World]:
    vmm = VmmSettings.from_env().with_overrides(runtime_dir=workdir / "vms")
    inits: list[dict] = []

    async def init_identity(ep, **kw) -> None:
        inits.append(kw)

    async def wait_healthy(ep, ports, timeout) -> None:
        pass  # the probe guest runs no agent: its disk's httpd is what the tests ask

    mp = pytest.MonkeyPatch()
    mp.setattr(sandboxes_mod, "vm_attachment", attachment)
    mp.setattr(sandboxes_mod, "init_identity", init_identity)
    mp.setattr(sandboxes_mod, "wait_healthy", wait_healthy)
    keys = Keys(f"/paused-test-{os.getpid()}")
    settings = replace(node_settings(workdir, "a", etcd_server, keys.root), warm_pool_size=0)
    store = TemplateStore(settings, vmm, vs=None)  # type: ignore[arg-type]  # no build runs here
    await build_probe(store, vmm, workdir, TEMPLATE)
    vs = FakeVs()
    manager = SandboxManager(settings, vmm, vs, store)  # type: ignore[arg-type]
    address = f"127.0.0.1:{free_port()}"
    server = grpc_server(CubeletService(settings, manager, store, "tcg"), address, tls(pki, Role.CUBELET))
    await server.start()
    await register(etcd_server, keys, pb.NodeStatus(node_id="a", address=address, templates=[TEMPLATE]))
    try:
        yield World(Node(settings, manager, vs), address, keys, inits, workdir)
    finally:
        await server.stop(grace=None)
        for sid in list(manager._live):
            await manager.kill(sid)
        mp.undo()


def node_b(world: World, pki: Path, node_id: str) -> Node:
    """Another node: its own state dir, the template pulled from A on demand, paused sandboxes too."""
    settings = replace(node_settings(world.workdir, node_id, None, world.keys.root), warm_pool_size=0)
    settings = replace(settings, etcd_endpoints=world.a.settings.etcd_endpoints)
    vmm = world.a.sandboxes.vmm
    store = TemplateStore(settings, vmm, vs=None)  # type: ignore[arg-type]
    puller = TemplatePuller(settings, store, tls(pki, Role.CUBELET), peers=EtcdPeers(settings, None))
    vs = FakeVs()
    manager = SandboxManager(settings, vmm, vs, store)  # type: ignore[arg-type]
    manager.pull_template = puller.pull
    manager.arrivals = PausedStatePuller(settings, vmm, tls(pki, Role.CUBELET))
    return Node(settings, manager, vs, puller)


async def close(node: Node) -> None:
    for sid in list(node.sandboxes._live):
        await node.sandboxes.kill(sid)
    if node.puller is not None:
        await node.puller.close()


def leftovers(settings: CubeletSettings) -> list[str]:
    return sorted(p.name for d in (settings.paused_dir, settings.sandboxes_dir) if d.is_dir() for p in d.iterdir())


async def run_and_pause(world: World, sid: str, write: str, filesystem_only: bool = False) -> tuple[str, int]:
    """Run ``sid`` on A, write a file in the guest, read its counter, pause it (its disk alone with
    ``filesystem_only``). Returns the counter's (pid, count) before the pause."""
    a = world.a
    await a.sandboxes.run(pb.RunSandboxRequest(sandbox_id=sid, template_id=TEMPLATE, envd_access_token="tok-a",
                                               env_vars={"WHERE": "a"}, metadata={"owner": "test"}))
    assert await asyncio.to_thread(a.vs.guest, sid, f"/cgi-bin/put?moved={write}") == "ok"
    pid, count = (await asyncio.to_thread(a.vs.guest, sid, "/cgi-bin/counter")).split()
    await a.sandboxes.pause(sid, filesystem_only=filesystem_only)
    return pid, int(count)


def resume_from_a(world: World, sid: str, token: str = "tok-new") -> pb.ResumeSandboxRequest:
    return pb.ResumeSandboxRequest(sandbox_id=sid, envd_access_token=token,
                                   source=pb.PausedSource(node_id="a", address=world.address))


async def test_a_sandbox_paused_on_a_resumes_on_b_with_its_memory_and_files(world, pki):
    pid, count = await run_and_pause(world, "moved1", "before-pause")
    b = node_b(world, pki, "b")
    try:
        st = await b.sandboxes.resume(resume_from_a(world, "moved1"))
        assert (st.node_id, st.state, st.template_id) == ("b", pb.SANDBOX_STATE_RUNNING, TEMPLATE)
        assert dict(st.metadata) == {"owner": "test"}
        # The file written before the pause is on the disk, and the process that only lived in
        # memory goes on counting where it was.
        assert await asyncio.to_thread(b.vs.guest, "moved1", "/cgi-bin/get?moved") == "before-pause"
        pid2, count2 = (await asyncio.to_thread(b.vs.guest, "moved1", "/cgi-bin/counter")).split()
        assert pid2 == pid and int(count2) >= count
        await asyncio.sleep(0.6)
        pid3, count3 = (await asyncio.to_thread(b.vs.guest, "moved1", "/cgi-bin/counter")).split()
        assert pid3 == pid and int(count3) > int(count2)
        # The guest got its identity again, proving the token it held (A's), with the new one.
        last = world.inits[-1]
        assert (last["sandbox_id"], last["current_token"], last["access_token"]) == ("moved1", "tok-a", "tok-new")

        # Every file the machine uses is B's: its copy of the template, the overlay reading through it.
        tpl = b.sandboxes.templates.get(TEMPLATE)
        assert tpl is not None
        spec = b.sandboxes._live["moved1"].machine.spec  # type: ignore[union-attr]
        named = [spec.kernel, spec.initramfs, spec.memory_file, *(d.path for d in spec.disks if d.readonly)]
        assert all(p is not None and p.is_relative_to(b.settings.templates_dir) for p in named), named
        rw = next(d.path for d in spec.disks if not d.readonly)
        header = qcow2_header(rw)
        assert header is not None and header.backing == str(tpl.snapshot_dir / "disk.img").encode()
        rec = b.sandboxes._live["moved1"].record
        assert (rec.state, rec.access_token) == (State.RUNNING, "tok-new")
        assert rec.env_vars == {"GREETING": "hello", "WHERE": "a"}  # the template's, then the sandbox's

        # A keeps its paused copy until it is told to drop it; then only that goes.
        assert world.a.sandboxes.get("moved1").state == pb.SANDBOX_STATE_PAUSED
        assert await world.a.sandboxes.kill("moved1")
        assert "moved1" not in leftovers(world.a.settings) and "moved1.json" not in leftovers(world.a.settings)
        assert b.sandboxes.get("moved1").state == pb.SANDBOX_STATE_RUNNING
    finally:
        await close(b)


async def test_a_filesystem_only_pause_moves_and_boots_on_b_with_its_files(world, pki):
    """A filesystem-only pause (vmm_core DISK save: no memory, no device state) travels as its two
    files and cold-boots on B on B's copy of the template: the file is there, the memory is not."""
    await world.a.sandboxes.run(pb.RunSandboxRequest(sandbox_id="fsmoved", template_id=TEMPLATE,
                                                     envd_access_token="tok-a"))
    a = world.a
    assert await asyncio.to_thread(a.vs.guest, "fsmoved", "/cgi-bin/memo?note=memory") == "ok"
    assert await asyncio.to_thread(a.vs.guest, "fsmoved", "/cgi-bin/keep?moved=unsynced") == "ok"
    st = await a.sandboxes.pause("fsmoved", filesystem_only=True)
    assert st.filesystem_only and sorted(p.name for p in (a.settings.paused_dir / "fsmoved").iterdir()) \
        == ["disk.qcow2", "snapshot.json"]
    b = node_b(world, pki, "b-fs")
    try:
        st = await b.sandboxes.resume(resume_from_a(world, "fsmoved"))
        assert (st.node_id, st.state, st.filesystem_only) == ("b-fs", pb.SANDBOX_STATE_RUNNING, False)
        await b.vs.nets["fsmoved"].wait_http("/cgi-bin/counter")
        assert await asyncio.to_thread(b.vs.guest, "fsmoved", "/cgi-bin/get?moved") == "unsynced"
        assert await asyncio.to_thread(b.vs.guest, "fsmoved", "/cgi-bin/recall?note") == "MISSING"
        spec = b.sandboxes._live["fsmoved"].machine.spec  # type: ignore[union-attr]
        assert spec.memory_file is None and spec.kernel.is_relative_to(b.settings.templates_dir)
        # A fresh boot's agent holds no token: the identity goes without one.
        assert (world.inits[-1]["sandbox_id"], world.inits[-1]["current_token"]) == ("fsmoved", "")
        assert await world.a.sandboxes.kill("fsmoved")
    finally:
        await close(b)


async def test_a_rotten_saved_state_fails_the_move_and_leaves_nothing(world, pki):
    await run_and_pause(world, "rotten1", "x")
    # Digests are taken when first asked for; the byte rots after that, as it would on a disk.
    async with mtls.aio_channel(world.address, tls(pki, Role.CUBELET), Role.CUBELET) as ch:
        m = await cubelet_pb2_grpc.CubeletStub(ch).GetPausedManifest(pb.SandboxRef(sandbox_id="rotten1"), timeout=60)
    assert sorted(a.name for a in m.artifacts) == ["disk.qcow2", "snapshot.json", "state"]
    flip_a_byte(world.a.settings.paused_dir / "rotten1" / "state")
    c = node_b(world, pki, "c")
    try:
        with pytest.raises(SandboxError) as e:
            await c.sandboxes.resume(resume_from_a(world, "rotten1"))
        assert e.value.code == "UNAVAILABLE" and "state: sha256 digest mismatch" in str(e.value)
        assert leftovers(c.settings) == [] and "rotten1" not in c.sandboxes._live
        assert not c.vs.nets  # no network was taken
        assert world.a.sandboxes.get("rotten1").state == pb.SANDBOX_STATE_PAUSED

        # Another build of the template on the node: refused before anything is fetched.
        tpl = c.sandboxes.templates.get(TEMPLATE)
        assert tpl is not None  # pulled for the attempt above
        c.sandboxes.templates.write_info(TEMPLATE, tpl.info, "0" * 16, tpl.env)
        with pytest.raises(SandboxError) as e:
            await c.sandboxes.resume(resume_from_a(world, "rotten1"))
        assert e.value.code == "FAILED_PRECONDITION" and "build" in str(e.value)
        assert leftovers(c.settings) == []
    finally:
        await close(c)
        await world.a.sandboxes.kill("rotten1")


async def _fetch(address: str, pki: Path, role: Role, req: pb.FetchPausedArtifactRequest) -> int:
    async with mtls.aio_channel(address, tls(pki, role), Role.CUBELET) as ch:
        return sum([len(c.data) async for c in cubelet_pb2_grpc.CubeletStub(ch).FetchPausedArtifact(req, timeout=30)])


async def test_a_peer_gets_only_the_tables_names_of_this_save_with_a_cubelet_certificate(world, pki):
    await run_and_pause(world, "served1", "y")
    try:
        async with mtls.aio_channel(world.address, tls(pki, Role.CUBELET), Role.CUBELET) as ch:
            m = await cubelet_pb2_grpc.CubeletStub(ch).GetPausedManifest(pb.SandboxRef(sandbox_id="served1"),
                                                                        timeout=60)
        state = world.a.settings.paused_dir / "served1" / "state"
        ok = pb.FetchPausedArtifactRequest(sandbox_id="served1", save_id=m.save_id, name="state")
        assert await _fetch(world.address, pki, Role.CUBELET, ok) <= os.stat(state).st_size
        for name in ("../served1/state", "/etc/passwd", "manifest.json", "memory", ""):
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await _fetch(world.address, pki, Role.CUBELET, replace_name(ok, name))
            assert e.value.code() is grpc.StatusCode.NOT_FOUND, name
        for sid, code in (("../a", grpc.StatusCode.INVALID_ARGUMENT), ("nope", grpc.StatusCode.NOT_FOUND)):
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await _fetch(world.address, pki, Role.CUBELET, pb.FetchPausedArtifactRequest(
                    sandbox_id=sid, save_id=m.save_id, name="state"))
            assert e.value.code() is code, sid
        with pytest.raises(grpc.aio.AioRpcError) as e:  # another save of it
            await _fetch(world.address, pki, Role.CUBELET, pb.FetchPausedArtifactRequest(
                sandbox_id="served1", save_id="0" * 64, name="state"))
        assert e.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        for role in (Role.MASTER, Role.OPERATOR, Role.API, Role.PROXY):
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await _fetch(world.address, pki, role, ok)
            assert e.value.code() is grpc.StatusCode.PERMISSION_DENIED, role
    finally:
        await world.a.sandboxes.kill("served1")


def replace_name(req: pb.FetchPausedArtifactRequest, name: str) -> pb.FetchPausedArtifactRequest:
    out = pb.FetchPausedArtifactRequest()
    out.CopyFrom(req)
    out.name = name
    return out


async def test_the_node_reports_creates_resumes_and_capacity_on_metrics(world, pki):
    a = world.a
    figures = CubeletMetrics(CubeletService(a.settings, a.sandboxes, a.sandboxes.templates, "tcg")).register()
    listener = metrics.serve(f"127.0.0.1:{free_port()}", loop=asyncio.get_running_loop())
    assert listener is not None
    url = f"http://127.0.0.1:{listener.port}/metrics"

    def started(page, op: str, path: str) -> float:
        return page.value("cube_cubelet_sandbox_start_seconds_count", op=op, path=path)

    def handled(page, method: str, code: str = "OK") -> float:
        return page.value("cube_grpc_server_handled_total", service="cube.v1.Cubelet", method=method, code=code)

    try:
        before = await ascrape(url)
        async with mtls.aio_channel(world.address, tls(pki, Role.MASTER), Role.CUBELET) as ch:
            stub = cubelet_pb2_grpc.CubeletStub(ch)
            await stub.RunSandbox(pb.RunSandboxRequest(sandbox_id="metered1", template_id=TEMPLATE,
                                                       envd_access_token="tok"), timeout=120)
            created = await ascrape(url)
            await stub.PauseSandbox(pb.PauseSandboxRequest(sandbox_id="metered1"), timeout=120)
            paused = await ascrape(url)
            await stub.ResumeSandbox(pb.ResumeSandboxRequest(sandbox_id="metered1"), timeout=120)
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.GetSandbox(pb.SandboxRef(sandbox_id="nosuchsandbox"), timeout=10)
        after = await ascrape(url)

        # The create was a fresh clone of the probe's snapshot (no pool here): a miss, and its steps.
        assert started(created, "create", "clone") == started(before, "create", "clone") + 1
        assert created.value("cube_cubelet_warm_pool_claims_total", template=TEMPLATE, result="miss") == \
            before.value("cube_cubelet_warm_pool_claims_total", template=TEMPLATE, result="miss") + 1
        assert created.value("cube_cubelet_sandbox_create_step_seconds_count", step="clone") >= 1
        assert created.value("cube_cubelet_sandboxes", state="running") >= 1
        assert created.value("cube_cubelet_warm_pool_ready", template=TEMPLATE) == 0
        assert paused.value("cube_cubelet_sandboxes", state="paused") >= 1
        # Its resume restored its memory; every call is counted by method and status code.
        assert started(after, "resume", "restore") == started(before, "resume", "restore") + 1
        assert after.value("cube_cubelet_sandbox_start_seconds_bucket", op="resume", path="restore", le="+Inf") >= 1
        for method in ("RunSandbox", "PauseSandbox", "ResumeSandbox"):
            assert handled(after, method) == handled(before, method) + 1, method
        assert handled(after, "GetSandbox", "NOT_FOUND") == handled(before, "GetSandbox", "NOT_FOUND") + 1
        # The node's capacity, as its NodeStatus tells the masters.
        assert after.value("cube_node_info", node="a", accel="tcg") == 1
        assert after.value("cube_node_vcpus") >= 1 and after.value("cube_node_memory_bytes") > 0
        assert after.value("cube_node_disk_free_bytes") > after.value("cube_node_disk_watermark_bytes") > 0
        assert after.value("cube_node_templates") >= 1
    finally:
        listener.close()
        figures.unregister()
        await a.sandboxes.kill("metered1")
