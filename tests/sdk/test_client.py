"""The typed operator client (sdk/client.py) against a real cube-master on a real etcd, with the
fake node of tests/control: results are the betterproto dataclasses, failures CubeError with gRPC
status names, every call has a deadline, and the blocking client leaves no loop or thread behind."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import pytest
from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from cube_common.defaults import MASTER_ADDR
from sdk.client import AsyncCubeClient, CubeClient, CubeError, Status, master_address
from sdk.gen.cube.v1 import master_pb2
from sdk.protojson import to_dict
from sdk.typed.cube import v1 as pb
from tests.control.templates_support import reset

pytestmark = pytest.mark.timeout(90)


def client_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "cube-client"]


def make_sandboxes(c: CubeClient, n: int, tag: str) -> list[str]:
    ids = []
    for i in range(n):
        ids.append(c.create_sandbox("base", metadata={"sdk": tag, "i": str(i)}).sandbox_id)
        time.sleep(0.01)  # distinct start times: the listing is ordered by them
    return ids


def test_list_sandboxes_pages_through_everything(fresh):
    with CubeClient(fresh.masters[0].address) as c:
        ids = make_sandboxes(c, 5, "paging")
        other = c.create_sandbox("tiny", metadata={"sdk": "other"})
        got = list(c.list_sandboxes(metadata={"sdk": "paging"}, page_size=2))  # three pages
        assert [s.sandbox_id for s in got] == list(reversed(ids))
        s = got[0]
        assert isinstance(s, pb.Sandbox) and s.phase == pb.SandboxPhase.RUNNING and s.node_id == "node-a"
        assert isinstance(s.started_at, datetime) and s.started_at.timestamp() > 0 and s.metadata["i"] == "4"
        assert [s.sandbox_id for s in c.list_sandboxes(template="tiny")] == [other.sandbox_id]

        # Leaving the iterator early ends it cleanly, and the client goes on working.
        pages = c.list_sandboxes(page_size=1)
        assert next(pages).sandbox_id == other.sandbox_id
        pages.close()

        assert c.pause_sandbox(ids[0]).phase == pb.SandboxPhase.PAUSED
        assert [s.sandbox_id for s in c.list_sandboxes(states=("paused",))] == [ids[0]]
        assert len(list(c.list_sandboxes(states=("running", "paused"), page_size=4))) == 6
        with pytest.raises(ValueError, match="unknown sandbox state 'gone'"):
            list(c.list_sandboxes(states=("gone",)))
        resumed = c.connect_sandbox(ids[0])
        assert resumed.resumed and resumed.sandbox.phase == pb.SandboxPhase.RUNNING
        assert c.kill_sandbox(other.sandbox_id) is True
        assert other.sandbox_id not in fresh.sandbox_ids()


def test_unknown_sandbox_is_not_found(cluster):
    with CubeClient(cluster.masters[0].address) as c:
        with pytest.raises(CubeError) as e:
            c.get_sandbox("no-such-sandbox")
    assert e.value.code is Status.NOT_FOUND and e.value.code.name == "NOT_FOUND"
    assert "no-such-sandbox" in e.value.message and str(e.value).startswith("NOT_FOUND: ")


def test_api_keys_create_list_revoke(cluster):
    with CubeClient(cluster.masters[0].address) as c:
        rec, key = c.create_api_key("sdk-test")
        assert isinstance(rec, pb.ApiKey) and key.startswith("e2b_") and rec.name == "sdk-test"
        assert key not in rec.mask and rec.created_at.timestamp() > 0
        listed = {k.key_id: k for k in c.list_api_keys()}
        assert listed[rec.key_id].sha256 == rec.sha256
        assert c.revoke_api_key(rec.key_id) is True
        assert rec.key_id not in {k.key_id for k in c.list_api_keys()}
        with pytest.raises(CubeError) as e:
            c.revoke_api_key(rec.key_id)
        assert e.value.code.name == "NOT_FOUND"


def test_templates_and_cluster(cluster):
    with CubeClient(cluster.masters[0].address) as c:
        tpls = {t.template_id: t for t in c.list_templates()}
        assert set(tpls) >= {"code-interpreter", "tiny"}
        assert {"base", "code-interpreter-v1"} <= set(tpls["code-interpreter"].aliases)
        t = c.get_template("base")  # an alias
        assert t.template_id == "code-interpreter" and "node-a" in t.node_ids
        assert isinstance(t.status, pb.TemplateStatus)
        nodes = c.list_nodes()
        assert [n.status.node_id for n in nodes] == ["node-a"]
        st = c.cluster_status()
        assert st.is_leader and st.leader.master_id == st.self.master_id


def test_build_watch_streams_to_ready(cluster):
    reset(cluster)
    try:
        with CubeClient(cluster.masters[0].address) as c:
            job = c.create_template_build(pb.BuildTemplateRequest(
                template_id="sdk-app", writable_layer_mb=512, expose_ports=[49999], probe_port=49999,
                oci_image=pb.OciImageSource(reference="registry.test:5000/app:3")), aliases=["sdk-alias"])
            assert isinstance(job, pb.TemplateBuild) and job.template_id == "sdk-app"
            events = list(c.watch_template_build(job.job_id))
            assert events[0].phase == pb.TemplateBuildPhase.PULLING
            assert events[-1].phase == pb.TemplateBuildPhase.READY and events[-1].template.template_id == "sdk-app"
            assert c.get_template_build(job.job_id).phase == pb.TemplateBuildPhase.READY
            assert [b.job_id for b in c.list_template_builds("sdk-app")] == [job.job_id]
            assert c.set_template_alias("sdk-other", "sdk-app").template_id == "sdk-app"
            assert c.get_template("sdk-other").template_id == "sdk-app"
            assert c.delete_template("sdk-app") is True
            with pytest.raises(CubeError) as e:
                next(iter(c.watch_template_build("no-such-job")))
            assert e.value.code.name == "NOT_FOUND"
    finally:
        reset(cluster)


def test_json_is_proto3_json(fresh):
    """sdk.protojson prints what protobuf's json_format prints for the same record."""
    with CubeClient(fresh.masters[0].address) as c:
        sid = c.create_sandbox("base", metadata={"k": "v"}, env_vars={"A": "1"}).sandbox_id
        typed = c.get_sandbox(sid)
        ch, stub = fresh.master_stub()
        with ch:
            plain = stub.GetSandbox(master_pb2.GetSandboxRequest(sandbox_id=sid), timeout=10)
            plain_nodes = stub.ListNodes(master_pb2.ListNodesRequest(), timeout=10).nodes
        d = to_dict(typed)
        assert d == json_format.MessageToDict(to_micros(plain))
        assert d["phase"] == "SANDBOX_PHASE_RUNNING" and d["metadata"] == {"k": "v"} and d["startedAt"].endswith("Z")
        assert [to_dict(n) for n in c.list_nodes()] == [json_format.MessageToDict(to_micros(n)) for n in plain_nodes]


def to_micros(msg: Message) -> Message:
    """``msg`` with its timestamps cut to microseconds, as a ``datetime`` (betterproto's) holds them."""
    for field, value in msg.ListFields():
        if field.message_type is None:
            continue
        values = value.values() if field.message_type.GetOptions().map_entry else (
            value if field.is_repeated else [value])
        for v in values:
            if isinstance(v, Timestamp):
                v.nanos -= v.nanos % 1000
            elif isinstance(v, Message):
                to_micros(v)
    return msg


async def test_async_client(fresh):
    m = fresh.masters[0].address
    async with AsyncCubeClient(m) as c:
        created = [await c.create_sandbox("base", metadata={"sdk": "async"}) for _ in range(3)]
        got = [s.sandbox_id async for s in c.list_sandboxes(metadata={"sdk": "async"}, page_size=2)]
        assert set(got) == {s.sandbox_id for s in created}
        rec, _key = await c.create_api_key("async")
        assert await c.revoke_api_key(rec.key_id)
        with pytest.raises(CubeError) as e:
            await c.get_sandbox("nope")
        assert e.value.code is Status.NOT_FOUND
        # Calls in parallel share the one connection.
        statuses = await asyncio.gather(*(c.cluster_status() for _ in range(5)))
        assert all(s.is_leader for s in statuses)


def test_dead_address_fails_fast_with_unavailable():
    with socket.socket() as s:  # a port nobody listens on: bind, note it, close
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with CubeClient(f"127.0.0.1:{port}") as c:
        with pytest.raises(CubeError) as e:
            c.list_templates()
        with pytest.raises(CubeError):
            list(c.list_sandboxes())
    assert e.value.code is Status.UNAVAILABLE and f"127.0.0.1:{port}" in e.value.message
    assert time.monotonic() - t0 < 5


def test_silent_master_ends_at_the_deadline():
    # Accepts connections (the kernel does, from the backlog) and never answers: only the
    # deadline ends the call.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        t0 = time.monotonic()
        with CubeClient(f"127.0.0.1:{s.getsockname()[1]}", timeout_s=0.5) as c, pytest.raises(CubeError) as e:
            c.get_sandbox("x")
        assert e.value.code is Status.DEADLINE_EXCEEDED and time.monotonic() - t0 < 5


async def test_async_dead_address():
    async with AsyncCubeClient("127.0.0.1:1", timeout_s=2) as c:
        with pytest.raises(CubeError) as e:
            await c.cluster_status()
    assert e.value.code.name == "UNAVAILABLE"


def test_a_refusing_master_is_passed_over_for_the_next(cluster):
    with socket.socket() as s:  # a port nobody listens on: a master that is down
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    with CubeClient(f"ipv4:{dead},{cluster.masters[0].address}") as c:
        assert c.cluster_status().is_leader
        assert c.cluster_status().is_leader  # and it stays with the one that answered
        assert c._aio._at == 1
    # Every master refusing: UNAVAILABLE naming the addresses tried.
    with CubeClient(f"{dead},{dead}") as c, pytest.raises(CubeError) as e:
        c.cluster_status()
    assert e.value.code is Status.UNAVAILABLE and dead in e.value.message


def test_sync_client_twice_from_threads_and_inside_a_loop(cluster):
    m = cluster.masters[0].address
    before = len(client_threads())
    for _ in range(2):  # one after the other in one process
        with CubeClient(m) as c:
            assert c.cluster_status().is_leader
    assert len(client_threads()) == before

    # From a thread that has no event loop, and one client shared by several threads at once.
    results: list[str] = []

    def in_thread() -> None:
        with CubeClient(m) as c:
            results.append(c.get_template("tiny").template_id)
    t = threading.Thread(target=in_thread)
    t.start()
    t.join(30)
    assert results == ["tiny"]
    with CubeClient(m) as shared, ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(lambda _: shared.get_template("base").template_id, range(8)))
    assert ids == ["code-interpreter"] * 8

    # Inside a running event loop (e.g. a notebook): the blocking client still works.
    async def inside() -> bool:
        with CubeClient(m) as c:
            return c.cluster_status().is_leader
    assert asyncio.run(inside())


def test_closed_client_refuses_and_an_unclosed_one_is_cleaned_up(cluster):
    m = cluster.masters[0].address
    c = CubeClient(m)
    c.close()
    c.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        c.list_nodes()
    before = len(client_threads())
    forgotten = CubeClient(m)
    forgotten.list_nodes()
    del forgotten  # never closed: collected, its loop and thread end
    deadline = time.monotonic() + 5
    while len(client_threads()) >= before + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(client_threads()) <= before


def test_address_resolution(monkeypatch):
    monkeypatch.delenv("CUBE_MASTER_ADDR", raising=False)
    assert master_address() == MASTER_ADDR == "127.0.0.1:50051"
    monkeypatch.setenv("CUBE_MASTER_ADDR", "10.0.0.5:7000")
    assert master_address() == "10.0.0.5:7000" and master_address("h:1") == "h:1"
    assert AsyncCubeClient("[::1]:50051")._masters == [("::1", 50051)]
    assert AsyncCubeClient("master")._masters == [("master", 50051)]
    # Several masters, as a list or in gRPC's target form (what `make cluster-env` exports).
    assert AsyncCubeClient("ipv4:10.0.0.1:50051,10.0.0.2:7000")._masters == [("10.0.0.1", 50051), ("10.0.0.2", 7000)]
    assert AsyncCubeClient("a:1, b")._masters == [("a", 1), ("b", 50051)]
    with pytest.raises(ValueError, match="invalid master address"):
        AsyncCubeClient("host:port")
