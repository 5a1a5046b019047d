"""cubemastercli against a running master: tables and --json for templates, sandboxes, nodes."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.control.cli import cubemastercli

pytestmark = pytest.mark.timeout(90)
H = {"X-API-KEY": "k"}


def test_tpl_list_info(cluster):
    m = cluster.masters[0].address
    table = cubemastercli(m, "tpl", "list").stdout
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["TEMPLATE", "ALIASES", "VCPUS"]
    assert any(row.startswith("code-interpreter ") and "base,code-interpreter-v1" in row for row in lines)
    data = json.loads(cubemastercli(m, "tpl", "list", "--json").stdout)
    assert {t["templateId"] for t in data} >= {"code-interpreter", "tiny"}
    info = cubemastercli(m, "tpl", "info", "base").stdout
    assert "code-interpreter" in info and "node-a" in info
    assert json.loads(cubemastercli(m, "--json", "tpl", "info", "tiny").stdout)["templateId"] == "tiny"
    bad = cubemastercli(m, "tpl", "info", "nope", check=False)
    assert bad.returncode == 1 and "NOT_FOUND" in bad.stderr


def test_tpl_delete(cluster):
    m = cluster.masters[0].address
    node = cluster.cubelets[0]
    node.templates = node.templates + ("scratch",)
    node.register(cluster.etcd, cluster.prefix)
    try:
        assert "scratch" in cubemastercli(m, "tpl", "info", "scratch").stdout
        assert "deleted" in cubemastercli(m, "tpl", "delete", "scratch").stdout
        assert "scratch" not in node.templates
        assert cubemastercli(m, "tpl", "info", "scratch", check=False).returncode == 1
    finally:
        node.templates = tuple(t for t in node.templates if t != "scratch")
        node.register(cluster.etcd, cluster.prefix)


def test_sandbox_list_info_kill(fresh):
    m = fresh.masters[0].address
    ids = [httpx.post(fresh.api_url + "/v2/sandboxes", headers=H,
                      json={"templateID": "base", "metadata": {"team": t}}).json()["sandboxID"] for t in ("a", "b")]
    table = cubemastercli(m, "sandbox", "list").stdout
    assert all(sid in table for sid in ids) and "running" in table
    only_a = json.loads(cubemastercli(m, "sandbox", "list", "--metadata", "team=a", "--json").stdout)
    assert [s["sandboxId"] for s in only_a] == [ids[0]]
    info = json.loads(cubemastercli(m, "sandbox", "info", ids[0], "--json").stdout)
    assert info["phase"] == "SANDBOX_PHASE_RUNNING" and "envdAccessToken" not in info
    assert "node-a" in cubemastercli(m, "sandbox", "info", ids[1]).stdout
    assert "killed" in cubemastercli(m, "sandbox", "kill", *ids).stdout
    assert fresh.sandbox_ids() == set()
    again = cubemastercli(m, "sandbox", "kill", ids[0], check=False)
    assert again.returncode == 1 and "NOT_FOUND" in again.stderr


def test_node_list_and_status(fresh):
    m = fresh.masters[0].address
    httpx.post(fresh.api_url + "/v2/sandboxes", headers=H, json={"templateID": "base"})
    table = cubemastercli(m, "node", "list").stdout
    assert "node-a" in table and fresh.cubelets[0].address in table
    nodes = json.loads(cubemastercli(m, "--json", "node", "list").stdout)
    assert nodes[0]["status"]["nodeId"] == "node-a" and nodes[0]["sandboxesRunning"] == 1
    st = json.loads(cubemastercli(m, "--json", "status").stdout)
    assert st["isLeader"] is True and st["leader"]["masterId"] == st["self"]["masterId"]
