"""RL rollout benchmark: examples/rl's driver against a running node (`make up`) at several concurrencies.

    .venv/bin/python bench/rl_bench.py [--concurrency 10,50,100] [--rounds 1] [--min-tasks 20] [--level-timeout 480]

For each concurrency k: max(k x rounds, min-tasks) tasks (the example's "fix the bug" tasks: a sandbox of the default
template each, the repository written, the candidate patch applied, `python3 -m unittest` run, the
reward parsed), at most k in flight. Per level:
  sandboxes_per_min    sandboxes created per minute of the level's wall time (retries' included)
  tasks_per_min        tasks that got their reward, per minute
  latency_s            per task, from taking a slot to the reward (retries and backoff included)
  create_s, test_s     the successful attempt's create and test run
  failures             tasks with no reward once retries (or the task's timeout) ran out
  rate_limited         creates the node refused for capacity (429; max_sandboxes per node), which
                       the driver retried after a backoff: waits, failures only at the task's timeout
  retries              every retried attempt, by cause (retry_reasons)
  reward_mismatches    tasks whose reward differs from the task's known one (must be 0)
A level still running after --level-timeout is cut (its sandboxes killed) and reported as such.
Between levels every sandbox of the level is gone (the driver's sweep).

Progress goes to stderr; the last stdout line is one JSON object.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import emit, machine, point_sdk_at_node, progress  # noqa: E402
from cube_common.mtls import Role  # noqa: E402
from deploy.supervisor import NodeConfig  # noqa: E402
from examples.rl import driver  # noqa: E402

CFG = NodeConfig.from_env()
TAG = {"bench": f"rl-{os.getpid()}"}
LEVEL_KEYS = ("tasks", "concurrency", "completed", "failures", "retries", "retry_reasons", "rate_limited",
              "reward_mismatches", "wall_s", "sandboxes_created", "sandboxes_per_min", "tasks_per_min",
              "latency_s", "create_s", "test_s", "errors", "swept", "leftover", "cut_at_deadline", "mean_reward")


def node_capacity() -> list[dict]:
    """Each node's max_sandboxes as the master reports it (best effort: null when unreadable)."""
    env = {**os.environ, "CUBE_MASTER_ADDR": CFG.master_addr, "CUBE_TLS_DIR": str(CFG.tls(Role.OPERATOR).dir)}
    try:
        r = subprocess.run([str(REPO / ".venv/bin/cubemastercli"), "--json", "node", "list"], capture_output=True,
                           text=True, env=env, timeout=60)
        nodes = json.loads(r.stdout) if r.returncode == 0 else []
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return []
    out = []
    for n in nodes:
        st = n.get("status", {})
        out.append({"node": st.get("nodeId") or st.get("node_id"),
                    "max_sandboxes": st.get("maxSandboxes") or st.get("max_sandboxes"),
                    "vcpus": st.get("vcpusTotal") or st.get("vcpus_total"), "accel": st.get("accel")})
    return out


def level(k: int, n: int, timeout: float) -> dict:
    cfg = driver.DriverConfig(concurrency=k, metadata=TAG)
    summary = asyncio.run(driver.run(n, cfg, deadline_s=timeout))
    out = {key: summary[key] for key in LEVEL_KEYS}
    out["reward_mismatches"] = len(summary["reward_mismatches"])
    out["errors"] = out["errors"][:5]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--concurrency", default="10,50,100")
    # One round at 50 and 100 keeps the run within minutes on 2 cores under TCG (a task's tests
    # take ~4 s of guest CPU there); at 100 it is one burst past the node's 64 sandboxes.
    ap.add_argument("--rounds", type=int, default=1, help="tasks per level = concurrency x rounds")
    ap.add_argument("--min-tasks", type=int, default=20, help="at least this many tasks per level")
    ap.add_argument("--level-timeout", type=float, default=480.0, help="seconds before a level is cut")
    args = ap.parse_args()
    point_sdk_at_node(CFG)

    result: dict = {"bench": "rl", "machine": machine(), "template": "base", "nodes": node_capacity(),
                    "rounds": args.rounds, "level_timeout_s": args.level_timeout}
    for k in [int(x) for x in args.concurrency.split(",") if x]:
        n = max(k * args.rounds, args.min_tasks)
        progress(f"concurrency {k}: {n} tasks, at most {k} in flight")
        result[f"concurrent_{k}"] = out = level(k, n, args.level_timeout)
        progress(f"concurrency {k}: {json.dumps(out, sort_keys=True)}")
    emit(result)


if __name__ == "__main__":
    main()
