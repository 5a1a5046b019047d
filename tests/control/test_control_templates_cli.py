"""cubemastercli tpl create-from-image / watch / builds / delete against a running master: the job
id, plain lines or a progress bar, --json, the template id on READY, exit codes."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys

import httpx
import pytest

from cube_common.sizes import parse_size_mb
from sdk.gen.cube.v1 import cubelet_pb2 as C
from tests.control.cli import cubemastercli
from tests.control.cluster import REPO
from tests.control.templates_support import UUID_RE, reset

pytestmark = pytest.mark.timeout(120)
H = {"X-API-KEY": "k"}
CREATE = ["tpl", "create-from-image", "--image", "registry.test:5000/app:3", "--writable-layer-size", "512M",
          "--expose-port", "49999", "--expose-port", "49983", "--probe", "49999"]


@pytest.fixture
def tc(cluster):
    reset(cluster)
    yield cluster, cluster.masters[0].address, cluster.cubelets[0]
    reset(cluster)


def test_create_prints_job_id_and_watch_prints_template_id(tc):
    _c, m, node = tc
    p = cubemastercli(m, *CREATE, "--probe-path", "/health", "--cpu", "2", "--memory", "1024", "--env", "A=1",
                      "--env", "B=x=y", "--cmd", "/bin/app", "--cmd", "serve", "--arg=--port", "--arg", "49999",
                      "--template-id", "cli-app", "--alias", "cli-alias", "--registry-username", "bob",
                      "--registry-password", "pw")
    job_id = p.stdout.strip()
    assert UUID_RE.match(job_id), p.stdout
    w = cubemastercli(m, "tpl", "watch", "--job-id", job_id)
    lines = w.stdout.splitlines()
    assert lines[-1] == "cli-app" and w.returncode == 0
    text = w.stdout
    for phase in ("PULLING", "UNPACKING", "BUILDING_IMAGE", "BOOTING", "PROBING", "SNAPSHOTTING", "READY"):
        assert phase in text
    assert "layers 3/3" in text and "30.0/30.0 MiB" in text and "\r" not in text  # plain lines: not a TTY
    assert any(row.startswith("READY") and "node-a" in row for row in lines)
    (req,) = node.build_requests
    assert (req.writable_layer_mb, list(req.expose_ports), req.probe_port, req.probe_path) == (512, [49999, 49983],
                                                                                              49999, "/health")
    assert (req.vcpus, req.memory_mb, dict(req.env)) == (2, 1024, {"A": "1", "B": "x=y"})
    assert (list(req.cmd), list(req.args)) == (["/bin/app", "serve"], ["--port", "49999"])
    assert (req.oci_image.username, req.oci_image.password) == ("bob", "pw")
    # The template is listed, and the build too.
    info = cubemastercli(m, "tpl", "info", "cli-alias").stdout
    assert f"{job_id} (READY)" in info and "49999, 49983" in info and "registry.test:5000/app:3" in info
    table = cubemastercli(m, "tpl", "list").stdout
    assert any(row.startswith("cli-app ") and "cli-alias" in row and "ready" in row for row in table.splitlines())
    builds = cubemastercli(m, "tpl", "builds", "--template", "cli-app").stdout.splitlines()
    assert builds[0].split()[:3] == ["BUILD", "TEMPLATE", "PHASE"]
    assert builds[1].split()[:3] == [job_id, "cli-app", "READY"]
    assert json.loads(cubemastercli(m, "--json", "tpl", "builds").stdout)[0]["jobId"] == job_id


def test_json_create_and_watch(tc):
    _c, m, _node = tc
    job = json.loads(cubemastercli(m, *CREATE, "--json").stdout)
    assert UUID_RE.match(job["jobId"]) and len(job["templateId"]) == 20 and job["nodeId"] == "node-a"
    assert "password" not in json.dumps(job)
    w = cubemastercli(m, "tpl", "watch", "--job-id", job["jobId"], "--json")
    events = [json.loads(line) for line in w.stdout.splitlines()]
    assert [e["phase"] for e in events][-1] == "READY" and events[-1]["template"]["templateId"] == job["templateId"]
    assert events[0]["phase"] == "PULLING" and events[0]["layersTotal"] == 3


def test_failed_build_exits_1_with_reason(tc):
    _c, m, node = tc
    node.build_fail = (C.PROBING, "probe :49999/health never answered\n--- guest console (tail) ---\nKernel panic")
    job_id = cubemastercli(m, *CREATE, "--template-id", "cli-bad").stdout.strip()
    w = cubemastercli(m, "tpl", "watch", "--job-id", job_id, check=False)
    assert w.returncode == 1
    assert "FAILED" in w.stdout and "cli-bad" not in w.stdout.splitlines()[-1]
    assert f"build {job_id} of template cli-bad failed in PROBING" in w.stderr and "Kernel panic" in w.stderr
    j = cubemastercli(m, "tpl", "watch", "--job-id", job_id, "--json", check=False)
    assert j.returncode == 1 and json.loads(j.stdout.splitlines()[-1])["phase"] == "FAILED"
    assert cubemastercli(m, "tpl", "info", "cli-bad", check=False).returncode == 1


def test_wait_combines_create_and_watch(tc):
    _c, m, node = tc
    ok = cubemastercli(m, *CREATE, "--template-id", "cli-wait", "--wait")
    assert ok.stdout.splitlines()[-1] == "cli-wait" and "cli-wait on node node-a" in ok.stderr
    node.build_fail = (C.PULLING, "manifest unknown")
    bad = cubemastercli(m, *CREATE, "--template-id", "cli-wait2", "--wait", check=False)
    assert bad.returncode == 1 and "manifest unknown" in bad.stderr


def test_watch_draws_a_progress_bar_on_a_tty(tc):
    _c, m, node = tc
    node.build_step_s = 0.03
    job_id = cubemastercli(m, *CREATE, "--template-id", "cli-tty").stdout.strip()
    master, slave = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUBE_MASTER_ADDR": m}
    p = subprocess.Popen([sys.executable, "-m", "sdk.cli", "tpl", "watch", "--job-id", job_id], cwd=REPO, env=env,
                         stdout=slave, stderr=subprocess.PIPE, close_fds=True)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    assert p.stderr is not None
    assert p.wait(30) == 0, p.stderr.read()
    os.close(master)
    text = out.decode()
    assert "\r\x1b[K" in text and "[########################] 100%" in text and "layers 3/3" in text
    assert text.replace("\r", "").splitlines()[-1] == "cli-tty"


def test_bad_input_and_id_in_use(tc):
    c, m, node = tc
    p = cubemastercli(m, *[a if a != "512M" else "lots" for a in CREATE], check=False)
    assert p.returncode != 0 and "writable-layer-size" in p.stderr
    p = cubemastercli(m, "tpl", "create-from-image", "--writable-layer-size", "1G", "--expose-port", "1",
                      "--probe", "1", check=False)
    assert p.returncode == 2 and "--image" in p.stderr
    p = cubemastercli(m, *CREATE, "--env", "NOEQUALS", check=False)
    assert p.returncode != 0 and "KEY=VALUE" in p.stderr
    p = cubemastercli(m, *CREATE, "--registry-username", "bob", check=False)
    assert p.returncode != 0 and "go together" in p.stderr
    p = cubemastercli(m, *CREATE, "--template-id", "tiny", check=False)
    assert p.returncode == 1 and "ALREADY_EXISTS" in p.stderr and "already exists" in p.stderr
    p = cubemastercli(m, *CREATE, "--probe", "0", check=False)
    assert p.returncode == 2 and "invalid port 0" in p.stderr
    p = cubemastercli(m, *CREATE, "--probe-path", "health", check=False)
    assert p.returncode == 1 and "INVALID_ARGUMENT" in p.stderr and "probe path" in p.stderr
    assert c.keys("template-builds/") == [] and node.build_requests == []
    p = cubemastercli(m, "tpl", "watch", "--job-id", "0b3f9c1e-8a59-4c4b-9f0e-3d2a1b0c9d8e", check=False)
    assert p.returncode == 1 and "NOT_FOUND" in p.stderr


def test_delete_refuses_while_used_unless_force(tc):
    c, m, node = tc
    assert cubemastercli(m, *CREATE, "--template-id", "cli-used", "--wait").returncode == 0
    sid = httpx.post(c.api_url + "/v2/sandboxes", headers=H, json={"templateID": "cli-used"}).json()["sandboxID"]
    p = cubemastercli(m, "tpl", "delete", "cli-used", check=False)
    assert p.returncode == 1 and "FAILED_PRECONDITION" in p.stderr and f"{sid} (running)" in p.stderr
    assert "force" in p.stderr and "cli-used" in node.templates
    assert "deleted template cli-used" in cubemastercli(m, "tpl", "delete", "cli-used", "--force").stdout
    assert c.sandbox_ids() == set() and "cli-used" not in node.templates
    assert cubemastercli(m, "tpl", "info", "cli-used", check=False).returncode == 1


@pytest.mark.parametrize("text,mb", [("512M", 512), ("1G", 1024), ("1.5G", 1536), ("2048K", 2), ("1GiB", 1024),
                                     ("1gb", 1024), ("100", 100), ("1T", 1 << 20), (256, 256), (1.5, 2)])
def test_parse_size(text, mb):
    assert parse_size_mb(text) == mb


@pytest.mark.parametrize("text", ["", "x", "-1G", "0", "1P", "1.5.5G", True, "1\u212a", float("nan"), None, [1]])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        parse_size_mb(text)
