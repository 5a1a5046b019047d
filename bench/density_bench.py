"""Density benchmark: how many idle code interpreters one node holds, and what each one costs the host.

    .venv/bin/python bench/density_bench.py [--parallel 4] [--max 0] [--min-available-mb 2048]
                                            [--idle-s 60] [--window-s 20] [--settle-s 20]
                                            [--settle-tries 8] [--seed 0]

Against a running node (`make up`), with the unmodified SDK (`e2b_code_interpreter.AsyncSandbox`):
1. Fill: default-template sandboxes are created --parallel at a time (metadata {"bench": "density",
   "run": <uuid>}, timeout 1800 s) until the node refuses one (429, or 503 / a SandboxException: the
   message is kept as stop_reason; a refusal is retried after --settle-s until --settle-tries come
   in a row, since a node busy starting sandboxes measures less room than it has once they idle),
   host MemAvailable (/proc/meminfo) falls under --min-available-mb, or --max are alive (0: none).
     alive               sandboxes created and still running at the end
     create_ms           each create's wall time (p50, p99); fill_s: wall time to create them all
2. Idle: nothing runs in them for --idle-s, then over --window-s each sandbox's QEMU (found from the
   cubelet's record <state>/cubelet/sandboxes/<id>.json -> vm_id -> <vms>/<vm_id>/machine.json's pid,
   checked against the process' command line) is sampled (vmm_core.accounting.process_cpu_seconds):
     idle_cpu_ms_per_s   per sandbox, CPU ms used per wall second (p50, p90); sum_pct_of_host: all of
                         them together as % of the host's cores
     host_busy_pct       the whole host's non-idle CPU share over the same window (/proc/stat)
3. Memory, after the window (vmm_core.accounting.process_memory, i.e. smaps_rollup):
     pss_mb, private_dirty_mb   per QEMU (p50, p90), and pss total
     host_used_delta_mb_per_sandbox   (MemTotal - MemAvailable) after minus before, divided by alive
                         (includes what the node itself grows by, e.g. refilling its warm pool)
     ksm                 whether the host's KSM runs and what it saves (host-wide); guests' RAM takes
                         part only on a node started with CUBE_MEM_MERGE=1
4. Responsiveness: a seeded random 10 % (at least one) run `run_code("1 + 1")` one after the other;
   each latency, and whether it answered "2" within 1 s.
Every sandbox created is killed at the end (also on Ctrl-C or an error); then the run's metadata is
listed and whatever is left is killed too: `leftover` counts sandboxes still listed after that.
The node's own view (GET /nodes: capacity, accel) is included as `nodes`.

Progress goes to stderr; the last stdout line is one JSON object.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
from e2b import RateLimitException, SandboxException, SandboxQuery, ServiceBusyException  # noqa: E402
from e2b_code_interpreter import AsyncSandbox  # noqa: E402

from bench.common import emit, machine, percentile, point_sdk_at_node, progress, summary  # noqa: E402
from deploy.supervisor import NodeConfig  # noqa: E402
from services.cubelet.registration import host_memory  # noqa: E402
from vmm_core.accounting import host_cpu_times, ksm_state, process_cpu_seconds, process_memory  # noqa: E402
from vmm_core.machine import list_machines  # noqa: E402
from vmm_core.settings import VmmSettings  # noqa: E402
from vmm_core.spec import MachinePaths, MachineRecord  # noqa: E402

CFG = NodeConfig.from_env()
SANDBOX_TIMEOUT_S = 1800  # far beyond the run, so no sandbox ends on its own while we count it
TARGETS = {"alive_min": 200, "host_mb_per_sandbox_max": 80, "idle_cpu_ms_per_s_max": 2.0,
           "sample_answered_share_min": 1.0}
MB = 2**20


def meminfo() -> dict[str, int]:
    """MemTotal and MemAvailable in bytes (the cubelet's own reading of /proc/meminfo)."""
    total, available = host_memory()
    return {"MemTotal": total, "MemAvailable": available}


def qemu_pid(sandbox_id: str, vms: VmmSettings) -> int | None:
    """The QEMU pid behind a sandbox, from the cubelet's record of it and the machine's record.

    A sandbox served from the warm pool keeps the pool machine's vm_id, so the record's vm_id is
    read rather than assumed to equal the sandbox id."""
    records = CFG.state_dir / "cubelet" / "sandboxes"
    # The SDK may append a client id to the sandbox id ("<id>-<client>"): try the id as given first.
    rec = next((r for r in (records / f"{sandbox_id}.json", records / f"{sandbox_id.split('-')[0]}.json")
                if r.exists()), None)
    if rec is None:
        return None
    try:
        vm_id = json.loads(rec.read_text())["vm_id"]
        paths = MachinePaths(vms.vms_dir / vm_id)
        pid = MachineRecord.load(paths.record).pid
        with open(f"/proc/{pid}/cmdline", "rb") as f:  # guard against a reused pid
            return pid if str(paths.qmp).encode() in f.read() else None
    except (OSError, ValueError, KeyError):
        return None


def node_objects() -> list[dict] | dict:
    """The master's node list, raw (admin-only; with auth off the local key is admin)."""
    try:
        r = httpx.get(f"{os.environ['E2B_API_URL']}/nodes", headers={"X-API-KEY": os.environ["E2B_API_KEY"]},
                      timeout=10)
    except httpx.HTTPError as e:
        return {"error": str(e)}
    if r.status_code != 200:  # 403 / 404 where the endpoint is not ours to read
        return {"error": f"HTTP {r.status_code}"}
    return r.json()


def refusal(e: BaseException) -> bool:
    """Is this the node saying it has no room (as opposed to a create that broke)?"""
    if isinstance(e, (RateLimitException, ServiceBusyException)):
        return True
    return isinstance(e, SandboxException) and (getattr(e, "status_code", None) == 503 or any(
        w in str(e).lower() for w in ("full", "no room", "capacity", "max_sandboxes", "insufficient")))


class Fill:
    """Creates sandboxes --parallel at a time until the first stop condition."""

    def __init__(self, args: argparse.Namespace, run_id: str) -> None:
        self.args = args
        self.meta = {"bench": "density", "run": run_id}
        self.made: list[AsyncSandbox] = []
        self.create_ms: list[float] = []
        self.errors: list[str] = []
        self.started = 0
        self.stop_reason: str | None = None
        self.refusals = 0        # every refusal, settled or not
        self.refused_in_row = 0  # refusals since the last create that went through

    def _should_stop(self) -> bool:
        if self.stop_reason:
            return True
        if self.args.max and self.started >= self.args.max:
            self.stop_reason = f"--max {self.args.max} reached"
        elif meminfo()["MemAvailable"] < self.args.min_available_mb * MB:
            self.stop_reason = f"MemAvailable under {self.args.min_available_mb} MB"
        return self.stop_reason is not None

    async def _worker(self) -> None:
        while not self._should_stop():
            self.started += 1
            t0 = time.monotonic()
            try:
                sbx = await AsyncSandbox.create(metadata=self.meta, timeout=SANDBOX_TIMEOUT_S)
            except Exception as e:  # noqa: BLE001 - refusals end the fill once settled, the rest are counted
                if refusal(e):
                    # A node measures its room: while it is busy starting sandboxes their CPU looks
                    # high. Let it settle, and stop only when it still refuses afterwards.
                    self.refusals += 1
                    self.refused_in_row += 1
                    if self.refused_in_row > self.args.settle_tries:
                        self.stop_reason = self.stop_reason or f"refused: {type(e).__name__}: {e}"
                        return
                    self.started -= 1
                    await asyncio.sleep(self.args.settle_s)
                    continue
                self.errors.append(f"{type(e).__name__}: {e}"[:300])
                if len(self.errors) >= 5:  # a node that fails every create is not filling up
                    self.stop_reason = self.stop_reason or f"{len(self.errors)} failed creates"
                continue
            self.refused_in_row = 0
            self.create_ms.append((time.monotonic() - t0) * 1000)
            self.made.append(sbx)
            if len(self.made) % 10 == 0:
                progress(f"{len(self.made)} created, MemAvailable {meminfo()['MemAvailable'] // MB} MB")

    async def run(self) -> float:
        t0 = time.monotonic()
        await asyncio.gather(*(self._worker() for _ in range(self.args.parallel)))
        return time.monotonic() - t0


def idle_cpu(pids: dict[str, int], window_s: float) -> dict:
    """Each QEMU's CPU use, and the host's, over the same window."""
    before = {s: process_cpu_seconds(p) for s, p in pids.items()}
    idle0, total0 = host_cpu_times()
    t0 = time.monotonic()
    time.sleep(window_s)
    after: dict[str, float] = {}
    for s, p in pids.items():
        try:
            after[s] = process_cpu_seconds(p)
        except OSError:  # it died during the window: no figure for it
            pass
    wall = time.monotonic() - t0
    idle1, total1 = host_cpu_times()
    per = [(after[s] - before[s]) * 1000 / wall for s in after]
    cores = os.cpu_count() or 1
    return {"window_s": round(wall, 1), "measured": len(per),
            "idle_cpu_ms_per_s": {"p50": round(percentile(per, 50), 2), "p90": round(percentile(per, 90), 2),
                                  "sum_pct_of_host": round(sum(per) / 1000 / cores * 100, 1)},
            "host_busy_pct": round((1 - (idle1 - idle0) / max(1, total1 - total0)) * 100, 1)}


def memory(pids: dict[str, int]) -> dict:
    pss, dirty = [], []
    for p in pids.values():
        try:
            m = process_memory(p)
        except OSError:
            continue
        pss.append(m.pss / MB)
        dirty.append(m.private_dirty / MB)
    return {"measured": len(pss),
            "pss_mb": {"p50": round(percentile(pss, 50), 1), "p90": round(percentile(pss, 90), 1),
                       "total": round(sum(pss), 1)},
            "private_dirty_mb": {"p50": round(percentile(dirty, 50), 1), "p90": round(percentile(dirty, 90), 1)}}


async def sample(made: list[AsyncSandbox], seed: int) -> dict:
    """run_code("1 + 1") on a seeded 10 % of them, one at a time so they do not queue behind each other."""
    if not made:
        return {"n": 0, "answered": 0, "latency_ms": [], "errors": []}
    chosen = random.Random(seed).sample(made, max(1, math.ceil(len(made) * 0.1)))
    lat, answered, errors = [], 0, []
    for sbx in chosen:
        t0 = time.monotonic()
        try:
            ex = await sbx.run_code("1 + 1", timeout=30, request_timeout=30)
            ms = (time.monotonic() - t0) * 1000
            answered += ex.text == "2" and ms < 1000
            if ex.text != "2":
                errors.append(f"{sbx.sandbox_id}: answered {ex.text!r} error {ex.error}")
        except Exception as e:  # noqa: BLE001 - an unanswered sample is the finding
            ms = (time.monotonic() - t0) * 1000
            errors.append(f"{sbx.sandbox_id}: {type(e).__name__}: {e}"[:300])
        lat.append(round(ms, 1))
    return {"n": len(chosen), "answered": answered, "latency_ms": lat,
            "latency_summary_ms": summary(lat, 1), "errors": errors[:5]}


async def kill_all(made: list[AsyncSandbox], meta: dict[str, str]) -> dict:
    """Kill what we created, then sweep by the run's metadata (creates cut by Ctrl-C, lost handles)."""
    sem = asyncio.Semaphore(8)

    async def kill(sid: str) -> None:
        async with sem:
            try:
                await asyncio.wait_for(AsyncSandbox.kill(sid), 60)
            except Exception as e:  # noqa: BLE001 - the sweep below catches what this misses
                progress(f"kill {sid}: {type(e).__name__}: {e}")

    await asyncio.gather(*(kill(s.sandbox_id) for s in made))
    swept = 0
    listed: list = []
    for _ in range(3):
        listed = []
        pages = AsyncSandbox.list(query=SandboxQuery(metadata=meta), limit=100)
        while pages.has_next:
            listed += await pages.next_items()
        if not listed:
            break
        swept += len(listed)
        await asyncio.gather(*(kill(s.sandbox_id) for s in listed))
        await asyncio.sleep(2)
    return {"killed": len(made), "swept": swept, "leftover": len(listed)}


async def run(args: argparse.Namespace, result: dict) -> None:
    run_id = uuid.uuid4().hex
    fill = Fill(args, run_id)
    vms = VmmSettings()
    mem0 = meminfo()
    used0 = mem0["MemTotal"] - mem0["MemAvailable"]
    result.update(run=run_id, machines_before=len(list_machines(vms)))
    try:
        progress(f"filling the node, {args.parallel} at a time (run {run_id})")
        fill_s = await fill.run()
        n = len(fill.made)
        progress(f"{n} created in {fill_s:.1f} s; stop: {fill.stop_reason}")
        result.update(created=n, fill_s=round(fill_s, 1), stop_reason=fill.stop_reason, refusals=fill.refusals,
                      create_ms=summary(fill.create_ms, 1), create_errors=fill.errors[:5],
                      machines_after=len(list_machines(vms)))
        pids = {s.sandbox_id: p for s in fill.made if (p := qemu_pid(s.sandbox_id, vms)) is not None}
        result["qemu_found"] = len(pids)
        progress(f"idling {args.idle_s} s, then measuring CPU over {args.window_s} s")
        await asyncio.sleep(args.idle_s)
        result["idle"] = await asyncio.to_thread(idle_cpu, pids, args.window_s)
        mem = memory(pids)
        mem1 = meminfo()
        used1 = mem1["MemTotal"] - mem1["MemAvailable"]
        mem.update(host_used_before_mb=used0 // MB, host_used_after_mb=used1 // MB,
                   host_mem_available_after_mb=mem1["MemAvailable"] // MB,
                   host_used_delta_mb_per_sandbox=round((used1 - used0) / MB / n, 1) if n else None)
        ksm = ksm_state()
        if ksm is not None:  # what the host's page merging saves (the node offers RAM to it with CUBE_MEM_MERGE)
            mem["ksm"] = {"running": ksm.running, "saved_mb": ksm.saved_bytes // MB}
        result["memory"] = mem
        progress(f"sampling run_code on 10 % of {n}")
        result["sample"] = await sample(fill.made, args.seed)
        alive = 0
        for s in fill.made:  # still running after the idle period and the sample?
            try:
                alive += await s.is_running(request_timeout=10)
            except Exception:  # noqa: BLE001 - not answering counts as not alive
                pass
        result["alive"] = alive
    finally:
        progress(f"killing {len(fill.made)} sandboxes")
        result.update(await asyncio.shield(kill_all(fill.made, fill.meta)))


def targets(result: dict) -> dict:
    mem = result.get("memory", {})
    per_mb = max((v for v in (mem.get("pss_mb", {}).get("p50"), mem.get("host_used_delta_mb_per_sandbox"))
                  if v is not None), default=None)
    idle = result.get("idle", {}).get("idle_cpu_ms_per_s", {}).get("p50")
    smp = result.get("sample", {})
    share = smp["answered"] / smp["n"] if smp.get("n") else None
    return {"alive": {"target_min": TARGETS["alive_min"], "value": result.get("alive"),
                      "met": (result.get("alive") or 0) >= TARGETS["alive_min"]},
            # the larger of PSS and the host's own accounting: either one alone can flatter
            "host_mb_per_sandbox": {"target_max": TARGETS["host_mb_per_sandbox_max"], "value": per_mb,
                                    "met": per_mb is not None and per_mb <= TARGETS["host_mb_per_sandbox_max"]},
            "idle_cpu_ms_per_s": {"target_max": TARGETS["idle_cpu_ms_per_s_max"], "value": idle,
                                  "met": idle is not None and idle <= TARGETS["idle_cpu_ms_per_s_max"]},
            "sample_answered_under_1s": {"target_share": TARGETS["sample_answered_share_min"], "value": share,
                                         "met": share is not None and share >= TARGETS["sample_answered_share_min"]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--parallel", type=int, default=4, help="creates in flight at once")
    ap.add_argument("--max", type=int, default=0, help="stop at this many sandboxes (0: no limit)")
    ap.add_argument("--min-available-mb", type=int, default=2048, help="stop when host MemAvailable falls under this")
    ap.add_argument("--idle-s", type=float, default=60.0, help="idle time before measuring")
    ap.add_argument("--window-s", type=float, default=20.0, help="CPU measurement window")
    ap.add_argument("--settle-s", type=float, default=20.0, help="wait after a refusal before trying again")
    ap.add_argument("--settle-tries", type=int, default=8,
                    help="refusals in a row (all workers) after which the node counts as full")
    ap.add_argument("--seed", type=int, default=0, help="seed of the 10 %% run_code sample")
    args = ap.parse_args()
    point_sdk_at_node(CFG)

    nodes = node_objects()
    accel = next((n.get("accel") for n in nodes if isinstance(n, dict)), None) if isinstance(nodes, list) else None
    m = machine()
    result: dict = {"bench": "density", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": m,
                    "mem_total_mb": meminfo()["MemTotal"] // MB, "accel": accel, "nodes": nodes,
                    "params": vars(args)}
    try:
        asyncio.run(run(args, result))
    except KeyboardInterrupt:
        result["interrupted"] = True
    result["targets"] = targets(result)
    emit(result)


if __name__ == "__main__":
    main()
