"""testkit.isolated: what `make test` runs the suite in (a network namespace and state dir of its own)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from testkit import REPO, isolated

PROBE = """
import json, os, socket, subprocess
from testkit.isolated import in_isolation
ip = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
print(json.dumps({"isolated": in_isolation(), "links": [l.split(":")[1].strip() for l in ip.splitlines()],
                  "lo_up": "LOWER_UP" in ip, "state": os.environ.get("CUBE_STATE_DIR"),
                  "e2b": sorted(k for k in os.environ if k.startswith("E2B_")),
                  "master": os.environ.get("CUBE_MASTER_ADDR"), "netns": os.readlink("/proc/self/ns/net")}))
"""


@pytest.fixture
def dirs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("a network namespace needs root")
    return tmp_path / "node", tmp_path / "node-test"


def _isolated(env: dict[str, str], *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "testkit.isolated", *cmd], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env={**os.environ, **env})


def test_the_command_runs_in_a_namespace_and_state_dir_of_its_own(dirs):
    node, test = dirs
    env = {"CUBE_STATE_DIR": str(node), "E2B_API_KEY": "e2b_operator", "E2B_API_URL": "http://127.0.0.1:3000",
           "CUBE_MASTER_ADDR": "127.0.0.1:9000"}
    r = _isolated(env, sys.executable, "-c", PROBE)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["isolated"] is True
    assert out["netns"] != os.readlink("/proc/self/ns/net")
    assert out["links"] == ["lo"] and out["lo_up"]
    assert out["state"] == str(test)
    assert out["e2b"] == [] and out["master"] is None  # the operator's client settings stay outside
    # The test state dir is private and borrows the node's artifact cache.
    assert (test / "artifacts").is_symlink() and os.readlink(test / "artifacts") == str(node / "artifacts")
    assert os.stat(test).st_mode & 0o077 == 0


def test_exit_status_is_the_commands_and_a_second_run_reuses_the_state_dir(dirs):
    node, test = dirs
    env = {"CUBE_STATE_DIR": str(node)}
    assert _isolated(env, "sh", "-c", "exit 7").returncode == 7
    assert _isolated(env, "true").returncode == 0
    assert os.readlink(test / "artifacts") == str(node / "artifacts")


def test_refuses_the_nodes_own_state_dir_or_an_artifacts_dir_of_its_own(dirs):
    node, test = dirs
    r = _isolated({"CUBE_STATE_DIR": str(node), "CUBE_TEST_STATE_DIR": str(node)}, "true")
    assert r.returncode != 0 and "the tests need their own" in r.stderr
    (test / "artifacts").mkdir(parents=True)
    r = _isolated({"CUBE_STATE_DIR": str(node)}, "true")
    assert r.returncode != 0 and "remove it" in r.stderr


def test_the_mark_alone_does_not_make_isolation(monkeypatch):
    monkeypatch.setenv(isolated.MARK, "net:[1]")
    assert not isolated.in_isolation()


def test_the_two_lanes_run_every_test_package_once(tmp_path):
    from testkit import suite

    cmds = suite.lane_commands([], tmp_path)
    packages = {p.parent.relative_to(REPO).as_posix() for p in (REPO / "tests").glob("*/__init__.py")}
    control = set(suite.CONTROL_LANE)
    assert control <= packages  # each names a test package that exists
    assert set(cmds["control"][-len(control):]) == control
    machines = cmds["machines"]
    assert machines[-1] == "tests" and {a.removeprefix("--ignore=") for a in machines if a.startswith("--ignore=")} \
        == control
    # Each lane's pytest keeps its temporary files apart.
    assert f"--basetemp={tmp_path / 'control'}" in cmds["control"]
    assert f"--basetemp={tmp_path / 'machines'}" in machines
