"""testkit.isolated: what `make test` runs the suite in (a network namespace and state dir of its own)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
    parts = set(suite.PARTS_LANE)
    assert parts <= packages  # each names a test package that exists
    assert set(cmds["parts"][-len(parts):]) == parts
    nodes = cmds["nodes"]
    assert nodes[-1] == "tests" and {a.removeprefix("--ignore=") for a in nodes if a.startswith("--ignore=")} == parts
    assert {"tests/e2e", "tests/cluster"} <= packages - parts  # the nodes lane keeps what needs a whole node
    # Each lane's pytest keeps its temporary files apart.
    assert f"--basetemp={tmp_path / 'parts'}" in cmds["parts"]
    assert f"--basetemp={tmp_path / 'nodes'}" in nodes


def test_two_nodes_on_one_machine_share_no_machine_wide_path(tmp_path):
    """Network namespaces do not part unix socket paths or bpffs: the operator's node and the test
    node (another state dir) must not meet there, nor two clusters of different names."""
    from cube_common import defaults
    from deploy import cluster
    from deploy.supervisor import NodeConfig

    operator = NodeConfig(state_dir=Path(defaults.STATE_DIR))
    test = NodeConfig(state_dir=tmp_path / "cube-test")
    # The services' own defaults, kept for make up's node.
    assert operator.machine_wide == {"CUBE_VS_PIN_SUBDIR": "cube/vs", "CUBE_VMM_CGROUP_PARENT": "cube-vms"}
    for name, value in test.machine_wide.items():
        assert value != operator.machine_wide[name] and value.startswith("cube")
    assert test.machine_wide == NodeConfig(state_dir=tmp_path / "cube-test").machine_wide  # stable
    assert test.vs_socket_path == str(tmp_path / "cube-test" / "run" / "vs.sock")
    assert operator.vs_socket_path != test.vs_socket_path
    env = test.env()
    assert {k: env[k] for k in test.machine_wide} == test.machine_wide
    assert env["CUBE_VS_LISTEN"] == f"unix://{test.vs_socket_path}"
    pins = {cluster._env(cluster.ClusterSettings(dir=tmp_path / n, name=n), "h1")["CUBE_VS_PIN_SUBDIR"]
            for n in ("cube", "cubet")}
    assert len(pins) == 2
