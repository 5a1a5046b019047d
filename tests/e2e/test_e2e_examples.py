"""The examples under examples/ against the node `make up` runs, with small N.

examples/rl: the RL / SWE-bench style driver (the unmodified `e2b` SDK) runs as a user runs it, as a
script, with 4 tasks at most 2 at a time: each task's reward must be the one its candidate patch
earns (right, half right, wrong, not valid Python), every task in a sandbox of its own, and nothing
of the run left. Then, in-process, a task timeout far shorter than a task whose test sleeps a
minute: every task fails with it, and its sandboxes (whose creates may have been cut short before
their ids came back) are killed all the same. Every sandbox carries this run's metadata, so the
package's leftover check covers them.

examples/browser: the `browser` template is built by its module (`make template-browser`: the image
from Debian's Chromium and PyPI Playwright, then `cubemastercli tpl create-from-image`), or found up
to date, and the example runs as a script: a web sandbox serves a page, a private browser sandbox's
Chromium is driven over CDP through the proxy by Playwright on this host and screenshots it, and
Playwright inside the browser sandbox does the same on loopback. The example checks what it saw;
this test checks the report and the PNG again, and that no sandbox is left.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from e2b import Sandbox, SandboxQuery
from PIL import Image

from examples.rl import driver
from examples.rl.tasks import Task
from sdk.client import CubeClient
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


# A task no deadline under a minute lets finish: its one test sleeps. (With the default tasks a
# 0.5 s deadline was once beaten by a task served from the warm pool.)
ENDLESS = Task(name="endless", statement="the test never ends in time",
               files={"tests/__init__.py": "", "tests/test_wait.py": "import time\nimport unittest\n\n\n"
                      "class WaitTest(unittest.TestCase):\n    def test_wait(self):\n        time.sleep(60)\n"})


async def test_rl_task_timeout_kills_every_sandbox():
    cfg = driver.DriverConfig(concurrency=2, task_timeout_s=0.5, max_attempts=1, metadata=tag({"case": "rl-timeout"}))
    out = await driver.run(2, cfg, tasks=[ENDLESS])
    for res in out["results"]:
        CREATED.update(res["sandbox_ids"])
    CREATED.update(out["swept_ids"])

    assert out["completed"] == 0 and out["failures"] == 2
    assert all(e.startswith("task timeout (0.5s)") for e in out["errors"]), out["errors"]
    assert out["leftover"] == 0
    assert listed({TAG: RUN_ID, "case": "rl-timeout"}) == []


@pytest.mark.timeout(2400)  # a first build: Debian packages, the image's unpack, Chromium's start under TCG
def test_browser_example_screenshots_a_page_served_by_another_sandbox(tmp_path):
    r = subprocess.run([sys.executable, "-m", "examples.browser.template"], cwd=REPO, env=os.environ.copy(),
                       capture_output=True, text=True, timeout=2300)
    assert r.returncode == 0, r.stderr[-3000:]
    template_id = r.stdout.strip().splitlines()[-1]
    assert template_id.startswith("browser-"), r.stdout
    # The alias the example uses names that template.
    with CubeClient() as c:
        assert c.get_template("browser").template_id == template_id

    png_path = tmp_path / "page.png"
    r = subprocess.run([sys.executable, "examples/browser/screenshot.py", "--out", str(png_path), "--inside",
                        "--metadata", f"{TAG}={RUN_ID}", "--metadata", "case=browser-example"],
                       cwd=REPO, env=os.environ.copy(), capture_output=True, text=True, timeout=900)
    assert r.stdout.strip(), f"no output (rc {r.returncode}): {r.stderr[-3000:]}"
    out = json.loads(r.stdout.strip().splitlines()[-1])
    CREATED.update({out["web_sandbox"], out["browser_sandbox"]})
    print(f"\nbrowser example: {out['ms']} ({out['browser']})")
    assert out["checks"] == {"title": True, "background": True, "subresources_from_web_sandbox": True,
                             "cdp_refused_without_token": True, "inside": True}, out
    assert out["ok"] and r.returncode == 0, r.stderr[-2000:]
    assert out["title"].startswith("Cube page ") and out["title"] == out["expected_title"]
    assert "HeadlessChrome" in out["user_agent"] and out["browser"].startswith("Chrome/")
    png = png_path.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) == out["screenshot_bytes"]
    with Image.open(png_path) as im:
        assert im.size == (800, 450)
        # The stylesheet's background fills the page; the orange dot (from the web sandbox's SVG) is drawn.
        colours = {tuple(c) for _, c in im.convert("RGB").getcolors(maxcolors=1 << 20) or []
                   if isinstance(c, tuple)}
    assert (18, 52, 86) in colours, sorted(colours)[:20]
    assert any(c[0] > 200 and 100 < c[1] < 200 and c[2] < 60 for c in colours), sorted(colours)[:20]
    assert out["inside"]["size"] == [640, 360] and out["inside"]["title"].startswith("Inside ")
    assert listed({TAG: RUN_ID, "case": "browser-example"}) == []
