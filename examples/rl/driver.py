"""RL / SWE-bench style rollouts on Cube with the unmodified E2B SDK.

    eval "$(make -s env)"
    .venv/bin/python examples/rl/driver.py --tasks 24 --concurrency 8

Each task gets a sandbox of its own from one template (default: the SDK's `base`, an alias of
Cube's default template): the task's repository is written into it (`sbx.files.write_files`), the
candidate patch applied on top, its tests run (`python3 -m unittest`, with a time limit inside the
guest) and the reward, the share of tests that pass, parsed from the output. At most
`--concurrency` tasks are in flight (an asyncio.Semaphore). A transient failure (429 when the node is
full, 503, a connection error, a sandbox that stopped answering) gives the task a new sandbox
after a jittered exponential backoff; anything else fails it at once. Waiting for room (429, 503)
is bounded only by the task's deadline, which covers all its attempts; other transient faults
also by --max-attempts. Every sandbox is killed whatever happens: by its task, then by a sweep of
everything carrying this run's metadata (a create cut short by the deadline may have made a sandbox
whose id never came back), and as a last resort by the node at the sandbox's own timeout.

The last stdout line is one JSON object: tasks, rewards, failures, retries, wall time, sandboxes
per minute, per-task latency, and each task's result with the ids of its sandboxes. The exit status
is 0 when every task got its expected reward and no sandbox is left.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
from e2b import (
    AsyncSandbox,
    AuthenticationException,
    CommandExitException,
    InvalidArgumentException,
    NotFoundException,
    RateLimitException,
    SandboxException,
    SandboxQuery,
    ServiceBusyException,
    TimeoutException,
)
from e2b.sandbox.filesystem.filesystem import WriteEntry

if __package__ in (None, ""):  # run as a script: make `examples.rl` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from examples.rl.tasks import Task, task_set

REPO_DIR = "/home/user/repo"
RUN_TAG = "rl-run"  # metadata key naming one driver run: what the final sweep looks for
# How long the final sweep watches for sandboxes of creates the client gave up on (the node
# finishes or undoes such a create within a few seconds of the disconnect).
CREATE_SETTLE_S = 15.0


@dataclass(frozen=True)
class DriverConfig:
    template: str | None = None        # None: the SDK's default (`base`)
    concurrency: int = 8
    task_timeout_s: float = 300.0      # one task, all its attempts and backoffs included
    test_timeout_s: int = 120          # the test command, enforced inside the guest
    max_attempts: int = 10             # attempts that may fail for a transient fault (capacity waits aside)
    backoff_s: float = 0.5             # first backoff; doubles per attempt, jittered
    backoff_max_s: float = 15.0
    capacity_backoff_max_s: float = 5.0  # between creates the node refused for lack of room
    request_timeout_s: float = 120.0   # one API call (a create waits for a clone under load)
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class TaskResult:
    task_id: str
    task: str
    expected_reward: float
    reward: float | None = None        # None: the task failed (no reward)
    passed: int = 0
    total: int = 0
    failed_tests: list[str] = field(default_factory=list)
    attempts: int = 0
    retry_reasons: list[str] = field(default_factory=list)
    sandbox_ids: list[str] = field(default_factory=list)
    latency_s: float = 0.0             # from taking a slot to the reward, retries included
    create_s: float | None = None      # the last attempt's phases
    write_s: float | None = None
    test_s: float | None = None
    error: str | None = None
    create_cut: bool = False           # a create given up on (timeout, deadline): the run's sweep waits for it


@dataclass
class TestOutcome:
    passed: int
    total: int
    failed_tests: list[str]

    @property
    def reward(self) -> float:
        return round(self.passed / self.total, 3) if self.total else 0.0


class TransientError(Exception):
    """An attempt failed in a way a new sandbox may not (capacity, connection, unreachable)."""


# ---- rewards from the test output --------------------------------------------------------------

_RAN = re.compile(r"^Ran (\d+) tests? in ", re.M)
_FAILED = re.compile(r"^FAILED \((.*)\)$", re.M)
_VERDICT = re.compile(r"^(\S+) \((\S+)\) \.\.\. (FAIL|ERROR|unexpected success)$", re.M)


def parse_unittest(output: str) -> TestOutcome:
    """Passed and total tests from `python3 -m unittest -v` output. No summary (the run was killed
    at its time limit, or the interpreter died) is no test passed: a reward of 0, as a patch that
    hangs deserves."""
    ran = _RAN.findall(output)
    if not ran:
        return TestOutcome(0, 0, ["<no test summary>"])
    total = int(ran[-1])
    bad = 0
    failed = _FAILED.findall(output)
    if failed:
        for part in failed[-1].split(","):
            kind, _, count = part.strip().partition("=")
            if kind in ("failures", "errors", "unexpected_successes"):
                bad += int(count)
    names = [f"{m.group(2)}: {m.group(3)}" for m in _VERDICT.finditer(output)]
    return TestOutcome(max(0, total - bad), total, names)


# ---- one task ------------------------------------------------------------------------------------

def _transient(e: BaseException) -> bool:
    """Worth a new sandbox: the node was full or busy, the connection failed, or the sandbox
    stopped answering. A bad request, a missing template or a refused key are not."""
    if isinstance(e, (AuthenticationException, InvalidArgumentException, NotFoundException)):
        return False
    if isinstance(e, (RateLimitException, ServiceBusyException, TimeoutException, httpx.TransportError,
                      ConnectionError)):
        return True
    return isinstance(e, SandboxException) and e.status_code in (502, 503, 504)


def _capacity(e: BaseException) -> bool:
    """The node (or the team's quota) has no room right now: 429, or 503 "no capacity"."""
    return isinstance(e, (RateLimitException, ServiceBusyException))


def _reason(e: BaseException) -> str:
    status = getattr(e, "status_code", None)
    return f"{type(e).__name__}({status})" if isinstance(status, int) else type(e).__name__


async def _kill(sbx: AsyncSandbox) -> None:
    """Kill, bounded: a kill that fails or hangs is left to the run's sweep."""
    try:
        await asyncio.wait_for(sbx.kill(), 60)
    except Exception:  # noqa: BLE001 - a timeout or a refusal: the sweep kills what this missed
        pass


async def _attempt(task: Task, cfg: DriverConfig, metadata: dict[str, str], res: TaskResult) -> TestOutcome:
    t0 = time.monotonic()
    try:
        sbx = await AsyncSandbox.create(
            cfg.template, metadata=metadata, request_timeout=cfg.request_timeout_s,
            # The node kills the sandbox by itself at this timeout should this process die.
            timeout=math.ceil(cfg.task_timeout_s) + 60, allow_internet_access=False)
    except asyncio.CancelledError:
        res.create_cut = True
        raise
    res.sandbox_ids.append(sbx.sandbox_id)
    try:
        t1 = time.monotonic()
        res.create_s = round(t1 - t0, 3)
        # The repository at its buggy commit, then the candidate patch over it, as an agent's edit.
        await sbx.files.write_files([WriteEntry(path=f"{REPO_DIR}/{p}", data=t) for p, t in task.files.items()])
        if task.patch:
            await sbx.files.write_files([WriteEntry(path=f"{REPO_DIR}/{p}", data=t) for p, t in task.patch.items()])
        t2 = time.monotonic()
        res.write_s = round(t2 - t1, 3)
        # The limit is enforced in the guest (coreutils timeout) so a patch that hangs is a reward
        # of 0, not an SDK timeout taken for an unreachable sandbox and retried.
        cmd = f"timeout -k 5 {cfg.test_timeout_s} python3 -m unittest -v 2>&1"
        try:
            out = (await sbx.commands.run(cmd, cwd=REPO_DIR, timeout=cfg.test_timeout_s + 30,
                                          request_timeout=cfg.request_timeout_s)).stdout
        except CommandExitException as e:  # failing tests exit 1: that is a result, not an error
            out = e.stdout
        res.test_s = round(time.monotonic() - t2, 3)
        return parse_unittest(out)
    finally:
        await _kill(sbx)


async def run_task(res: TaskResult, task: Task, cfg: DriverConfig, metadata: dict[str, str],
                   slots: asyncio.Semaphore) -> None:
    """Fill `res` (in place, so a run cut short at its deadline still reports what was done)."""
    async with slots:
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(cfg.task_timeout_s):
                faults = waits = 0
                while True:
                    res.attempts += 1
                    try:
                        outcome = await _attempt(task, cfg, metadata, res)
                        break
                    except Exception as e:  # noqa: BLE001 - sorted into transient or not just below
                        if not _transient(e):
                            res.error = f"{_reason(e)}: {str(e)[:200]}"
                            return
                        if _capacity(e):
                            # No room yet: not a fault. Room comes back as other tasks end, so
                            # only the task's deadline bounds the wait, and backoffs stay short.
                            waits += 1
                            n, cap_max = waits, cfg.capacity_backoff_max_s
                        else:
                            faults += 1
                            if faults >= cfg.max_attempts:
                                res.error = f"{_reason(e)}: {str(e)[:200]}"
                                return
                            n, cap_max = faults, cfg.backoff_max_s
                        res.retry_reasons.append(_reason(e))
                    # Full jitter: the tasks a full node refused together must not come back together.
                    cap = min(cap_max, cfg.backoff_s * 2 ** (n - 1))
                    await asyncio.sleep(random.uniform(cfg.backoff_s, max(cfg.backoff_s, cap)))
            res.reward, res.passed, res.total = outcome.reward, outcome.passed, outcome.total
            res.failed_tests = outcome.failed_tests
        except TimeoutError:
            res.error = f"task timeout ({cfg.task_timeout_s:g}s) after {res.attempts} attempt(s)"
        finally:
            res.latency_s = round(time.monotonic() - t0, 3)


# ---- a run ---------------------------------------------------------------------------------------

async def sweep(metadata: dict[str, str], settle_s: float = 0.0, timeout: float = 120.0) -> tuple[list[str], int]:
    """Kill every sandbox carrying `metadata` until none has been listed for `settle_s` (a create
    the client gave up on may still land on the node): (ids killed, count still listed)."""
    killed: list[str] = []
    start = time.monotonic()
    quiet_since = start
    while True:
        listed = []
        pages = AsyncSandbox.list(query=SandboxQuery(metadata=metadata), limit=100)
        while pages.has_next:
            listed += await pages.next_items()
        now = time.monotonic()
        if listed:
            quiet_since = now
        if (not listed and now - quiet_since >= settle_s) or now - start > timeout:
            return killed, len(listed)
        for info in listed:
            try:
                if await AsyncSandbox.kill(info.sandbox_id):
                    killed.append(info.sandbox_id)
            except Exception:  # noqa: BLE001 - listed again on the next pass
                pass
        await asyncio.sleep(1)


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (as bench/common.py)."""
    s = sorted(values)
    if not s:
        return None
    return s[max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))]


async def run(n: int, cfg: DriverConfig, deadline_s: float | None = None,
              tasks: Sequence[Task] | None = None) -> dict:
    """n tasks with cfg (the first n of `tasks`, repeated; the task set by default): the run's
    summary (what the CLI prints). Tasks not done `deadline_s` after the start are cancelled
    (their sandboxes killed) and count as failures."""
    run_id = uuid.uuid4().hex[:12]
    metadata = {**cfg.metadata, RUN_TAG: run_id}
    slots = asyncio.Semaphore(cfg.concurrency)
    tasks = task_set(n, tasks)
    results = [TaskResult(task_id=f"{i:03d}-{t.name}", task=t.name, expected_reward=t.expected_reward)
               for i, t in enumerate(tasks)]
    t0 = time.monotonic()
    running = [asyncio.create_task(run_task(r, t, cfg, metadata, slots)) for r, t in zip(results, tasks, strict=True)]
    try:
        await asyncio.wait(running, timeout=deadline_s)
    finally:
        # At the deadline, or when this run is itself cancelled (Ctrl-C): cancel what is left;
        # each attempt kills its sandbox on the way out.
        pending = {p for p in running if not p.done()}
        for p in pending:
            p.cancel()
        await asyncio.shield(asyncio.gather(*pending, return_exceptions=True))
        wall = time.monotonic() - t0
        # Then anything a cut-short create made: shielded, so an interrupted run still cleans up.
        settle = CREATE_SETTLE_S if any(r.create_cut for r in results) else 0.0
        swept, left = await asyncio.shield(sweep({RUN_TAG: run_id}, settle_s=settle))
    for r in results:
        if r.reward is None and r.error is None:
            r.error = f"cancelled at the run's deadline ({deadline_s:g}s)"
    done = [r for r in results if r.reward is not None]
    rewards = [r.reward for r in done if r.reward is not None]  # (typed: float, not float | None)
    created = sum(len(r.sandbox_ids) for r in results)
    reasons = Counter(reason for r in results for reason in r.retry_reasons)
    latencies = [r.latency_s for r in done]
    mismatched = [r.task_id for r in done if r.reward is not None and abs(r.reward - r.expected_reward) > 1e-3]
    return {
        "tasks": n, "concurrency": cfg.concurrency, "template": cfg.template or "base", "run_id": run_id,
        "completed": len(done), "failures": n - len(done),
        "retries": sum(len(r.retry_reasons) for r in results), "retry_reasons": dict(reasons),
        "rate_limited": sum(v for k, v in reasons.items() if k.startswith("RateLimitException")),
        "rewards": {r.task_id: r.reward for r in results},
        "mean_reward": round(sum(rewards) / len(rewards), 3) if rewards else None,
        "reward_mismatches": mismatched,
        "wall_s": round(wall, 2),
        "sandboxes_created": created,
        "sandboxes_per_min": round(created / wall * 60, 1) if wall else None,
        "tasks_per_min": round(len(done) / wall * 60, 1) if wall else None,
        "latency_s": {"p50": percentile(latencies, 50), "p99": percentile(latencies, 99), "n": len(latencies)},
        "create_s": {"p50": percentile([r.create_s for r in done if r.create_s is not None], 50),
                     "p99": percentile([r.create_s for r in done if r.create_s is not None], 99)},
        "test_s": {"p50": percentile([r.test_s for r in done if r.test_s is not None], 50),
                   "p99": percentile([r.test_s for r in done if r.test_s is not None], 99)},
        "errors": sorted({r.error for r in results if r.error})[:10], "cut_at_deadline": bool(pending),
        # Sandboxes no task knew of (a create cut short by a timeout) that the sweep killed.
        "swept": len(swept), "swept_ids": swept, "leftover": left,
        "results": [asdict(r) for r in results],
    }


def ok(summary: dict) -> bool:
    return not summary["failures"] and not summary["reward_mismatches"] and not summary["leftover"]


def _metadata(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--metadata takes KEY=VALUE, not {item!r}")
        out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--tasks", type=int, default=12, help="number of tasks (the task set repeated)")
    ap.add_argument("--concurrency", type=int, default=DriverConfig.concurrency, help="tasks in flight at most")
    ap.add_argument("--template", default=None, help="template id or alias (default: the SDK's `base`)")
    ap.add_argument("--task-timeout", type=float, default=DriverConfig.task_timeout_s,
                    help="seconds for one task, its retries included")
    ap.add_argument("--max-attempts", type=int, default=DriverConfig.max_attempts,
                    help="attempts per task that may fail for a transient fault; waits for room (429) "
                         "are bounded by --task-timeout only")
    ap.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE",
                    help="metadata on every sandbox of the run (repeatable)")
    args = ap.parse_args(argv)
    cfg = DriverConfig(template=args.template, concurrency=args.concurrency, task_timeout_s=args.task_timeout,
                       max_attempts=args.max_attempts, metadata=_metadata(args.metadata))
    summary = asyncio.run(run(args.tasks, cfg))
    print(json.dumps(summary, sort_keys=True), flush=True)
    return 0 if ok(summary) else 1


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Exit without the interpreter's finalization: in about one run in ten of the test suite's, the
    # SDK's HTTP transport (pyqwest, native threads) aborted the process there (SIGABRT, nothing on
    # stderr) after every sandbox was killed and the result printed. Nothing is left to clean up.
    os._exit(code)
