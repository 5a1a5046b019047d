"""The web console against the real node (`make up`), in Debian's Chromium: a sandbox the unmodified
E2B SDK created on a real microVM is listed with the node it runs on and charts of its real metrics,
the node's capacity is shown, and killing it from the page kills it (the SDK and the node then find
nothing of it). The page's own behaviour in detail (teams, pause and resume, templates, CSP, keys):
tests/control/test_control_console.py."""

from __future__ import annotations

import pytest
from e2b import Sandbox, SandboxQuery
from e2b.exceptions import NotFoundException

from deploy.env import sdk_env
from tests.e2e import cluster
from tests.e2e.cluster import API_URL, CFG
from tests.e2e.run import tag
from tests.support.console_browser import assert_rendered, drive, node_with_playwright

pytestmark = pytest.mark.timeout(180)


def test_console_lists_charts_and_kills_a_real_sandbox(sandboxes, tmp_path):
    node = node_with_playwright()
    key = sdk_env(CFG)["E2B_API_KEY"]
    sbx = sandboxes.create({"purpose": "console"})
    sbx.commands.run("true")  # it answers: its metrics have a sample or more by the time the page asks
    out = drive(node, CONSOLE_URL=API_URL, ADMIN_KEY=key, SANDBOX_ID=sbx.sandbox_id, OUT_DIR=str(tmp_path))

    assert out["pageStatus"] == 200 and out["errors"] == [] and out["failures"] == []
    cells = out["rowCells"]
    assert cells[0] == sbx.sandbox_id and cells[1].startswith("running") and cells[2] == "code-interpreter-v1"
    node_id = cells[3]
    assert node_id and node_id != "-"
    assert out["cpuPoints"] >= 1 and out["cpuChart"]["width"] > 300
    assert "code-interpreter" in out["templateIds"]
    assert out["nodeCells"][1] == "ready" and out["nodeCells"][0] == node_id
    assert out["killArmed"] == "Confirm kill"
    mine = Sandbox.list(query=SandboxQuery(metadata=tag({"purpose": "console"})), limit=100).next_items()
    assert sbx.sandbox_id not in {s.sandbox_id for s in mine}
    with pytest.raises(NotFoundException):
        Sandbox.get_info(sbx.sandbox_id)
    cluster.wait_until(lambda: not cluster.traces_of(sbx.sandbox_id), 30, what="the console's sandbox gone")
    assert_rendered(out["shots"])
