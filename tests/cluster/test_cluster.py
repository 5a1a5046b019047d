"""The cluster on one machine (deploy/cluster.py), with real parts only: etcd members talking TLS to
each other over the hosts' addresses, masters electing a leader, cubelets running QEMU in their
hosts' namespaces, proxies forwarding between hosts, and the unmodified E2B SDK as the client."""
from __future__ import annotations

import json
import os
import signal
import socket
import time

import pytest

from cube_common.mtls import Role, TlsFiles, client_ssl_context, server_name, sync_channel
from deploy import cluster as cluster_mod
from sdk.client import CubeClient, CubeError, Status
from sdk.gen.cube.v1 import master_pb2, master_pb2_grpc

pytestmark = pytest.mark.timeout(1800)


def etcd_call(cluster, host: str, path: str, body: dict) -> dict:
    """etcd's JSON gateway on ``host``, over TLS with the operator's certificate, checking etcd's
    name (its certificate names no address)."""
    s = cluster.s
    ctx = client_ssl_context(TlsFiles(s.operator_dir))
    data = json.dumps(body).encode()
    with socket.create_connection((s.address(host), 2379), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=server_name(Role.ETCD)) as sock:
        sock.sendall(f"POST {path} HTTP/1.0\r\nHost: etcd\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, payload = reply.partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0], head
    return json.loads(payload)


def leader(cluster, host: str = "h1") -> tuple[str, int]:
    """The leading master's id and the revision its leadership began at (("", 0): none)."""
    import base64
    key = base64.b64encode(b"/cube/leader").decode()
    kvs = etcd_call(cluster, host, "/v3/kv/range", {"key": key}).get("kvs", [])
    if not kvs:
        return "", 0
    return json.loads(base64.b64decode(kvs[0]["value"])).get("masterId", ""), int(kvs[0]["create_revision"])


def records(cluster) -> list[master_pb2.Sandbox]:
    with sync_channel(cluster.s.master_target, TlsFiles(cluster.s.operator_dir), Role.MASTER) as ch:
        stub = master_pb2_grpc.MasterStub(ch)
        return list(stub.ListSandboxRecords(master_pb2.ListSandboxRecordsRequest(), timeout=30).sandboxes)


CREATE_AND_RUN = """
    import json
    from e2b import Sandbox
    out = []
    for i in range({n}):
        sbx = Sandbox.create(timeout=300)
        r = sbx.commands.run("cat /proc/sys/kernel/hostname; echo ok")
        out.append({{"id": sbx.sandbox_id, "out": r.stdout}})
    print(json.dumps({{"sandboxes": out}}))
"""


def test_etcd_is_one_cluster_of_three_members_over_tls(cluster):
    members = etcd_call(cluster, "h2", "/v3/cluster/member/list", {})["members"]
    assert sorted(m["name"] for m in members) == ["h1", "h2", "h3"]
    for m in members:
        assert all(u.startswith("https://10.79.0.") for u in m["peerURLs"] + m["clientURLs"]), m
    # Every member serves, and each answers the same leader.
    statuses = [etcd_call(cluster, h, "/v3/maintenance/status", {}) for h in cluster.s.host_names()]
    assert len({st["leader"] for st in statuses}) == 1


def test_sandboxes_land_on_every_host(cluster):
    """The default template was built on h1 only; the other hosts prefetched it (`up` waits for
    that), so creates spread over all three and each runs a command through the edge on h1."""
    got = cluster.sdk(CREATE_AND_RUN.format(n=6))["sandboxes"]
    assert all(s["out"].strip().endswith("ok") for s in got), got
    placed = {r.sandbox_id: r.node_id for r in records(cluster)}
    assert set(placed.values()) == {"h1", "h2", "h3"}, placed


def test_killing_the_leader_master_hands_over(cluster):
    before, since = leader(cluster)
    assert before in ("master-h1", "master-h2")
    host = before.removeprefix("master-")
    t0 = time.monotonic()
    os.kill(cluster_mod.pid_of(cluster.s, host, "services.master"), signal.SIGKILL)
    # A new leadership: the standby, or the killed master restarted by the supervisor (same id).
    deadline = t0 + 30
    while (now := leader(cluster, "h3"))[1] in (0, since) and time.monotonic() < deadline:
        time.sleep(0.1)
    took = time.monotonic() - t0
    assert now[1] not in (0, since), f"no new leader after {took:.1f}s"
    print(f"\nleader {before} killed: {now[0]} leads after {took:.1f}s")
    # Clients go on through whichever master answers.
    got = cluster.sdk(CREATE_AND_RUN.format(n=1))["sandboxes"]
    assert got[0]["out"].strip().endswith("ok")


CREATE_UNTIL = """
    import json, os, threading
    from e2b import Sandbox
    ok, failed, lock = [], [], threading.Lock()
    def worker():
        # Create until the master has been killed (the test leaves {flag}), then once more.
        for _ in range(8):
            last = os.path.exists("{flag}")
            try:
                sbx = Sandbox.create(timeout=300)
                out = sbx.commands.run("echo ok").stdout
                with lock:
                    ok.append({{"id": sbx.sandbox_id, "out": out}})
            except Exception as e:
                with lock:
                    failed.append(type(e).__name__ + ": " + str(e)[:300])
            if last:
                break
    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({{"ok": ok, "failed": failed}}))
"""


def etcd_keys(cluster, prefix: bytes) -> set[str]:
    import base64
    end = prefix[:-1] + bytes([prefix[-1] + 1])
    kvs = etcd_call(cluster, "h1", "/v3/kv/range", {"key": base64.b64encode(prefix).decode(),
                                                     "range_end": base64.b64encode(end).decode(),
                                                     "keys_only": True}).get("kvs", [])
    return {base64.b64decode(kv["key"]).decode().rsplit("/", 1)[-1] for kv in kvs}


def test_creates_in_flight_when_the_api_s_master_dies_complete_or_fail_cleanly(cluster, tmp_path):
    """The master the API talks to (h1's, the leader when it can be) is killed while creates run
    through it: each create then either answers with a sandbox that runs, or fails with an error;
    once the survivors have settled, etcd's records and routes and the VMs on the hosts are the
    same set of running sandboxes (no half-made record, route or VM is left)."""
    import threading
    s = cluster.s
    for _ in range(4):  # make h1's master the leader: kill h2's (restarted, it may win again)
        lead, since = leader(cluster)
        if lead == "master-h1":
            break
        os.kill(cluster_mod.pid_of(s, "h2", "services.master"), signal.SIGKILL)
        deadline = time.monotonic() + 30
        while leader(cluster)[1] in (0, since):
            assert time.monotonic() < deadline, "no master took over"
            time.sleep(0.2)
    was_leader = leader(cluster)[0] == "master-h1"
    before = {r.sandbox_id for r in records(cluster)}
    flag = tmp_path / "killed"
    got: dict = {}
    client = threading.Thread(target=lambda: got.update(cluster.sdk(CREATE_UNTIL.format(flag=flag))))
    client.start()
    time.sleep(3)  # creates under way on every host
    os.kill(cluster_mod.pid_of(s, "h1", "services.master"), signal.SIGKILL)
    flag.touch()
    client.join(600)
    assert not client.is_alive()
    print(f"\nh1's master killed ({'the leader' if was_leader else 'a standby'}): {len(got['ok'])} creates "
          f"answered, {len(got['failed'])} failed: {got['failed'][:3]}")
    assert got["ok"], got
    assert all(x["out"].strip() == "ok" for x in got["ok"]), got["ok"]
    # Every failure is an error the SDK raised, within the script's bounds (no hang).
    assert all(f.split(":")[0].endswith(("Exception", "Error")) for f in got["failed"]), got["failed"]

    deadline = time.monotonic() + 90
    while any(r.phase != master_pb2.SANDBOX_PHASE_RUNNING for r in records(cluster)):
        assert time.monotonic() < deadline, [(r.sandbox_id, r.phase) for r in records(cluster)]
        time.sleep(0.5)
    running = {r.sandbox_id for r in records(cluster)}
    assert {x["id"] for x in got["ok"]} <= running
    # A create whose answer was lost with its master may have completed: then it is whole.
    routes = etcd_keys(cluster, b"/cube/routes/")
    vms: set[str] = set()
    deadline = time.monotonic() + 90
    while True:
        vms = {p.stem for h in s.host_names() for p in (s.host_dir(h) / "cubelet" / "sandboxes").glob("*.json")}
        if vms == running or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert routes == running and vms == running, (running - before, routes ^ running, vms ^ running)
    with CubeClient(s.master_target, tls_dir=s.operator_dir) as c:
        for sid in running - before:
            c.kill_sandbox(sid)


def test_one_etcd_member_down_changes_nothing(cluster):
    pid = cluster_mod.pid_of(cluster.s, "h3", "etcd")
    os.kill(pid, signal.SIGSTOP)  # unresponsive, as a member on a hung host
    try:
        got = cluster.sdk(CREATE_AND_RUN.format(n=2))["sandboxes"]
        assert all(s["out"].strip().endswith("ok") for s in got)
    finally:
        os.kill(pid, signal.SIGCONT)


CONNECT_AND_RUN = """
    import json
    from e2b import Sandbox
    sbx = Sandbox.connect("{sid}")
    print(json.dumps({{"out": sbx.commands.run("echo back").stdout}}))
"""


def test_a_host_cut_off_is_lost_and_comes_back(cluster):
    s = cluster.s
    with CubeClient(s.master_target, tls_dir=s.operator_dir) as c:
        # Put one sandbox on h3: the other hosts drained for the create.
        for h in ("h1", "h2"):
            c.drain_node(h, reason="test: place on h3")
        try:
            sid = cluster.sdk(CREATE_AND_RUN.format(n=1))["sandboxes"][0]["id"]
        finally:
            for h in ("h1", "h2"):
                c.undrain_node(h)
        assert {r.sandbox_id: r.node_id for r in records(cluster)}[sid] == "h3"
        t0 = time.monotonic()
        cluster_mod.cut(s, "h3")
        try:
            deadline = t0 + 60
            while (phase := c.get_sandbox(sid).phase) != master_pb2.SANDBOX_PHASE_LOST:
                assert time.monotonic() < deadline, f"not lost after 60 s (phase {phase})"
                time.sleep(0.5)
            print(f"\nh3 cut off: its sandbox lost after {time.monotonic() - t0:.1f}s "
                  f"({c.get_sandbox(sid).lost_reason})")
            # New sandboxes go to the hosts that are there.
            new = cluster.sdk(CREATE_AND_RUN.format(n=2))["sandboxes"]
            placed = {r.sandbox_id: r.node_id for r in records(cluster)}
            assert all(placed[x["id"]] in ("h1", "h2") for x in new), placed
        finally:
            cluster_mod.cut(s, "h3", off=False)
        # h3 is back: its cubelet still runs the VM, so the sandbox is restored and answers.
        # h3's etcd member rejoining may start a leader election that outlasts the master's
        # per-call etcd deadline: the master then answers UNAVAILABLE, which a client retries.
        deadline = time.monotonic() + 90
        while True:
            try:
                if c.get_sandbox(sid).phase == master_pb2.SANDBOX_PHASE_RUNNING:
                    break
            except CubeError as e:
                if e.code is not Status.UNAVAILABLE:
                    raise
                print(f"\nwhile h3 rejoins: {e}")
            assert time.monotonic() < deadline, "not restored 90 s after h3 came back"
            time.sleep(0.5)
    assert cluster.sdk(CONNECT_AND_RUN.format(sid=sid))["out"].strip() == "back"


def test_losing_etcd_quorum_answers_503_and_recovers(cluster):
    import httpx

    from deploy import local_key

    s = cluster.s
    api = httpx.Client(base_url=s.api_url, headers={"X-API-KEY": local_key.read(s.host_dir("h1")) or ""},
                       timeout=60)
    assert api.get("/sandboxes").status_code == 200
    stopped = [cluster_mod.pid_of(cluster.s, h, "etcd") for h in ("h2", "h3")]
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)  # two of three members unresponsive: no quorum
    try:
        t0 = time.monotonic()
        r = api.get("/sandboxes")
        print(f"\nno etcd quorum: {r.status_code} after {time.monotonic() - t0:.1f}s: {r.text[:200]}")
        assert r.status_code == 503 and r.json()["code"] == 503, r.text
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + 60
    while (r := api.get("/sandboxes")).status_code != 200:
        assert time.monotonic() < deadline, f"not recovered 60 s after quorum came back: {r.status_code} {r.text}"
        time.sleep(0.5)
    api.close()


PAUSE_WITH_STATE = """
    import json, time
    from e2b import Sandbox
    sbx = Sandbox.create(timeout=600)
    sbx.files.write("/home/user/moved.txt", "written on h2")
    sbx.commands.run("bash -c 'i=0; while true; do i=$((i+1)); echo $$ $i > /tmp/counter; sleep 0.2; done'",
                     background=True)
    deadline = time.time() + 60
    while not sbx.files.exists("/tmp/counter"):
        assert time.time() < deadline, "the counter did not start"
        time.sleep(0.2)
    time.sleep(1)
    pid, count = sbx.files.read("/tmp/counter").split()
    assert sbx.pause() is True
    print(json.dumps({"id": sbx.sandbox_id, "pid": pid, "count": int(count)}))
"""

RESUME_AND_LOOK = """
    import json, time
    from e2b import Sandbox
    t0 = time.monotonic()
    sbx = Sandbox.connect("{sid}")
    took = time.monotonic() - t0
    first = sbx.files.read("/tmp/counter").split()
    time.sleep(1.5)
    later = sbx.files.read("/tmp/counter").split()
    print(json.dumps({{"file": sbx.files.read("/home/user/moved.txt"), "first": first, "later": later,
                      "seconds": round(took, 1)}}))
"""


def test_a_sandbox_paused_on_a_draining_host_resumes_on_another(cluster):
    """Paused on h2, h2 drained: connect resumes it on another host, which pulls its saved state
    from h2; its file and its background process (memory) go on there, and h2 drops its copy."""
    s = cluster.s
    with CubeClient(s.master_target, tls_dir=s.operator_dir) as c:
        for h in ("h1", "h3"):
            c.drain_node(h, reason="test: place on h2")
        try:
            before = cluster.sdk(PAUSE_WITH_STATE)
        finally:
            for h in ("h1", "h3"):
                c.undrain_node(h)
        sid = before["id"]
        assert c.get_sandbox(sid).node_id == "h2"
        assert (s.host_dir("h2") / "cubelet" / "paused" / sid).is_dir()
        c.drain_node("h2", reason="test: move its paused sandbox")
        try:
            after = cluster.sdk(RESUME_AND_LOOK.format(sid=sid))
            rec = c.get_sandbox(sid)
        finally:
            c.undrain_node("h2")
        print(f"\npaused on h2, resumed on {rec.node_id} after {after['seconds']}s (state pulled from h2)")
        assert rec.node_id in ("h1", "h3") and rec.phase == master_pb2.SANDBOX_PHASE_RUNNING
        assert after["file"] == "written on h2"
        assert after["first"][0] == after["later"][0] == before["pid"]  # the same process, from memory
        assert before["count"] <= int(after["first"][1]) < int(after["later"][1])
        assert not (s.host_dir("h2") / "cubelet" / "paused" / sid).exists()  # h2 was told to drop it
        assert c.kill_sandbox(sid)
