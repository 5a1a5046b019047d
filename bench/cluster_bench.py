"""Cluster benchmark: a cluster of its own on this machine (deploy/cluster.py), driven with the
unmodified E2B SDK from inside its first host.

    .venv/bin/python bench/cluster_bench.py [--n 30] [--burst 6]

In one run, with the default template on every host:
  hosts_1 / hosts_3     the same load with two hosts drained (every sandbox on h1) and with all
                        three: create_ms p50/p99 of n sequential create + `echo` + kill, and a burst
                        of k concurrent creates (burst_per_s: sandboxes created per second). The
                        ratio of the two is the figure to read on this 2-core machine (all hosts
                        share its cores, so three hosts cannot be three times as fast here).
  template_pull         seconds and bytes each host other than h1 took to fetch the template
                        (its cubelet's "template pulled" log line).
  node_loss_s           a host cut off the bridge, until its sandbox is reported lost.
  master_failover_s     the leading master killed (SIGKILL), until a new leadership is in etcd;
                        p50/max of --failovers kills, each once both masters are up (the supervisor
                        restarts the killed one).

Progress goes to stderr; the last stdout line is one JSON object.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import emit, machine, progress, summary  # noqa: E402
from cube_common import defaults  # noqa: E402
from cube_common.etcd import EtcdClient  # noqa: E402
from cube_common.keys import Keys  # noqa: E402
from cube_common.mtls import Role, TlsFiles, sync_channel  # noqa: E402
from deploy import cluster as cluster_mod  # noqa: E402
from deploy.cluster import ClusterSettings  # noqa: E402
from sdk.gen.cube.v1 import master_pb2 as P, master_pb2_grpc  # noqa: E402

SEQUENTIAL = """
    import json, time
    from e2b import Sandbox
    ms = []
    for _ in range({n}):
        t0 = time.monotonic()
        sbx = Sandbox.create(timeout=120)
        ms.append((time.monotonic() - t0) * 1000)
        assert sbx.commands.run("echo ok").stdout.strip() == "ok"
        sbx.kill()
    print(json.dumps({{"create_ms": ms}}))
"""

BURST = """
    import asyncio, json, time
    from e2b import AsyncSandbox
    async def one():
        t0 = time.monotonic()
        sbx = await AsyncSandbox.create(timeout=120)
        return sbx, (time.monotonic() - t0) * 1000
    async def main():
        t0 = time.monotonic()
        made = await asyncio.gather(*(one() for _ in range({k})))
        wall = time.monotonic() - t0
        await asyncio.gather(*(s.kill() for s, _ in made))
        print(json.dumps({{"create_ms": [ms for _, ms in made], "wall_s": wall}}))
    asyncio.run(main())
"""

ONE = """
    import json
    from e2b import Sandbox
    print(json.dumps({"id": Sandbox.create(timeout=600).sandbox_id}))
"""


def master(s: ClusterSettings):
    ch = sync_channel(s.master_target, TlsFiles(s.operator_dir), Role.MASTER)
    return ch, master_pb2_grpc.MasterStub(ch)


def load(s: ClusterSettings, n: int, k: int) -> dict:
    seq = cluster_mod.run_client(s, SEQUENTIAL.format(n=n), timeout=1800)["create_ms"]
    burst = cluster_mod.run_client(s, BURST.format(k=k), timeout=1800)
    return {"create_ms": summary(seq, 1), "burst_create_ms": summary(burst["create_ms"], 1),
            "burst_per_s": round(k / burst["wall_s"], 2)}


def pulls(s: ClusterSettings) -> dict:
    out = {}
    for h in s.host_names()[1:]:
        for line in (s.logs / f"{h}-cubelet.log").read_text(errors="replace").splitlines():
            if line.startswith("{") and '"template pulled"' in line:
                e = json.loads(line)
                out[h] = {"seconds": e["seconds"], "mb_received": round(e["bytes_received"] / 2**20, 1)}
    return out


def node_loss(s: ClusterSettings) -> float:
    ch, stub = master(s)
    with ch:
        for h in ("h1", "h2"):
            stub.DrainNode(P.DrainNodeRequest(node_id=h, reason="bench: place on h3"), timeout=30)
        try:
            sid = cluster_mod.run_client(s, ONE)["id"]
        finally:
            for h in ("h1", "h2"):
                stub.UndrainNode(P.UndrainNodeRequest(node_id=h), timeout=30)
        t0 = time.monotonic()
        cluster_mod.cut(s, "h3")
        try:
            while stub.GetSandbox(P.GetSandboxRequest(sandbox_id=sid), timeout=30).phase != P.SANDBOX_PHASE_LOST:
                if time.monotonic() - t0 > 120:
                    raise SystemExit("bench: h3's sandbox was not reported lost in 120 s")
                time.sleep(0.1)
            took = time.monotonic() - t0
        finally:
            cluster_mod.cut(s, "h3", off=False)
        stub.KillSandboxRecord(P.KillSandboxRecordRequest(sandbox_id=sid), timeout=60)
    return round(took, 2)


def both_masters(s: ClusterSettings, timeout: float = 120) -> None:
    """Wait until the killed master is back (its presence key): a failover is timed against a
    standby that runs, not one the supervisor is still restarting."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ch, stub = master(s)
            with ch:
                if len(stub.GetClusterStatus(P.GetClusterStatusRequest(), timeout=10).masters) == 2:
                    return
        except Exception:  # noqa: BLE001 - the master asked may be the one restarting
            pass
        time.sleep(0.2)
    raise SystemExit(f"bench: the killed master did not come back within {timeout:g} s")


def failover(s: ClusterSettings) -> float:
    """Kill the leading master; seconds until another leadership is in etcd. Read from etcd itself,
    on a watch of the leader key: asking a master would time the masters' start-up too (a
    restarted one may accept a connection and not answer yet)."""
    async def run() -> float:
        etcd = EtcdClient(s.etcd_endpoints.split(","), timeout_s=2.0, tls=TlsFiles(s.operator_dir))
        key = Keys(defaults.ETCD_PREFIX).leader()
        try:
            r = await etcd.get(key)
            if r is None:
                raise SystemExit("bench: no master leads")
            leader, leadership = json.loads(r.value).get("masterId", ""), r.create_revision
            host = leader.removeprefix("master-")
            pid = cluster_mod.pid_of(s, host, "services.master")
            t0 = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            while time.monotonic() - t0 < 60:
                cur = await etcd.get(key)
                if cur is not None and cur.create_revision != leadership:
                    return round(time.monotonic() - t0, 2)
                if cur is None:
                    await asyncio.sleep(0.01)  # deleted, not yet taken: the watch would replay the delete
                else:
                    await etcd.wait_change(key, cur.mod_revision, timeout=1.0)
            raise SystemExit(f"bench: no new leader 60 s after killing {leader} on {host}")
        finally:
            await etcd.close()
    return asyncio.run(run())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=30, help="sequential creates per layout")
    ap.add_argument("--burst", type=int, default=6, help="concurrent creates per layout")
    ap.add_argument("--failovers", type=int, default=5, help="leader kills to time")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="cube-cluster-bench-") as d:
        s = ClusterSettings(dir=Path(d), name="cubeb", subnet="10.80.0.0/24", edge_forward=False).validate()
        progress("bench: bringing the cluster up")
        try:
            cluster_mod.up(s)
            ch, stub = master(s)
            with ch:
                for h in ("h2", "h3"):
                    stub.DrainNode(P.DrainNodeRequest(node_id=h, reason="bench: one host"), timeout=30)
                progress("bench: one host")
                one = load(s, a.n, a.burst)
                for h in ("h2", "h3"):
                    stub.UndrainNode(P.UndrainNodeRequest(node_id=h), timeout=30)
            progress("bench: three hosts")
            three = load(s, a.n, a.burst)
            # Failovers before the node loss: a host cut off and back leaves its etcd member
            # catching up for a while, which any client that asks it first pays for.
            progress(f"bench: master failover x {a.failovers}")
            takes = []
            for _ in range(a.failovers):
                takes.append(failover(s))
                both_masters(s)
            fail = {"p50": sorted(takes)[len(takes) // 2], "max": max(takes), "n": len(takes)}
            progress("bench: node loss")
            loss = node_loss(s)
            result = {
                "bench": "cluster", "machine": machine(), "hosts_1": one, "hosts_3": three,
                "ratio_3_over_1": {"create_p50": round(three["create_ms"]["p50"] / one["create_ms"]["p50"], 2),
                                   "burst_per_s": round(three["burst_per_s"] / one["burst_per_s"], 2)},
                "template_pull": pulls(s), "node_loss_s": loss, "master_failover_s": fail,
            }
        finally:
            cluster_mod.down(s)
    emit(result)


if __name__ == "__main__":
    main()
