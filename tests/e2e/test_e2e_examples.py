"""The examples under examples/ against the node `make up` runs, with small N.

examples/rl: the RL / SWE-bench style driver (the unmodified `e2b` SDK) runs as a user runs it, as a
script, with 4 tasks at most 2 at a time: each task's reward must be the one its candidate patch
earns (right, half right, wrong, not valid Python), every task in a sandbox of its own, and nothing
of the run left. Then, in-process, a task timeout shorter than any task: every task fails with it,
and its sandboxes (whose creates may have been cut short before their ids came back) are killed all
the same. Every sandbox carries this run's metadata, so the package's leftover check covers them.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from e2b import Sandbox, SandboxQuery

from examples.rl import driver
from tests.e2e.cluster import REPO
from tests.e2e.run import CREATED, RUN_ID, TAG, tag

# The first four tasks of examples/rl/tasks.py and what their patches earn: written out here, not
# read from the tasks, so a task that changed its reward cannot pass unnoticed.
EXPECTED = {"000-merge-intervals": 1.0, "001-binary-search": 0.75, "002-parse-duration": 0.5,
            "003-roman-numerals": 0.0}


def listed(metadata: dict[str, str]) -> list[str]:
    pages = Sandbox.list(query=SandboxQuery(metadata=metadata), limit=100)
    ids: list[str] = []
    while pages.has_next:
        ids += [s.sandbox_id for s in pages.next_items()]
    return ids


def test_rl_example_rewards_and_nothing_left():
    r = subprocess.run([sys.executable, "examples/rl/driver.py", "--tasks", "4", "--concurrency", "2",
                        "--metadata", f"{TAG}={RUN_ID}", "--metadata", "case=rl-example"],
                       cwd=REPO, env=os.environ.copy(), capture_output=True, text=True, timeout=600)
    assert r.stdout.strip(), f"no output (rc {r.returncode}): {r.stderr[-2000:]}"
    out = json.loads(r.stdout.strip().splitlines()[-1])
    for res in out["results"]:
        CREATED.update(res["sandbox_ids"])
    CREATED.update(out["swept_ids"])

    assert out["failures"] == 0, out["errors"]
    assert out["rewards"] == EXPECTED, out["results"]
    assert out["reward_mismatches"] == []
    assert out["leftover"] == 0 and out["swept"] == 0  # each task killed its own sandbox
    assert r.returncode == 0, r.stderr[-2000:]
    ids = [i for res in out["results"] for i in res["sandbox_ids"]]
    assert len(ids) == len(set(ids)) >= 4  # a sandbox of its own for every task (and every retry)
    for res in out["results"]:
        assert res["total"] > 0 and res["attempts"] == 1 + len(res["retry_reasons"])
    failed = {res["task"]: res["failed_tests"] for res in out["results"]}
    assert failed["merge-intervals"] == []
    assert failed["binary-search"] == ["tests.test_search.FindTest.test_last: FAIL"]
    assert out["tasks_per_min"] > 0 and out["latency_s"]["n"] == 4
    assert listed({TAG: RUN_ID, "case": "rl-example"}) == []


async def test_rl_task_timeout_kills_every_sandbox():
    cfg = driver.DriverConfig(concurrency=2, task_timeout_s=0.5, max_attempts=1, metadata=tag({"case": "rl-timeout"}))
    out = await driver.run(2, cfg)
    for res in out["results"]:
        CREATED.update(res["sandbox_ids"])
    CREATED.update(out["swept_ids"])

    assert out["completed"] == 0 and out["failures"] == 2
    assert all(e.startswith("task timeout (0.5s)") for e in out["errors"]), out["errors"]
    assert out["leftover"] == 0
    assert listed({TAG: RUN_ID, "case": "rl-timeout"}) == []
