"""API benchmark: the unmodified E2B Python SDK against a running node (`make up`).

    .venv/bin/python bench/api_bench.py [--n 50] [--concurrency 10,50] [--cold 3] [--bursts 0 --burst 8 --gap 20]

1. Sequential (n): `Sandbox.create()` of the default template (code-interpreter SDK), the first
   `run_code("print(1)")`, `kill()`, one sandbox after the other.
     create_ms            Sandbox.create() wall time
     first_run_code_ms    from the start of create() to the result of the first print(1)
                          (what a user waits for; the run_code call alone is run_code_call_ms)
     kill_ms              kill() wall time
     node_create_by_path  the node's own count and mean time of these creates by how each came up
                          (the cubelet's cube_cubelet_sandbox_start_seconds: warm_pool, standby
                          (a miss restored into a QEMU started ahead), clone)
1b. Bursts (--bursts B, --burst K, --gap G s): B bursts of K creates as in 1, one after the other,
   with G s of quiet between bursts (how agents and RL rollouts create: in bursts). create_ms over
   all of them and from_warm_pool, the share of creates the node's warm pool served; a pool that
   deepens with demand serves more of the later bursts.
2. Concurrent: k `AsyncSandbox.create()` at once, for each k in --concurrency: create_ms p50/p99 and
   failures (creates that raised), then all of them are killed.
3. Snapshots (--snapshots rounds): snapshot_ms; first_create_from_snapshot_ms (the first create
   from a new snapshot); create_from_snapshot_ms (a stream of STREAM creates from each, one after
   the other, each checked to hold the source's state and killed, as an RL rollout creates from
   one snapshot) against create_ms of the default template measured the same way in the same
   rounds; fork_ms (fork of one), fork_10_ms (one fork of 10); filesystem_snapshot_ms.
4. Cold-boot baseline, same run: the API cannot cold-boot a sandbox (every create is a clone), so
   the default image is booted the way a template build boots it (vmm_core, 1 vCPU, 1024 MB, a
   tap in a network namespace of its own): create_ms = boot until the agent answers /health on 49983 and
   49999, first_run_code_ms = boot until print(1) has run, kill_ms = machine kill.

Progress goes to stderr; the last stdout line is one JSON object.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from bench.common import emit, machine, point_sdk_at_node, progress, summary  # noqa: E402
from deploy.env import sdk_env  # noqa: E402
from deploy.supervisor import NodeConfig  # noqa: E402

CFG = NodeConfig.from_env()
TAG = {"bench": f"api-{os.getpid()}"}
TARGETS = {"sequential_create_p50_ms": 60, "sequential_create_p99_ms": 150, "create_to_first_result_p50_ms": 120,
           "failures_at_50": 0}


def ms(t0: float) -> float:
    return (time.monotonic() - t0) * 1000


def api_key() -> str:
    return sdk_env(CFG)["E2B_API_KEY"]


def from_pool_share(ids: set[str], offset: int) -> float | None:
    """Share of these sandboxes the cubelet served from its warm pool (master log)."""
    hits = total = 0
    try:
        with open(CFG.logs / "master.log", "rb") as f:
            f.seek(offset)
            for line in f.read().decode(errors="replace").splitlines():
                if '"msg": "created"' not in line:
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if rec.get("sandbox_id") in ids:
                    total += 1
                    hits += bool(rec.get("from_warm_pool"))
    except OSError:
        return None
    return round(hits / total, 3) if total else None


def node_creates() -> dict[str, tuple[float, float]]:
    """The cubelet's (count, seconds) of creates so far, by path (its /metrics histogram)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, tuple[float, float]] = {}
    try:
        text = httpx.get(f"http://127.0.0.1:{CFG.cubelet_metrics_port}/metrics", timeout=10).text
    except httpx.HTTPError:
        return out
    for family in text_string_to_metric_families(text):
        if family.name != "cube_cubelet_sandbox_start_seconds":
            continue
        for sample in family.samples:
            if sample.labels.get("op") != "create" or sample.name.endswith(("_bucket", "_created")):
                continue
            n, total = out.get(sample.labels["path"], (0.0, 0.0))
            out[sample.labels["path"]] = (n + sample.value, total) if sample.name.endswith("_count") \
                else (n, total + sample.value)
    return out


def by_path(before: dict[str, tuple[float, float]]) -> dict:
    """Creates since ``before`` by path: how many, and their mean time on the node."""
    out = {}
    for path, (n, total) in node_creates().items():
        n0, total0 = before.get(path, (0.0, 0.0))
        if n > n0:
            out[path] = {"n": int(n - n0), "mean_ms": round((total - total0) / (n - n0) * 1000, 1)}
    return out


def log_offset() -> int:
    try:
        return (CFG.logs / "master.log").stat().st_size
    except OSError:
        return 0


# ---- 1. sequential ---------------------------------------------------------------------------

class Rounds:
    """Create + first print(1) + kill, one sandbox after the other; what each step took."""

    def __init__(self) -> None:
        self.create: list[float] = []
        self.first: list[float] = []
        self.call: list[float] = []
        self.kill: list[float] = []
        self.ids: set[str] = set()

    def one(self) -> None:
        from e2b_code_interpreter import Sandbox

        t0 = time.monotonic()
        sbx = Sandbox.create(metadata=TAG)
        self.create.append(ms(t0))
        self.ids.add(sbx.sandbox_id)
        try:
            t1 = time.monotonic()
            ex = sbx.run_code("print(1)")
            self.call.append(ms(t1))
            self.first.append(ms(t0))
            if "".join(ex.logs.stdout) != "1\n":
                raise RuntimeError(f"print(1) gave {ex.logs.stdout!r} {ex.error!r}")
        finally:
            t2 = time.monotonic()
            sbx.kill()
            self.kill.append(ms(t2))

    def create_p50(self) -> float:
        return sorted(self.create)[len(self.create) // 2]


def sequential(n: int) -> dict:
    from e2b_code_interpreter import Sandbox

    rounds = Rounds()
    off = log_offset()
    Sandbox.create(metadata=TAG).kill()  # warm the SDK's connection pools and the proxy's
    paths = node_creates()
    for i in range(n):
        rounds.one()
        if (i + 1) % 10 == 0:
            progress(f"sequential {i + 1}/{n}: create p50 so far {rounds.create_p50():.0f} ms")
    return {"create_ms": summary(rounds.create), "first_run_code_ms": summary(rounds.first),
            "run_code_call_ms": summary(rounds.call), "kill_ms": summary(rounds.kill),
            "from_warm_pool": from_pool_share(rounds.ids, off), "node_create_by_path": by_path(paths)}


def bursts(count: int, size: int, gap_s: float) -> dict:
    rounds = Rounds()
    off = log_offset()
    paths = node_creates()
    for b in range(count):
        if b:
            time.sleep(gap_s)
        for _ in range(size):
            rounds.one()
        progress(f"burst {b + 1}/{count}: create p50 so far {rounds.create_p50():.0f} ms")
    return {"bursts": count, "burst": size, "gap_s": gap_s, "create_ms": summary(rounds.create),
            "first_run_code_ms": summary(rounds.first), "from_warm_pool": from_pool_share(rounds.ids, off),
            "node_create_by_path": by_path(paths)}


# ---- snapshots and forks ------------------------------------------------------------------------

# Creates from one snapshot (and from the default template, the baseline) per round.
STREAM = 6


def snapshots(n: int) -> dict:
    """n rounds of: a source with state in its kernel, `create_snapshot()` (snapshot_ms), STREAM
    creates from the snapshot one after the other (the first is first_create_from_snapshot_ms; all
    are create_from_snapshot_ms; each checked to hold the source's state, then killed) and as many
    from the default template (create_ms, the same run's baseline), `fork()` of one (fork_ms), a
    filesystem-only snapshot (filesystem_snapshot_ms); then one fork of 10 at once. Everything made
    is killed and deleted."""
    from e2b_code_interpreter import Sandbox

    snap_ms, first, from_snap, from_tpl, fork1, fork10, fs_ms = [], [], [], [], [], [], []
    failures = 0
    for i in range(n):
        src = Sandbox.create(metadata=TAG)
        made: list = [src]
        snaps = []
        try:
            src.run_code(f"state = {i}")
            t0 = time.monotonic()
            snap = src.create_snapshot()
            snap_ms.append(ms(t0))
            snaps.append(snap)
            for k in range(STREAM):
                t0 = time.monotonic()
                child = Sandbox.create(snap.snapshot_id, metadata=TAG)
                from_snap.append(ms(t0))
                if k == 0:
                    first.append(from_snap[-1])
                try:
                    if child.run_code("state").text != str(i):
                        raise RuntimeError("a sandbox from the snapshot lost the source's state")
                finally:
                    child.kill()
                t0 = time.monotonic()
                base = Sandbox.create(metadata=TAG)
                from_tpl.append(ms(t0))
                try:
                    base.run_code("1")
                finally:
                    base.kill()
            t0 = time.monotonic()
            snaps.append(src.create_snapshot(mode="filesystem"))
            fs_ms.append(ms(t0))
            t0 = time.monotonic()
            forks = src.fork(count=1)
            fork1.append(ms(t0))
            made += [f for f in forks if isinstance(f, Sandbox)]
            failures += sum(1 for f in forks if not isinstance(f, Sandbox))
            if i == n - 1:
                t0 = time.monotonic()
                forks = src.fork(count=10)
                fork10.append(ms(t0))
                made += [f for f in forks if isinstance(f, Sandbox)]
                failures += sum(1 for f in forks if not isinstance(f, Sandbox))
        finally:
            for s in made:
                s.kill()
            for snap in snaps:
                Sandbox.delete_snapshot(snap.snapshot_id)
        progress(f"snapshots {i + 1}/{n}: snapshot {snap_ms[-1]:.0f} ms, first from it {first[-1]:.0f} ms, "
                 f"from it p50 {summary(from_snap[-STREAM:])['p50']:.0f} ms, fork {fork1[-1]:.0f} ms, "
                 f"filesystem snapshot {fs_ms[-1]:.0f} ms")
    p50 = summary(from_snap)["p50"] / summary(from_tpl)["p50"]
    return {"snapshot_ms": summary(snap_ms), "first_create_from_snapshot_ms": summary(first),
            "create_from_snapshot_ms": summary(from_snap), "create_ms": summary(from_tpl),
            "create_from_snapshot_vs_template_p50": round(p50, 2), "fork_ms": summary(fork1),
            "fork_10_ms": fork10[0] if fork10 else None, "fork_failures": failures,
            "filesystem_snapshot_ms": summary(fs_ms)}


# ---- 2. concurrent ---------------------------------------------------------------------------

async def concurrent(k: int) -> dict:
    from e2b_code_interpreter import AsyncSandbox

    made, times, errors = [], [], []
    off = log_offset()

    async def one() -> None:
        t0 = time.monotonic()
        try:
            sbx = await AsyncSandbox.create(metadata=TAG)
        except Exception as e:  # noqa: BLE001 - counted as a failure
            errors.append(f"{type(e).__name__}: {str(e)[:160]}")
            return
        times.append(ms(t0))
        made.append(sbx)

    t0 = time.monotonic()
    await asyncio.gather(*(one() for _ in range(k)))
    wall = ms(t0)
    ok = await asyncio.gather(*(s.run_code("print(1)") for s in made), return_exceptions=True)
    bad = []
    for r in ok:
        if isinstance(r, BaseException):
            bad.append(f"{type(r).__name__}: {str(r)[:160]}")
        # A busy kernel may flush "1" and "\n" as two stream messages: compare the text.
        elif "".join(r.logs.stdout) != "1\n":
            bad.append(f"output {r.logs.stdout!r} {r.error!r}")
    unusable = len(bad)
    await asyncio.gather(*(s.kill() for s in made), return_exceptions=True)
    out = {"create_ms": summary(times), "failures": len(errors), "wall_ms": round(wall, 1),
           "unusable_after_create": unusable, "from_warm_pool": from_pool_share({s.sandbox_id for s in made}, off)}
    if errors:
        out["errors"] = sorted(set(errors))[:5]
    if bad:
        out["unusable_errors"] = sorted(set(bad))[:5]
    return out


async def wait_drained(timeout: float = 180.0) -> None:
    """Until no sandbox of this benchmark is left (kills are asynchronous on the node)."""
    import httpx

    deadline = time.monotonic() + timeout
    q = "&".join(f"{k}={v}" for k, v in TAG.items())
    async with httpx.AsyncClient(timeout=30) as c:
        while time.monotonic() < deadline:
            r = await c.get(f"http://127.0.0.1:{CFG.api_port}/v2/sandboxes", params={"metadata": q, "limit": 100},
                            headers={"X-API-KEY": api_key()})
            if r.status_code == 200 and not r.json():
                return
            for s in r.json() if r.status_code == 200 else []:
                await c.delete(f"http://127.0.0.1:{CFG.api_port}/sandboxes/{s['sandboxID']}",
                               headers={"X-API-KEY": api_key()})
            await asyncio.sleep(1)
    raise RuntimeError("benchmark sandboxes still listed after the kills")


# ---- 3. cold boot baseline ---------------------------------------------------------------------

def _guest_http(ns: str, port: int, method: str, path: str, body: bytes = b"",
                timeout: float = 5.0) -> tuple[int, bytes]:
    """One HTTP/1.0 request to the guest from inside its namespace: (status, body)."""
    from testkit import nshttp
    from vmm_core import GuestNetwork

    return nshttp.request(ns, GuestNetwork().ip, port, method, path, body,
                          headers={"Content-Type": "application/json"}, timeout=timeout)


async def _until(fn, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        try:
            out = await asyncio.to_thread(fn)
            if out:
                return out
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"cold boot: {what} not within {timeout}s")
        await asyncio.sleep(0.05)


async def cold_boots(n: int) -> dict:
    """The default image booted as a template build boots it, in a network namespace of its own
    (not CubeVS: a restarting cubelet would reclaim a network it does not know)."""
    import subprocess

    from cube_common.envd import ENVD_PORT, INTERPRETER_PORT
    from services.cubelet import default_image
    from services.cubelet.guest_agent import cube_agent
    from vmm_core import GuestNetwork, NetworkAttachment, VmmSettings, boot, ensure_guest_artifacts, writable_layer

    g = GuestNetwork()
    work = Path(tempfile.mkdtemp(prefix="cube-api-bench-cold-"))
    vmm = VmmSettings.from_env().with_overrides(runtime_dir=work / "vms")
    guest = await asyncio.to_thread(ensure_guest_artifacts, vmm, cube_agent())
    image = await asyncio.to_thread(default_image.ensure_default_image, vmm)
    create, first, kill = [], [], []

    def ip(*a: str) -> None:
        subprocess.run(["ip", *a], check=True, capture_output=True)

    def netns_up(ns: str) -> None:
        """A fresh, empty namespace `ns` (a leftover of an earlier run is removed first)."""
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        ip("netns", "add", ns)

    def tap_up(ns: str) -> None:
        ip("-n", ns, "tuntap", "add", "dev", "tap0", "mode", "tap")
        ip("-n", ns, "addr", "add", f"{g.gateway}/{g.prefix}", "dev", "tap0")
        ip("-n", ns, "link", "set", "tap0", "up")
        ip("-n", ns, "link", "set", "lo", "up")

    def netns_del(ns: str) -> None:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def printed_one(ns: str) -> bool:
        st, body = _guest_http(ns, INTERPRETER_PORT, "POST", "/execute", json.dumps({"code": "print(1)"}).encode(),
                               timeout=60)
        events = [json.loads(line) for line in body.decode(errors="replace").splitlines()
                  if line.strip().startswith("{")]
        return st == 200 and any(e.get("type") == "stdout" and e.get("text") == "1\n" for e in events)

    try:
        for i in range(n):
            ns = f"cubebench{os.getpid() % 10000}x{i}"
            await asyncio.to_thread(netns_up, ns)
            machine_ = None
            try:
                await asyncio.to_thread(tap_up, ns)
                rw = writable_layer(work / f"rw-{i}.img", 1024, default_image.default_guest_config())
                spec = guest.machine_spec(image, rw, vcpus=1, memory_mb=1024,
                                          network=NetworkAttachment("tap0", g.mac, ns))
                t0 = time.monotonic()
                machine_ = await boot(vmm, f"benchcold{i}", spec)
                for port in (ENVD_PORT, INTERPRETER_PORT):
                    # _until awaits the probe before the loop moves on: bind this round's ns and port.
                    await _until(lambda ns=ns, port=port: _guest_http(ns, port, "GET", "/health")[0] < 300,
                                 900, f"/health on {port}")
                create.append(ms(t0))
                await _until(lambda ns=ns: printed_one(ns), 900, "print(1)")
                first.append(ms(t0))
                t1 = time.monotonic()
                m, machine_ = machine_, None
                await m.kill()
                kill.append(ms(t1))
                progress(f"cold boot {i + 1}/{n}: agent healthy {create[-1]:.0f} ms, print(1) {first[-1]:.0f} ms")
            finally:
                if machine_ is not None:
                    await machine_.kill()
                await asyncio.to_thread(netns_del, ns)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"create_ms": summary(create), "first_run_code_ms": summary(first), "kill_ms": summary(kill)}


# ---- main ------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--concurrency", default="10,50")
    ap.add_argument("--cold", type=int, default=3)
    ap.add_argument("--bursts", type=int, default=0, help="bursts of --burst sequential creates, --gap s apart")
    ap.add_argument("--burst", type=int, default=8)
    ap.add_argument("--gap", type=float, default=20.0)
    ap.add_argument("--snapshots", type=int, default=10, help="rounds of snapshot, create from it, fork")
    args = ap.parse_args()
    point_sdk_at_node(CFG)

    result: dict = {"bench": "api", "machine": machine(), "targets": TARGETS,
                    "template": sdk_env(CFG)["CUBE_TEMPLATE_ID"]}
    progress(f"sequential: {args.n} x create + print(1) + kill")
    result["sequential"] = sequential(args.n)
    if args.bursts:
        progress(f"bursts: {args.bursts} x {args.burst} creates, {args.gap} s apart")
        result["bursts"] = bursts(args.bursts, args.burst, args.gap)
    for k in [int(x) for x in args.concurrency.split(",") if x]:
        progress(f"concurrent: {k} creates at once")
        result[f"concurrent_{k}"] = asyncio.run(concurrent(k))
        asyncio.run(wait_drained())
        progress(f"concurrent {k}: {result[f'concurrent_{k}']}")
    if args.snapshots:
        progress(f"snapshots: {args.snapshots} x snapshot + create from it + fork, then a fork of 10")
        result["snapshots"] = snapshots(args.snapshots)
        asyncio.run(wait_drained())
    if args.cold:
        progress(f"cold boot baseline: {args.cold} boots of the default image (about a minute each under TCG)")
        result["cold_boot"] = asyncio.run(cold_boots(args.cold))
        seq, cold = result["sequential"], result["cold_boot"]
        result["speedup_vs_cold_boot"] = {
            "create_p50": round(cold["create_ms"]["p50"] / seq["create_ms"]["p50"], 1),
            "first_run_code_p50": round(cold["first_run_code_ms"]["p50"] / seq["first_run_code_ms"]["p50"], 1),
        }
    seq = result["sequential"]
    result["meets_targets"] = {
        "sequential_create_p50": seq["create_ms"]["p50"] <= TARGETS["sequential_create_p50_ms"],
        "sequential_create_p99": seq["create_ms"]["p99"] <= TARGETS["sequential_create_p99_ms"],
        "create_to_first_result_p50": seq["first_run_code_ms"]["p50"] <= TARGETS["create_to_first_result_p50_ms"],
        "zero_failures_at_50": result.get("concurrent_50", {}).get("failures", 0) == 0,
    }
    emit(result)


if __name__ == "__main__":
    main()
