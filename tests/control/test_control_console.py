"""The web console (services/api/routes/console.py) and GET /nodes, on a real master and API with
auth on and the fake node: the page and its assets without a key and under a strict CSP, the nodes
endpoint's auth (no key 401, a team's key 403, an admin's 200 with the node's capacity), and the
page itself in Debian's Chromium (npm playwright-core, tests/control/console/): a sandbox the
unmodified E2B SDK created is listed with its charts, paused, resumed and killed from the page (and
the SDK then finds it gone), a template's build log is shown and the template deleted; every
screenshot is checked to hold a rendered page, not a blank one.

The browser sees the fake node (no VMs): what is tested is the page's own behaviour against the
real API (tests/e2e/test_e2e_console.py does the same against the real node). Chromium comes from
scripts/setup.sh (Debian's `chromium`), playwright-core from console/package-lock.json
(tests/support/console_browser.py).
"""

from __future__ import annotations

import json
import re

import httpx
import pytest
from e2b import Sandbox
from e2b.exceptions import NotFoundException

from tests.control.teams_support import Teams, build
from tests.support.console_browser import assert_rendered, drive, node_with_playwright

pytestmark = pytest.mark.timeout(120)

# The markup a careless page would render; the console must show it as text.
HOSTILE = '<img src=x onerror="alert(1)">'


def get(t: Teams, path: str, key: str | None = None) -> httpx.Response:
    return httpx.get(t.c.api_url + path, headers={"X-API-KEY": key} if key else {}, timeout=30)


def is_error_body(r: httpx.Response, code: int) -> bool:
    body = r.json()
    return r.status_code == code and set(body) == {"code", "message"} and body["code"] == code


# ---- routes -----------------------------------------------------------------------------------

def test_console_page_and_assets_need_no_key_and_carry_a_strict_csp(teams):
    page = get(teams, "/console")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert "unsafe" not in csp and "frame-ancestors 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    # No inline script or style: every <script> has a src, and no element carries a style.
    html = page.text
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.S)
    assert scripts == [(' src="/console/assets/console.js" defer', "")]
    assert "<style" not in html and not re.search(r"\s(style|on[a-z]+)=", html)
    for name, ctype in (("console.js", "text/javascript"), ("console.css", "text/css"), ("favicon.svg", "image/svg")):
        r = get(teams, f"/console/assets/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(ctype)
        assert r.headers["content-security-policy"] == csp
    # The script writes API data as text only.
    assert "innerHTML" not in get(teams, "/console/assets/console.js").text
    # Only the shipped files: anything else is an E2B error, and no path reaches the filesystem.
    for name in ("index.html", "nope.js", "..%2Fauth.py", "%2E%2E%2F%2E%2E%2Fapp.py"):
        assert is_error_body(get(teams, f"/console/assets/{name}"), 404), name


def test_nodes_needs_an_admin_key(teams):
    r = get(teams, "/nodes")
    assert is_error_body(r, 401)
    assert is_error_body(get(teams, "/nodes", "e2b_" + "0" * 40), 401)
    r = get(teams, "/nodes", teams.a)
    assert is_error_body(r, 403) and "admin" in r.json()["message"]
    r = get(teams, "/nodes", teams.admin)
    assert r.status_code == 200, r.text
    [node] = r.json()
    assert node["nodeID"] == "node-a" and node["state"] == "ready" and node["accel"] == "tcg"
    # The fake node's capacity (fake_cubelet.FakeCubelet.node_status), as it registered it.
    assert (node["cpuCount"], node["memoryTotalBytes"], node["memoryAvailableBytes"]) == (2, 8 << 30, 6 << 30)
    assert {"code-interpreter", "tiny"} <= set(node["templates"])
    assert "address" not in json.dumps(node).lower()  # no internal host:port
    doc = get(teams, "/openapi.json").json()
    op = doc["paths"]["/nodes"]["get"]
    assert {"200", "401", "403"} <= set(op["responses"]) and op["security"] == [{"ApiKeyAuth": []}]
    assert "/console" not in doc["paths"]


# ---- the page in Chromium ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def playwright_node():
    return node_with_playwright()


def test_console_in_chromium(teams, playwright_node, monkeypatch, tmp_path):
    for var in ("E2B_DEBUG", "E2B_SANDBOX_URL", "E2B_DOMAIN", "E2B_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("E2B_API_URL", teams.c.api_url)
    sbx = Sandbox.create(api_key=teams.admin, metadata={"purpose": "console", "evil": HOSTILE}, timeout=600)
    tid = build(teams, teams.admin, templateID="console-app")
    out = drive(playwright_node, CONSOLE_URL=teams.c.api_url, TEAM_KEY=teams.a, ADMIN_KEY=teams.admin,
                SANDBOX_ID=sbx.sandbox_id, TEMPLATE_ID=tid, PAUSE="1", OUT_DIR=str(tmp_path))

    # No script error, no CSP violation, no alert; the one refusal is the team's key at /nodes
    # (Chromium logs each failed load as a console error).
    assert [(f["url"].removeprefix(teams.c.api_url), f["status"]) for f in out["failures"]] == [("/nodes", 403)]
    assert out["dialogs"] == [] and [e for e in out["errors"] if "status of 403" not in e] == []
    assert out["pageStatus"] == 200 and "script-src 'self'" in out["csp"]
    assert out["loginVisible"] and out["beforeKeyVisible"] == {"tabs": False, "sandboxes": False, "forget": False}
    # The team's key: not the admin's sandbox, and nodes refused in words.
    assert out["teamSandboxRows"] == 0
    assert out["teamNodesError"] == "Listing nodes needs an admin key." and out["teamNodeRows"] == 0
    assert out["storageAfterForget"] == []
    # The admin's: the SDK's sandbox with its state, template, node, age, size and metadata (as text).
    cells = out["rowCells"]
    assert cells[0] == sbx.sandbox_id and cells[1].startswith("running") and cells[2] == "base"
    assert cells[3] == "node-a" and re.fullmatch(r"\d+s|\d+m \d+s", cells[4]) and "MiB" in cells[5]
    assert HOSTILE in cells[6] and out["imgCount"] == 0
    assert out["cpuPoints"] >= 2 and out["chartLines"] == 2  # the fake node's two samples: dots and a line
    assert out["cpuChart"]["width"] > 300 and out["memChart"]["height"] > 100
    assert (out["pausedState"], out["resumedState"]) == ("paused", "running")
    # Templates: the build's log, then deleted from the page.
    assert {"code-interpreter", tid} <= set(out["templateIds"])
    assert "READY" in out["buildLogs"] and out["buildBar"]["width"] > 0
    assert out["deleteArmed"] == "Confirm delete"
    assert get(teams, f"/templates/{tid}", teams.admin).status_code == 404
    # Nodes with capacity.
    cells = out["nodeCells"]
    assert cells[0] == "node-a" and cells[1] == "ready" and cells[3] == "2" and "6.0 GiB of 8.0 GiB" in cells[4]
    # Killed from the page, and really gone.
    assert out["killArmed"] == "Confirm kill" and out["rowsAfterKill"] == 0
    assert sbx.sandbox_id not in {s.sandbox_id for s in Sandbox.list(api_key=teams.admin).next_items()}
    with pytest.raises(NotFoundException):
        Sandbox.get_info(sbx.sandbox_id, api_key=teams.admin)
    # The key went only in the header: never in a URL, no cookie.
    assert out["storageKeys"] == ["cube-console-api-key"] and out["cookies"] == []
    api_calls = [q for q in out["requests"] if "/console" not in q["url"]]
    assert api_calls and all(teams.admin not in q["url"] and teams.a not in q["url"] for q in out["requests"])
    assert all("cookie" not in q["headers"] for q in out["requests"])
    assert {q["headers"].get("x-api-key") for q in api_calls} == {teams.a, teams.admin}
    assert_rendered(out["shots"])
    assert out["loginBox"]["width"] > 200 and out["sandboxRowBox"]["height"] > 10 and out["nodeRowBox"]["height"] > 10
