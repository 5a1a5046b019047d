"""Volumes through the real master (real etcd, fake nodes): records and their name index, teams'
isolation and limits, the token of the content calls and their relay to the node, and sandboxes
that mount volumes (claims, placement on the volume's node, release whenever the record goes,
snapshot and fork refused). After every failure etcd holds nothing of what failed."""

from __future__ import annotations

import json

import grpc
import pytest
from google.protobuf import json_format

from sdk.gen.cube.v1 import cubelet_pb2 as C, master_pb2 as P
from tests.control.cluster import wait_until
from tests.control.fake_cubelet import FakeVolume
from tests.control.teams_support import as_caller

A = as_caller("vol-team-a", "user")
B = as_caller("vol-team-b", "user")


@pytest.fixture(scope="module")
def stub(cluster):
    ch, s = cluster.master_stub()
    for team in ("vol-team-a", "vol-team-b"):
        try:
            s.CreateTeam(P.CreateTeamRequest(team_id=team), timeout=10)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.ALREADY_EXISTS
    with ch:
        yield s


@pytest.fixture
def clean(cluster, stub):
    """No sandboxes or volumes left from an earlier test (etcd and the node)."""
    cluster.wipe_sandboxes()
    cluster.etcd.delete_prefix(f"{cluster.prefix}/volumes/")
    cluster.etcd.delete_prefix(f"{cluster.prefix}/volume-names/")
    for c in cluster.cubelets:
        c.volumes.clear()
        c.fail_calls.clear()
    yield cluster
    cluster.wipe_sandboxes()
    for c in cluster.cubelets:
        c.fail_calls.clear()


def code(fn, *a, **kw) -> tuple[grpc.StatusCode, str]:
    try:
        fn(*a, timeout=30, **kw)
    except grpc.RpcError as e:
        return e.code(), e.details() or ""
    return grpc.StatusCode.OK, ""


def volume_keys(cluster) -> list[str]:
    return cluster.keys("volumes/") + cluster.keys("volume-names/")


def content(stub, vol: P.Volume, op, path: str = "/", token: str | None = None, **kw) -> C.VolumeContentResponse:
    return stub.VolumeContent(C.VolumeContentRequest(volume_id=vol.volume_id, op=op, path=path,
                                                     token=vol.token if token is None else token, **kw), timeout=30)


def write(stub, vol: P.Volume, path: str, data: bytes, force: bool = False, chunk: int = 32 << 10) -> C.VolumeEntry:
    def msgs():
        yield C.VolumeFileChunk(request=C.VolumeContentRequest(volume_id=vol.volume_id, token=vol.token, path=path,
                                                               op=C.VOLUME_OP_WRITE_FILE, force=force),
                                data=data[:chunk], eof=len(data) <= chunk)
        for i in range(chunk, len(data), chunk):
            yield C.VolumeFileChunk(data=data[i:i + chunk], eof=i + chunk >= len(data))
    return stub.WriteVolumeFile(msgs(), timeout=30)


def read(stub, vol: P.Volume, path: str) -> tuple[C.VolumeEntry, bytes]:
    chunks = list(stub.ReadVolumeFile(C.VolumeContentRequest(volume_id=vol.volume_id, token=vol.token, path=path,
                                                             op=C.VOLUME_OP_READ_FILE), timeout=30))
    return chunks[0].entry, b"".join(c.data for c in chunks)


# ---- records ---------------------------------------------------------------------------------------

def test_create_get_list_delete(clean, stub):
    vol = stub.CreateVolume(P.CreateVolumeRequest(name="data"), metadata=A, timeout=30)
    assert len(vol.volume_id) == 20 and vol.volume_id.isalnum() and vol.volume_id.islower()
    assert vol.name == "data" and vol.team_id == "vol-team-a" and vol.node_id == "node-a"
    assert vol.size_bytes == 1024 << 20 and len(vol.token) >= 40 and not vol.mounted_by
    node = clean.cubelets[0]
    assert node.volumes[vol.volume_id].team_id == "vol-team-a"
    # By id and by name; the list is the team's, by name.
    assert stub.GetVolume(P.GetVolumeRequest(volume_id=vol.volume_id), metadata=A, timeout=10) == vol
    assert stub.GetVolume(P.GetVolumeRequest(volume_id="data"), metadata=A, timeout=10) == vol
    other = stub.CreateVolume(P.CreateVolumeRequest(name="a-first"), metadata=A, timeout=30)
    listed = stub.ListVolumes(P.ListVolumesRequest(), metadata=A, timeout=10).volumes
    assert [v.name for v in listed] == ["a-first", "data"]
    # etcd: the record and the index (proto3 JSON).
    rec = clean.etcd.get_json(f"{clean.prefix}/volumes/{vol.volume_id}")
    assert rec["name"] == "data" and rec["teamId"] == "vol-team-a"
    idx = clean.etcd.get_json(f"{clean.prefix}/volume-names/vol-team-a/data")
    assert idx["volumeId"] == vol.volume_id
    assert stub.DeleteVolume(P.DeleteVolumeRequest(volume_id="data"), metadata=A, timeout=30).deleted
    assert vol.volume_id not in node.volumes
    assert code(stub.GetVolume, P.GetVolumeRequest(volume_id=vol.volume_id), metadata=A)[0] == \
        grpc.StatusCode.NOT_FOUND
    assert code(stub.DeleteVolume, P.DeleteVolumeRequest(volume_id=vol.volume_id), metadata=A)[0] == \
        grpc.StatusCode.NOT_FOUND
    stub.DeleteVolume(P.DeleteVolumeRequest(volume_id=other.volume_id), metadata=A, timeout=30)
    assert volume_keys(clean) == []


def test_names_are_unique_per_team_and_teams_are_isolated(clean, stub):
    a = stub.CreateVolume(P.CreateVolumeRequest(name="shared"), metadata=A, timeout=30)
    c, msg = code(stub.CreateVolume, P.CreateVolumeRequest(name="shared"), metadata=A)
    assert c == grpc.StatusCode.ALREADY_EXISTS and "shared" in msg
    b = stub.CreateVolume(P.CreateVolumeRequest(name="shared"), metadata=B, timeout=30)
    assert a.volume_id != b.volume_id
    # Another team's volume is NOT_FOUND, as an unknown one, by id or name, for every call.
    for ref in (a.volume_id, "shared-not"):
        c1, m1 = code(stub.GetVolume, P.GetVolumeRequest(volume_id=ref), metadata=B)
        assert c1 == grpc.StatusCode.NOT_FOUND and "not found" in m1
    assert stub.GetVolume(P.GetVolumeRequest(volume_id="shared"), metadata=B, timeout=10).volume_id == b.volume_id
    assert code(stub.DeleteVolume, P.DeleteVolumeRequest(volume_id=a.volume_id), metadata=B)[0] == \
        grpc.StatusCode.NOT_FOUND
    assert [v.volume_id for v in stub.ListVolumes(P.ListVolumesRequest(), metadata=B, timeout=10).volumes] == \
        [b.volume_id]
    # An operator sees every team's; its own creates go to the local team.
    every = stub.ListVolumes(P.ListVolumesRequest(), timeout=10).volumes
    assert {v.volume_id for v in every} == {a.volume_id, b.volume_id}
    local = stub.CreateVolume(P.CreateVolumeRequest(name="shared"), timeout=30)
    assert local.team_id == "local"
    for vol, md in ((a, A), (b, B), (local, ())):
        stub.DeleteVolume(P.DeleteVolumeRequest(volume_id=vol.volume_id), metadata=md, timeout=30)
    assert volume_keys(clean) == []


@pytest.mark.parametrize("name", ["", "-x", "a/b", "x" * 64, "é"])
def test_invalid_names(clean, stub, name):
    c, _ = code(stub.CreateVolume, P.CreateVolumeRequest(name=name), metadata=A)
    assert c == grpc.StatusCode.INVALID_ARGUMENT
    assert volume_keys(clean) == []


def test_a_node_failure_leaves_nothing(clean, stub):
    node = clean.cubelets[0]
    node.fail_calls["CreateVolume"] = grpc.StatusCode.RESOURCE_EXHAUSTED
    c, _ = code(stub.CreateVolume, P.CreateVolumeRequest(name="full"), metadata=A)
    assert c == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert volume_keys(clean) == [] and not node.volumes
    # The name is free again.
    node.fail_calls.clear()
    vol = stub.CreateVolume(P.CreateVolumeRequest(name="full"), metadata=A, timeout=30)
    stub.DeleteVolume(P.DeleteVolumeRequest(volume_id=vol.volume_id), metadata=A, timeout=30)


def test_an_abandoned_reservation_is_cleaned_by_the_next_create(clean, stub):
    """A master that died between its reservation and the node's answer left a record (and maybe
    an image): a create of the same name past the deadline removes both and goes on."""
    node = clean.cubelets[0]
    stale = P.Volume(volume_id="z" * 20, name="orphan", team_id="vol-team-a", node_id="node-a", token="t")
    stale.created_at.FromSeconds(1_000_000)
    body = json_format.MessageToJson(stale, indent=None)
    clean.etcd.put(f"{clean.prefix}/volumes/{stale.volume_id}", body)
    clean.etcd.put(f"{clean.prefix}/volume-names/vol-team-a/orphan", body)
    node.volumes[stale.volume_id] = FakeVolume(stale.volume_id, "vol-team-a", 1 << 20)  # the image it made
    # Hidden meanwhile: a reservation is no volume yet.
    assert code(stub.GetVolume, P.GetVolumeRequest(volume_id="orphan"), metadata=A)[0] == grpc.StatusCode.NOT_FOUND
    vol = stub.CreateVolume(P.CreateVolumeRequest(name="orphan"), metadata=A, timeout=30)
    assert vol.volume_id != stale.volume_id
    assert stale.volume_id in node.calls_of("DeleteVolume") and stale.volume_id not in node.volumes
    assert clean.etcd.get(f"{clean.prefix}/volumes/{stale.volume_id}") is None
    stub.DeleteVolume(P.DeleteVolumeRequest(volume_id=vol.volume_id), metadata=A, timeout=30)


def test_the_reconciler_cleans_an_abandoned_reservation(clean, stub):
    node = clean.cubelets[0]
    stale = P.Volume(volume_id="y" * 20, name="left", team_id="vol-team-a", node_id="node-a", token="t")
    stale.created_at.FromSeconds(1_000_000)
    body = json_format.MessageToJson(stale, indent=None)
    node.volumes[stale.volume_id] = FakeVolume(stale.volume_id, "vol-team-a", 1 << 20)
    clean.etcd.put(f"{clean.prefix}/volume-names/vol-team-a/left", body)
    clean.etcd.put(f"{clean.prefix}/volumes/{stale.volume_id}", body)
    wait_until(lambda: volume_keys(clean) == [], timeout=15, what="the reservation removed")
    assert stale.volume_id not in node.volumes


def test_team_limits(own_cluster):
    own_cluster.add_cubelet("node-a")
    own_cluster.start_master(CUBE_MASTER_VOLUMES_PER_TEAM="2", CUBE_MASTER_VOLUME_SIZE_MB="64",
                             CUBE_MASTER_VOLUME_TEAM_MB="150")
    big = own_cluster.start_master(name="big", wait_leader=False, CUBE_MASTER_VOLUMES_PER_TEAM="2",
                                   CUBE_MASTER_VOLUME_SIZE_MB="100", CUBE_MASTER_VOLUME_TEAM_MB="150")
    ch, stub = own_cluster.master_stub()
    with ch:
        for name in ("one", "two"):
            assert stub.CreateVolume(P.CreateVolumeRequest(name=name), timeout=30).size_bytes == 64 << 20
        c, msg = code(stub.CreateVolume, P.CreateVolumeRequest(name="three"))
        assert c == grpc.StatusCode.RESOURCE_EXHAUSTED and "2 volumes" in msg, msg
    # Bytes: another team, where each volume is 100 MiB against 150 MiB.
    ch, stub = own_cluster.master_stub(big)
    with ch:
        stub.CreateTeam(P.CreateTeamRequest(team_id="bytes"), timeout=10)
        md = as_caller("bytes", "user")
        stub.CreateVolume(P.CreateVolumeRequest(name="one"), metadata=md, timeout=30)
        c, msg = code(stub.CreateVolume, P.CreateVolumeRequest(name="two"), metadata=md)
        assert c == grpc.StatusCode.RESOURCE_EXHAUSTED and "150 MiB" in msg, msg
    names = own_cluster.keys("volume-names/")
    assert sorted(k.split("/volume-names/")[1] for k in names) == ["bytes/one", "local/one", "local/two"]


# ---- content ---------------------------------------------------------------------------------------

def test_token_and_content_calls(clean, stub):
    vol = stub.CreateVolume(P.CreateVolumeRequest(name="files"), metadata=A, timeout=30)
    node = clean.cubelets[0]
    # Wrong or missing token: UNAUTHENTICATED; an unknown volume: NOT_FOUND. No team needed.
    for token in ("", "x" * 43, vol.token[:-1]):
        with pytest.raises(grpc.RpcError) as e:
            content(stub, vol, C.VOLUME_OP_STAT, token=token)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED and e.value.details() == "invalid volume token"
    with pytest.raises(grpc.RpcError) as e:
        stub.VolumeContent(C.VolumeContentRequest(volume_id="q" * 20, token=vol.token, op=C.VOLUME_OP_STAT), timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert not node.calls_of("VolumeContent")
    # The operations, relayed to the node with the team filled in and no token.
    root = content(stub, vol, C.VOLUME_OP_STAT).entries[0]
    assert root.type == C.VOLUME_ENTRY_TYPE_DIRECTORY and root.path == "/"
    with pytest.raises(grpc.RpcError) as e:
        content(stub, vol, C.VOLUME_OP_MAKE_DIR, "/a/b")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and e.value.details() == "parent directory /a does not exist"
    assert content(stub, vol, C.VOLUME_OP_MAKE_DIR, "/a/b", force=True).entries[0].path == "/a/b"
    with pytest.raises(grpc.RpcError) as e:
        content(stub, vol, C.VOLUME_OP_MAKE_DIR, "/a/b")
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS
    data = bytes(range(256)) * 1200  # ~300 KiB: several chunks both ways
    entry = write(stub, vol, "/a/b/f.bin", data)
    assert entry.size == len(data) and entry.type == C.VOLUME_ENTRY_TYPE_FILE
    got_entry, got = read(stub, vol, "/a/b/f.bin")
    assert got == data and got_entry.path == "/a/b/f.bin"
    write(stub, vol, "/x/y/new.txt", b"hi", force=True)
    assert [e.path for e in content(stub, vol, C.VOLUME_OP_LIST, "/").entries] == ["/a", "/x"]
    assert [e.path for e in content(stub, vol, C.VOLUME_OP_LIST, "/", depth=3).entries] == \
        ["/a", "/a/b", "/a/b/f.bin", "/x", "/x/y", "/x/y/new.txt"]
    upd = content(stub, vol, C.VOLUME_OP_UPDATE_METADATA, "/x/y/new.txt", mode=0o600, uid=1000).entries[0]
    assert (upd.mode, upd.uid, upd.gid) == (0o600, 1000, 0)
    assert list(content(stub, vol, C.VOLUME_OP_REMOVE, "/a").entries) == []
    # The node's own errors come through unchanged.
    with pytest.raises(grpc.RpcError) as e:
        read(stub, vol, "/a/b/f.bin")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and e.value.details() == "/a/b/f.bin does not exist"
    with pytest.raises(grpc.RpcError) as e:
        content(stub, vol, C.VOLUME_OP_STAT, "/../etc")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    stub.DeleteVolume(P.DeleteVolumeRequest(volume_id=vol.volume_id), metadata=A, timeout=30)


# ---- sandboxes with volumes ------------------------------------------------------------------------

def mounts(*pairs: tuple[str, str]) -> list[P.SandboxVolumeMount]:
    return [P.SandboxVolumeMount(name=n, path=p) for n, p in pairs]


def test_a_sandbox_claims_its_volumes_until_it_is_killed(clean, stub):
    vol = stub.CreateVolume(P.CreateVolumeRequest(name="work"), metadata=A, timeout=30)
    node = clean.cubelets[0]
    sbx = stub.CreateSandbox(P.CreateSandboxRequest(template="tiny", volume_mounts=mounts(("work", "/mnt/work/"))),
                             metadata=A, timeout=30)
    assert [(m.volume_id, m.team_id, m.path, m.name) for m in sbx.volume_mounts] == \
        [(vol.volume_id, "vol-team-a", "/mnt/work", "work")]
    assert node.mounted_volumes(sbx.sandbox_id) == [vol.volume_id]
    assert stub.GetVolume(P.GetVolumeRequest(volume_id="work"), metadata=A, timeout=10).mounted_by == sbx.sandbox_id
    # Mounted: content calls, a delete and a second sandbox are refused.
    with pytest.raises(grpc.RpcError) as e:
        content(stub, vol, C.VOLUME_OP_STAT)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert e.value.details() == (f"volume work is mounted by sandbox {sbx.sandbox_id}; use the sandbox's "
                                 "filesystem API or kill it first")
    c, msg = code(stub.DeleteVolume, P.DeleteVolumeRequest(volume_id="work"), metadata=A)
    assert c == grpc.StatusCode.FAILED_PRECONDITION and msg == f"volume work is mounted by sandbox {sbx.sandbox_id}"
    c, msg = code(stub.CreateSandbox, P.CreateSandboxRequest(template="tiny", volume_mounts=mounts(("work", "/d"))),
                  metadata=A)
    assert c == grpc.StatusCode.FAILED_PRECONDITION and f"mounted by sandbox {sbx.sandbox_id}" in msg
    # No snapshot nor fork of it.
    why = "sandboxes with volumes cannot be snapshotted or forked: the volume is not part of the snapshot"
    assert code(stub.SnapshotSandbox, P.SnapshotSandboxRecordRequest(sandbox_id=sbx.sandbox_id), metadata=A) == \
        (grpc.StatusCode.FAILED_PRECONDITION, why)
    assert code(stub.ForkSandbox, P.ForkSandboxRequest(sandbox_id=sbx.sandbox_id), metadata=A) == \
        (grpc.StatusCode.FAILED_PRECONDITION, why)
    # A pause keeps the claim; a resume stays where the volume is.
    stub.PauseSandboxRecord(P.PauseSandboxRecordRequest(sandbox_id=sbx.sandbox_id), metadata=A, timeout=30)
    assert stub.GetVolume(P.GetVolumeRequest(volume_id="work"), metadata=A, timeout=10).mounted_by == sbx.sandbox_id
    resumed = stub.ConnectSandbox(P.ConnectSandboxRequest(sandbox_id=sbx.sandbox_id), metadata=A, timeout=30)
    assert resumed.resumed and resumed.sandbox.node_id == "node-a"
    assert list(resumed.sandbox.volume_mounts) == list(sbx.volume_mounts)
    # Killed: released.
    stub.KillSandboxRecord(P.KillSandboxRecordRequest(sandbox_id=sbx.sandbox_id), metadata=A, timeout=30)
    assert not stub.GetVolume(P.GetVolumeRequest(volume_id="work"), metadata=A, timeout=10).mounted_by
    assert content(stub, vol, C.VOLUME_OP_STAT).entries[0].path == "/"
    stub.DeleteVolume(P.DeleteVolumeRequest(volume_id="work"), metadata=A, timeout=30)
    assert volume_keys(clean) == []


def test_a_failed_create_releases_its_claims(clean, stub):
    vol = stub.CreateVolume(P.CreateVolumeRequest(name="keep"), metadata=A, timeout=30)
    node = clean.cubelets[0]
    node.fail_run = grpc.StatusCode.INTERNAL
    c, _ = code(stub.CreateSandbox, P.CreateSandboxRequest(template="tiny", volume_mounts=mounts(("keep", "/k"))),
                metadata=A)
    assert c != grpc.StatusCode.OK
    wait_until(lambda: not clean.sandbox_ids(), what="the failed create undone")
    rec = clean.etcd.get_json(f"{clean.prefix}/volumes/{vol.volume_id}")
    assert not rec.get("mountedBy"), rec
    node.fail_run = None
    sbx = stub.CreateSandbox(P.CreateSandboxRequest(template="tiny", volume_mounts=mounts((vol.volume_id, "/k"))),
                             metadata=A, timeout=30)
    assert sbx.volume_mounts[0].name == "keep"
    # The record going by any other way releases it too: here the reconciler's, finishing a kill
    # the node could not be asked for.
    node.fail_calls["KillSandbox"] = grpc.StatusCode.UNAVAILABLE
    stub.KillSandboxRecord(P.KillSandboxRecordRequest(sandbox_id=sbx.sandbox_id), metadata=A, timeout=30)
    assert clean.record(sbx.sandbox_id)["phase"] == "SANDBOX_PHASE_KILLING"
    assert stub.GetVolume(P.GetVolumeRequest(volume_id="keep"), metadata=A, timeout=10).mounted_by == sbx.sandbox_id
    node.fail_calls.clear()
    # The reconciler acts once the KILLING record's deadline (twice the node call's) has passed.
    wait_until(lambda: not clean.sandbox_ids(), timeout=40, what="the reconciler finishing the kill")
    assert not stub.GetVolume(P.GetVolumeRequest(volume_id="keep"), metadata=A, timeout=10).mounted_by


def test_mount_requests_are_checked(clean, stub):
    stub.CreateVolume(P.CreateVolumeRequest(name="v1"), metadata=A, timeout=30)
    stub.CreateVolume(P.CreateVolumeRequest(name="v2"), metadata=A, timeout=30)
    stub.CreateVolume(P.CreateVolumeRequest(name="v3"), metadata=A, timeout=30)
    bad = [mounts(("v1", "/proc/x")), mounts(("v1", "/")), mounts(("v1", "/a"), ("v2", "/a/b")),
           mounts(("v1", "/a"), ("v1", "/b")), mounts(("v1", "/a"), ("v2", "/b"), ("v3", "/c")),
           mounts(("v1", "relative/../x"))]
    for m in bad:
        c, msg = code(stub.CreateSandbox, P.CreateSandboxRequest(template="tiny", volume_mounts=m), metadata=A)
        assert c == grpc.StatusCode.INVALID_ARGUMENT, (m, c, msg)
    c, msg = code(stub.CreateSandbox, P.CreateSandboxRequest(template="tiny", volume_mounts=mounts(("nope", "/n"))),
                  metadata=A)
    assert (c, msg) == (grpc.StatusCode.NOT_FOUND, "volume 'nope' not found")
    # Another team's volume is unknown here.
    c, msg = code(stub.CreateSandbox, P.CreateSandboxRequest(template="tiny", volume_mounts=mounts(("v1", "/n"))),
                  metadata=B)
    assert (c, msg) == (grpc.StatusCode.NOT_FOUND, "volume 'v1' not found")
    two = stub.CreateSandbox(P.CreateSandboxRequest(template="tiny", volume_mounts=mounts(("v1", "/a"), ("v2", "/b"))),
                             metadata=A, timeout=30)
    assert [m.name for m in two.volume_mounts] == ["v1", "v2"]
    assert clean.sandbox_ids() == {two.sandbox_id}
    stub.KillSandboxRecord(P.KillSandboxRecordRequest(sandbox_id=two.sandbox_id), metadata=A, timeout=30)
    assert all(not v.mounted_by for v in stub.ListVolumes(P.ListVolumesRequest(), metadata=A, timeout=10).volumes)


def test_a_stale_claim_is_cleared(clean, stub):
    vol = stub.CreateVolume(P.CreateVolumeRequest(name="stale"), metadata=A, timeout=30)
    key = f"{clean.prefix}/volumes/{vol.volume_id}"
    rec = clean.etcd.get_json(key)
    rec["mountedBy"] = "gone" * 5
    clean.etcd.put(key, json.dumps(rec))
    # A sandbox record that is gone holds nothing: content works (and clears it), so does a mount.
    assert content(stub, vol, C.VOLUME_OP_STAT).entries[0].path == "/"
    assert not clean.etcd.get_json(key).get("mountedBy")
    clean.etcd.put(key, json.dumps(rec))
    sbx = stub.CreateSandbox(P.CreateSandboxRequest(template="tiny", volume_mounts=mounts(("stale", "/s"))),
                             metadata=A, timeout=30)
    stub.KillSandboxRecord(P.KillSandboxRecordRequest(sandbox_id=sbx.sandbox_id), metadata=A, timeout=30)
    clean.etcd.put(key, json.dumps(rec))
    assert stub.DeleteVolume(P.DeleteVolumeRequest(volume_id="stale"), metadata=A, timeout=30).deleted
    assert volume_keys(clean) == []


def test_a_sandbox_runs_on_its_volumes_node(own_cluster):
    a = own_cluster.add_cubelet("node-a", disk_free_bytes=100 << 30)
    b = own_cluster.add_cubelet("node-b", disk_free_bytes=50 << 30)
    own_cluster.start_master()
    ch, stub = own_cluster.master_stub()
    with ch:
        on_a = stub.CreateVolume(P.CreateVolumeRequest(name="on-a"), timeout=30)
        assert on_a.node_id == "node-a"  # the most free disk
        b.disk_free_bytes = 200 << 30
        b.register(own_cluster.etcd, own_cluster.prefix)
        on_b = stub.CreateVolume(P.CreateVolumeRequest(name="on-b"), timeout=30)
        assert on_b.node_id == "node-b"
        for _ in range(6):  # both nodes score alike for the template: only the volume decides
            s = stub.CreateSandbox(P.CreateSandboxRequest(template="tiny", volume_mounts=mounts(("on-b", "/v"))),
                                   timeout=30)
            assert s.node_id == "node-b"
            stub.KillSandboxRecord(P.KillSandboxRecordRequest(sandbox_id=s.sandbox_id), timeout=30)
        assert not a.calls_of("RunSandbox")
        c, msg = code(stub.CreateSandbox, P.CreateSandboxRequest(
            template="tiny", volume_mounts=mounts(("on-a", "/a"), ("on-b", "/b"))))
        assert c == grpc.StatusCode.FAILED_PRECONDITION and "different nodes" in msg
        # Its node full: RESOURCE_EXHAUSTED, never another node.
        b.fail_run = grpc.StatusCode.RESOURCE_EXHAUSTED
        c, msg = code(stub.CreateSandbox, P.CreateSandboxRequest(template="tiny",
                                                                 volume_mounts=mounts(("on-b", "/v"))))
        assert c == grpc.StatusCode.RESOURCE_EXHAUSTED, msg
        assert not a.calls_of("RunSandbox")
        b.fail_run = None
        # Its node draining: FAILED_PRECONDITION, saying so.
        stub.DrainNode(P.DrainNodeRequest(node_id="node-b"), timeout=10)
        c, msg = code(stub.CreateSandbox, P.CreateSandboxRequest(template="tiny",
                                                                 volume_mounts=mounts(("on-b", "/v"))))
        assert c == grpc.StatusCode.FAILED_PRECONDITION and "draining" in msg
        stub.UndrainNode(P.UndrainNodeRequest(node_id="node-b"), timeout=10)
        # A paused sandbox with a volume resumes on that node, never elsewhere.
        s = stub.CreateSandbox(P.CreateSandboxRequest(template="tiny", volume_mounts=mounts(("on-b", "/v"))),
                               timeout=30)
        stub.PauseSandboxRecord(P.PauseSandboxRecordRequest(sandbox_id=s.sandbox_id), timeout=30)
        c, msg = code(stub.ConnectSandbox, P.ConnectSandboxRequest(sandbox_id=s.sandbox_id, node_id="node-a"))
        assert c == grpc.StatusCode.FAILED_PRECONDITION, msg
        stub.DrainNode(P.DrainNodeRequest(node_id="node-b"), timeout=10)
        r = stub.ConnectSandbox(P.ConnectSandboxRequest(sandbox_id=s.sandbox_id), timeout=30)
        assert r.sandbox.node_id == "node-b" and not a.arrivals
        stub.KillSandboxRecord(P.KillSandboxRecordRequest(sandbox_id=s.sandbox_id), timeout=30)
        for v in (on_a, on_b):
            stub.DeleteVolume(P.DeleteVolumeRequest(volume_id=v.volume_id), timeout=30)
    assert own_cluster.keys("volumes/") == [] and own_cluster.keys("volume-names/") == []
    assert not a.volumes and not b.volumes
