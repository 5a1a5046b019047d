"""Templates between nodes (services/cubelet/transfer.py, pull.py, template_manifest.py), with real
parts: a probe template booted and snapshotted under TCG into node A's template store, A's real
Cubelet gRPC server under mutual TLS (deploy/pki.py certificates) with the node's real role gate,
a real etcd where A's registration says it holds the template, and stores of other nodes (each its
own state dir) pulling from it.

- B pulls the template (files checked against their digests, paths rewritten to B's copies), then
  clones a VM from B's copy and the guest answers with the state the snapshot froze; a second
  template sharing A's files is hard-linked on B, not fetched again.
- A byte flipped on A (a silent corruption: size and mtime kept) fails B's pull with a digest error
  and leaves nothing in B's store; a create for it on B answers UNAVAILABLE, one for a template no
  node has NOT_FOUND; a pull that would cross B's disk watermark is refused before any byte.
- A peer asking for anything but a manifest's name gets NOT_FOUND (INVALID_ARGUMENT for a bad id).
- Only a cubelet certificate may call the artifact RPCs, and a cubelet certificate nothing else.
- Concurrent pulls of one template make one transfer, and outlive an asker that gives up.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from google.protobuf import json_format

from cube_common import mtls
from cube_common.etcd import EtcdClient
from cube_common.keys import Keys
from cube_common.mtls import Role, TlsFiles
from deploy.pki import node_dirs
from sdk.gen.cube.v1 import cubelet_pb2 as pb, cubelet_pb2_grpc
from services.cubelet.artifact_files import CACHE, data_ranges
from services.cubelet.guest_agent import cube_agent
from services.cubelet.pull import EtcdPeers, PullError, TemplatePuller, _Incoming
from services.cubelet.sandboxes import SandboxError, SandboxManager
from services.cubelet.server import CubeletService, grpc_server
from services.cubelet.settings import CubeletSettings
from services.cubelet.template_manifest import ARTIFACTS
from services.cubelet.templates import Template, TemplateStore
from testkit import netlab, probe_root
from testkit.etcd import EtcdServer
from testkit.ports import free_port
from vmm_core import GuestConfig, GuestService, VmmSettings, boot, clone, ensure_guest_artifacts, input_key, snapshot
from vmm_core.disks import ext4_from_dir, writable_layer

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, taps, the VMM jail)"),
    pytest.mark.vm, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(600),
]

MEMORY_MB = 256
TEMPLATE = "probe"


@dataclass
class NodeA:
    store: TemplateStore
    address: str
    keys: Keys


@pytest.fixture(scope="module")
def workdir():
    d = Path(tempfile.mkdtemp(prefix="cube-transfer-test-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def vmm(workdir) -> VmmSettings:
    # The node's artifact cache (kernel, initramfs, base image), machines of this module only.
    return VmmSettings.from_env().with_overrides(runtime_dir=workdir / "vms")


def tls(root: Path, role: Role) -> TlsFiles:
    return TlsFiles(node_dirs(root)[role])


def node_settings(workdir: Path, node_id: str, etcd: EtcdServer | None = None, prefix: str = "/cube",
                  min_free_disk_mb: int = 64, pull_timeout_s: float = 600.0) -> CubeletSettings:
    endpoints = (etcd.endpoint,) if etcd is not None else ("127.0.0.1:2379",)
    return CubeletSettings(node_id=node_id, state_dir=workdir / node_id, etcd_endpoints=endpoints,
                           etcd_prefix=prefix, min_free_disk_mb=min_free_disk_mb,
                           template_pull_timeout_s=pull_timeout_s)


def probe_config() -> GuestConfig:
    return GuestConfig(services=(
        GuestService("http", ("/bin/httpd", "-f", "-p", str(probe_root.HTTP_PORT), "-h", "/www")),
        GuestService("counter", ("/bin/sh", "-c", probe_root.COUNTER))))


async def build_probe(store: TemplateStore, vmm: VmmSettings, workdir: Path, template_id: str) -> Template:
    """A template in ``store`` laid out as TemplateStore.build leaves one (image, snapshot, info.json),
    from the busybox probe root: booted, a file written to its disk, snapshotted with its counter
    process running in memory. (A real build would also need CubeVS for the guest's network.)"""
    guest = await asyncio.to_thread(ensure_guest_artifacts, vmm, cube_agent())
    key = input_key("transfer-test", template_id)
    work = store.settings.templates_dir / template_id / "builds" / key
    work.mkdir(parents=True)
    root = await asyncio.to_thread(probe_root.build, workdir / "probe-root")
    await asyncio.to_thread(ext4_from_dir, root, work / "image.ext4")
    rw = await asyncio.to_thread(writable_layer, work / "rw.img", 64, probe_config())
    n = netlab.TestNet.create()
    try:
        spec = guest.machine_spec(work / "image.ext4", rw, memory_mb=MEMORY_MB, network=n.attachment,
                                  memory_file=work / "memory")
        m = await boot(vmm, f"xfer-build-{template_id}", spec)
        try:
            await m.wait_guest(180)
            await n.wait_http("/cgi-bin/counter")
            assert await asyncio.to_thread(n.http_get, "/cgi-bin/put?origin=template") == "ok"
        except BaseException:
            await m.kill()
            raise
        await snapshot(m, work / "snapshot")
    finally:
        n.destroy()
    (work / "rw.img").unlink(missing_ok=True)
    info = pb.TemplateInfo(template_id=template_id, vcpus=1, memory_mb=MEMORY_MB, writable_layer_mb=64,
                           source="probe", node_id=store.settings.node_id)
    store.write_info(template_id, info, key, {"GREETING": "hello"})
    tpl = store.get(template_id)
    assert tpl is not None
    return tpl


def copy_template(store: TemplateStore, source: str, template_id: str, *, link: bool) -> Path:
    """Another template id on the same node with the same files (hard links), or with copies of
    them (sparse, times kept). Its snapshot metadata still names the source's image and guest files."""
    src = store.get(source)
    assert src is not None
    dest = store.settings.templates_dir / template_id

    def copy(s: str, d: str) -> None:
        if link:
            os.link(s, d)
        else:
            subprocess.run(["cp", "--sparse=always", "--preserve=all", s, d], check=True)

    shutil.copytree(src.dir, dest, copy_function=copy)
    (dest / "info.json").unlink()
    info = pb.TemplateInfo()
    info.CopyFrom(src.info)
    info.template_id = template_id
    store.write_info(template_id, info, src.build_key, src.env)
    return dest / "builds" / src.build_key


def flip_a_byte(path: Path) -> None:
    """Change one byte of the file's data where it holds data, keeping its size and times: what a
    failing disk does, and what no size or mtime check sees."""
    st = os.stat(path)
    fd = os.open(path, os.O_RDWR)
    try:
        start, _ = next(data_ranges(fd, st.st_size))
        offset = start + 17
        os.pwrite(fd, bytes([os.pread(fd, 1, offset)[0] ^ 0xFF]), offset)
    finally:
        os.close(fd)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def node_a(workdir, vmm, pki, etcd_server) -> AsyncIterator[NodeA]:
    """Node A: the probe template, a copy of it whose memory rots on disk ("rotten"), a hard-linked
    copy ("probe-twin"); its gRPC server under mutual TLS; its registration in etcd."""
    settings = node_settings(workdir, "a")
    store = TemplateStore(settings, vmm, vs=None)  # type: ignore[arg-type]  # no build runs here
    await build_probe(store, vmm, workdir, TEMPLATE)
    copy_template(store, TEMPLATE, "probe-twin", link=True)
    rotten = copy_template(store, TEMPLATE, "rotten", link=False)
    service = CubeletService(settings, SandboxManager(settings, vmm, None, store),  # type: ignore[arg-type]
                             store, "tcg")
    # Digests are cached when first asked for; the byte rots after that, as it would on a disk.
    await service.artifacts.manifest("rotten")
    flip_a_byte(rotten / "snapshot" / "memory")
    address = f"127.0.0.1:{free_port()}"
    server = grpc_server(service, address, tls(pki, Role.CUBELET))
    await server.start()
    keys = Keys(f"/transfer-test-{os.getpid()}")
    await register(etcd_server, keys, pb.NodeStatus(node_id="a", address=address,
                                                    templates=[t.template_id for t in store.list()]))
    try:
        yield NodeA(store, address, keys)
    finally:
        await server.stop(grace=None)


async def register(etcd_server: EtcdServer, keys: Keys, status: pb.NodeStatus) -> None:
    """What a node's registration (services/cubelet/registration.py) writes, without its lease."""
    etcd = EtcdClient((etcd_server.endpoint,))
    try:
        await etcd.put(keys.node(status.node_id), json_format.MessageToJson(status, indent=None).encode())
    finally:
        await etcd.close()


def puller_for(settings: CubeletSettings, pki: Path, vmm: VmmSettings) -> TemplatePuller:
    store = TemplateStore(settings, vmm, vs=None)  # type: ignore[arg-type]
    # etcd runs plaintext here; the peers are dialed with B's cubelet certificate.
    return TemplatePuller(settings, store, tls(pki, Role.CUBELET), peers=EtcdPeers(settings, None))


def store_leftovers(settings: CubeletSettings) -> list[str]:
    root = settings.templates_dir
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


# ---- pulling ------------------------------------------------------------------------------------

async def test_pulled_template_clones_and_the_guest_answers(node_a, workdir, vmm, pki, etcd_server, caplog):
    caplog.set_level(logging.INFO, logger="cubelet.pull")
    b = node_settings(workdir, "b", etcd_server, node_a.keys.root)
    puller = puller_for(b, pki, vmm)
    poked = []
    puller.store.on_change = lambda: poked.append(True)
    try:
        tpl = await puller.pull(TEMPLATE)
        assert poked, "the node registration was not told: B would not advertise the template"
        assert [t.template_id for t in puller.store.list()] == [TEMPLATE]
        assert store_leftovers(b) == [TEMPLATE]  # no staging dir left
        source = node_a.store.get(TEMPLATE)
        assert source is not None
        assert (tpl.build_key, tpl.env, tpl.info.memory_mb) == (source.build_key, {"GREETING": "hello"}, MEMORY_MB)

        # Every file the snapshot names is B's own copy; the snapshot's files are read-only and
        # root's, exactly as a local build leaves them; directories are private.
        snap = tpl.load_snapshot()
        named = [snap.spec.kernel, snap.spec.initramfs, snap.memory, *(d.path for d in snap.spec.disks)]
        assert all(p.is_relative_to(tpl.build_dir) and p.is_file() for p in named), named
        for name in ("memory", "state", "disk.img"):
            st = os.stat(tpl.build_dir / ARTIFACTS[name])
            assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o444, 0, 0), name
        assert stat.S_IMODE(os.stat(tpl.snapshot_dir / "overlay.qcow2").st_mode) == 0o444
        for d in (tpl.dir, tpl.build_dir, tpl.snapshot_dir, tpl.build_dir / "guest"):
            assert stat.S_IMODE(os.stat(d).st_mode) == 0o700, d
        # The memory stayed sparse: its holes were not sent, nor written.
        mem = os.stat(snap.memory)
        assert mem.st_size == MEMORY_MB << 20 and mem.st_blocks * 512 < mem.st_size
        assert json.loads((tpl.build_dir / CACHE).read_text())["artifacts"].keys() == ARTIFACTS.keys()

        net = netlab.TestNet.create()
        machine = None
        try:
            machine = await clone(vmm, snap, "xfer-clone", net.attachment)
            # The disk the snapshot froze, and the process that only lived in its memory, go on.
            assert await asyncio.to_thread(net.http_get, "/cgi-bin/get?origin") == "template"
            pid, count = (await asyncio.to_thread(net.http_get, "/cgi-bin/counter")).split()
            await asyncio.sleep(0.6)
            pid2, count2 = (await asyncio.to_thread(net.http_get, "/cgi-bin/counter")).split()
            assert pid == pid2 and int(count2) > int(count)
        finally:
            if machine is not None:
                await machine.kill()
            net.destroy()

        # A second template with the same files on A: B links what it has instead of fetching it.
        caplog.clear()
        twin = await puller.pull("probe-twin")
        pulled = [r for r in caplog.records if r.getMessage() == "template pulled"]
        assert len(pulled) == 1
        meta_size = os.stat(twin.snapshot_dir / "snapshot.json").st_size
        assert pulled[0].__dict__["bytes_received"] < 2 * meta_size  # only the snapshot metadata came
        assert os.stat(twin.snapshot_dir / "memory").st_ino == os.stat(tpl.snapshot_dir / "memory").st_ino
        assert twin.load_snapshot().spec.kernel.is_relative_to(twin.build_dir)
    finally:
        await puller.close()


async def test_concurrent_pulls_make_one_transfer_and_outlive_their_askers(node_a, workdir, vmm, pki,
                                                                           etcd_server, caplog):
    caplog.set_level(logging.INFO, logger="cubelet.transfer")
    c = node_settings(workdir, "c", etcd_server, node_a.keys.root)
    puller = puller_for(c, pki, vmm)
    try:
        askers = [asyncio.create_task(puller.pull(TEMPLATE)) for _ in range(5)]
        await asyncio.sleep(0.3)
        askers[0].cancel()  # its create gave up: the pull goes on for the others (and the next create)
        results = await asyncio.gather(*askers[1:])
        assert askers[0].cancelled()
        assert {(t.template_id, t.build_key) for t in results} == {(TEMPLATE, results[0].build_key)}
        messages = [r.getMessage() for r in caplog.records]
        assert messages.count("template manifest served") == 1
        assert messages.count("template artifact served") == len(ARTIFACTS)
        assert (await puller.pull(TEMPLATE)).build_key == results[0].build_key  # now local: no transfer
        assert [r.getMessage() for r in caplog.records].count("template manifest served") == 1
    finally:
        await puller.close()


async def test_a_rotten_artifact_fails_the_pull_and_leaves_nothing(node_a, workdir, vmm, pki, etcd_server):
    d = node_settings(workdir, "d", etcd_server, node_a.keys.root)
    puller = puller_for(d, pki, vmm)
    try:
        with pytest.raises(PullError) as e:
            await puller.pull("rotten")
        assert e.value.code == "UNAVAILABLE"
        assert "memory: sha256 digest mismatch" in str(e.value) and "from node a" in str(e.value)
        assert store_leftovers(d) == [] and puller.store.get("rotten") is None

        # Through a create, as the master sees it: a status it moves on from, with the reason.
        sandboxes = SandboxManager(d, vmm, None, puller.store)  # type: ignore[arg-type]
        sandboxes.pull_template = puller.pull
        for template_id, code, why in (("rotten", "UNAVAILABLE", "digest mismatch"),
                                       ("nowhere", "NOT_FOUND", "nor on any other node")):
            with pytest.raises(SandboxError) as refused:
                await sandboxes.run(pb.RunSandboxRequest(sandbox_id="s1", template_id=template_id))
            assert refused.value.code == code and why in str(refused.value)
        assert store_leftovers(d) == [] and list(d.sandboxes_dir.iterdir()) == []
    finally:
        await puller.close()


async def test_a_pull_that_would_cross_the_disk_watermark_is_refused(node_a, workdir, vmm, pki, etcd_server):
    free_mb = shutil.disk_usage(workdir).free >> 20
    # Room for the watermark now, not for the template on top of it.
    e_settings = node_settings(workdir, "e", etcd_server, node_a.keys.root, min_free_disk_mb=max(1, free_mb - 64))
    puller = puller_for(e_settings, pki, vmm)
    try:
        with pytest.raises(PullError) as e:
            await puller.pull(TEMPLATE)
        assert e.value.code == "RESOURCE_EXHAUSTED" and "no room for template" in str(e.value)
        assert store_leftovers(e_settings) == []
    finally:
        await puller.close()


async def test_a_pull_past_its_deadline_stops_and_leaves_nothing(node_a, workdir, vmm, pki, etcd_server):
    """Cut off mid-stream (the template's files take seconds here): nothing of it stays."""
    g = node_settings(workdir, "g", etcd_server, node_a.keys.root, pull_timeout_s=0.2)
    puller = puller_for(g, pki, vmm)
    try:
        with pytest.raises(PullError) as e:
            await puller.pull(TEMPLATE)
        assert e.value.code == "UNAVAILABLE" and "did not finish within 0.2s" in str(e.value)
        assert store_leftovers(g) == []
    finally:
        await puller.close()


async def test_a_stream_that_is_not_one_file_in_order_is_refused(tmp_path):
    """Chunks must move forward without overlapping and stay within the manifest's size."""
    data = b"0123456789"
    art = pb.TemplateArtifact(name="state", size=len(data), sha256=hashlib.sha256(data).hexdigest(), mode=0o444)
    good = _Incoming(tmp_path / "good", art)
    good.write(0, data[:4])
    good.write(6, data[6:])  # a gap: must read as zeros, which these bytes are not
    with pytest.raises(PullError, match="digest mismatch"):
        good.finish()
    good.close()
    for chunks in ([(4, b"45"), (3, b"3")], [(8, b"890")]):
        incoming = _Incoming(tmp_path / f"bad{chunks[0][0]}", art)
        with pytest.raises(PullError, match="not a stream of this file"):
            for offset, chunk in chunks:
                incoming.write(offset, chunk)
        incoming.close()
    sparse = b"ab" + bytes(6) + b"yz"
    ok = _Incoming(tmp_path / "sparse", pb.TemplateArtifact(name="state", size=10, mode=0o4755,
                                                            sha256=hashlib.sha256(sparse).hexdigest()))
    ok.write(0, b"ab")
    ok.write(8, b"yz")
    ok.finish()
    ok.close()
    assert (tmp_path / "sparse").read_bytes() == sparse
    assert stat.S_IMODE(os.stat(tmp_path / "sparse").st_mode) == 0o644  # no setuid, no execute


async def test_a_dead_holder_is_passed_over(node_a, workdir, vmm, pki, etcd_server):
    """Two holders listed, the first one (least busy) unreachable: the pull comes from the other."""
    f = node_settings(workdir, "f", etcd_server, node_a.keys.root + "-dead-first")
    keys = Keys(f.etcd_prefix)
    for status in (pb.NodeStatus(node_id="dead", address=f"127.0.0.1:{free_port()}", templates=[TEMPLATE]),
                   pb.NodeStatus(node_id="a", address=node_a.address, templates=[TEMPLATE], sandboxes_running=3)):
        await register(etcd_server, keys, status)
    puller = puller_for(f, pki, vmm)
    try:
        assert (await puller.pull(TEMPLATE)).template_id == TEMPLATE
    finally:
        await puller.close()


# ---- what a peer may ask ----------------------------------------------------------------------------

async def _fetch(address: str, client: TlsFiles, req: pb.FetchArtifactRequest) -> int:
    async with mtls.aio_channel(address, client, Role.CUBELET) as ch:
        return sum([len(c.data) async for c in cubelet_pb2_grpc.CubeletStub(ch).FetchTemplateArtifact(req, timeout=30)])


async def test_a_peer_gets_only_the_manifests_names(node_a, pki):
    me = tls(pki, Role.CUBELET)
    tpl = node_a.store.get(TEMPLATE)
    assert tpl is not None
    ok = pb.FetchArtifactRequest(template_id=TEMPLATE, build_key=tpl.build_key, name="state")
    assert await _fetch(node_a.address, me, ok) == os.stat(tpl.snapshot_dir / "state").st_size
    for name in ("../x", "/etc/passwd", "../../../../etc/shadow", "snapshot/memory", CACHE, "info.json",
                 "overlay.qcow2", ""):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await _fetch(node_a.address, me, pb.FetchArtifactRequest(template_id=TEMPLATE, build_key=tpl.build_key,
                                                                      name=name))
        assert e.value.code() is grpc.StatusCode.NOT_FOUND, name
    for template_id in ("../a", "/etc", "a/../probe", ".."):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await _fetch(node_a.address, me, pb.FetchArtifactRequest(template_id=template_id, name="state"))
        assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT, template_id
    with pytest.raises(grpc.aio.AioRpcError) as e:  # a build the template no longer is
        await _fetch(node_a.address, me, pb.FetchArtifactRequest(template_id=TEMPLATE, build_key="0" * 16,
                                                                  name="state"))
    assert e.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    async with mtls.aio_channel(node_a.address, me, Role.CUBELET) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await cubelet_pb2_grpc.CubeletStub(ch).GetTemplateManifest(
                pb.GetTemplateManifestRequest(template_id="nowhere"), timeout=10)
        assert e.value.code() is grpc.StatusCode.NOT_FOUND


async def test_only_cubelets_fetch_templates_and_do_nothing_else(node_a, pki, other_pki):
    tpl = node_a.store.get(TEMPLATE)
    assert tpl is not None
    fetch = pb.FetchArtifactRequest(template_id=TEMPLATE, build_key=tpl.build_key, name="state")
    for role in (Role.API, Role.MASTER, Role.OPERATOR, Role.PROXY):
        async with mtls.aio_channel(node_a.address, tls(pki, role), Role.CUBELET) as ch:
            stub = cubelet_pb2_grpc.CubeletStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.GetTemplateManifest(pb.GetTemplateManifestRequest(template_id=TEMPLATE), timeout=10)
            assert e.value.code() is grpc.StatusCode.PERMISSION_DENIED, role
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await _fetch(node_a.address, tls(pki, role), fetch)
            assert e.value.code() is grpc.StatusCode.PERMISSION_DENIED, role
    async with mtls.aio_channel(node_a.address, tls(pki, Role.CUBELET), Role.CUBELET) as ch:
        stub = cubelet_pb2_grpc.CubeletStub(ch)
        for call, req in ((stub.RunSandbox, pb.RunSandboxRequest(sandbox_id="s1", template_id=TEMPLATE)),
                          (stub.DeleteTemplate, pb.DeleteTemplateRequest(template_id=TEMPLATE)),
                          (stub.ListSandboxes, pb.ListSandboxesRequest())):
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await call(req, timeout=10)
            assert e.value.code() is grpc.StatusCode.PERMISSION_DENIED
            assert "cubelet certificate" in (e.value.details() or "")
    # A cubelet of another cluster (another CA) does not get past the handshake.
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await _fetch(node_a.address, tls(other_pki, Role.CUBELET), fetch)
    assert e.value.code() is grpc.StatusCode.UNAVAILABLE
    assert node_a.store.get(TEMPLATE) is not None


# ---- prefetching --------------------------------------------------------------------------------

async def put_template_record(etcd_server: EtcdServer, keys: Keys, template_id: str, status: int) -> None:
    """The master's cluster record of a template (what the prefetcher trusts over the nodes' lists)."""
    from sdk.gen.cube.v1 import master_pb2
    etcd = EtcdClient((etcd_server.endpoint,))
    try:
        rec = master_pb2.Template(template_id=template_id, status=status)  # type: ignore[arg-type]
        await etcd.put(keys.template(template_id), json_format.MessageToJson(rec, indent=None).encode())
    finally:
        await etcd.close()


async def test_ready_templates_are_prefetched_and_no_others(node_a, workdir, vmm, pki, etcd_server):
    from sdk.gen.cube.v1 import master_pb2
    from services.cubelet.prefetch import Prefetcher
    # A holds probe, probe-twin and rotten. Only probe-twin is READY in the cluster's records;
    # probe is still BUILDING (say, rebuilt), rotten has no record at all (deleted; A lags behind).
    await put_template_record(etcd_server, node_a.keys, "probe-twin", master_pb2.TEMPLATE_STATUS_READY)
    await put_template_record(etcd_server, node_a.keys, TEMPLATE, master_pb2.TEMPLATE_STATUS_BUILDING)
    c = node_settings(workdir, "prefetching", etcd_server, node_a.keys.root)
    puller = puller_for(c, pki, vmm)
    assert isinstance(puller.peers, EtcdPeers)
    prefetcher = Prefetcher(c, puller.store, puller, puller.peers)
    try:
        assert await prefetcher.wanted() == ["probe-twin"]
        assert await prefetcher.run_once() == ["probe-twin"]
        assert [t.template_id for t in puller.store.list()] == ["probe-twin"]
        # Held now: nothing more to fetch, and a second round fetches nothing.
        assert await prefetcher.wanted() == [] and await prefetcher.run_once() == []
    finally:
        await prefetcher.stop()
        await puller.close()
        await asyncio.to_thread(shutil.rmtree, c.state_dir, True)
