"""Cube's guest agent as the base image's input: envd and cube_common, envd's requirements, the lock."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import services.envd.bundle as bundle
from services.cubelet.artifacts import agent_args
from services.cubelet.guest_agent import BASE_PYTHONPATH, agent_service, cube_agent

REPO = Path(__file__).resolve().parents[2]


def test_cube_agent_is_envd_and_what_it_imports():
    agent = cube_agent()
    agent.check()
    assert [(p.name, p.source) for p in agent.packages] == [("services.envd", REPO / "services/envd"),
                                                            ("cube_common", REPO / "cube_common")]
    assert agent.requirements == REPO / "services/envd/requirements.txt"
    assert agent.constraints == REPO / "requirements.lock"


def test_the_agent_is_started_by_the_name_it_is_installed_under():
    # `python -m services.envd` from the app dir, where the packages land at their import names.
    argv = agent_service().argv
    assert argv[1:3] == ("-m", "services.envd")
    assert BASE_PYTHONPATH.split(":")[0] == "/opt/cube/app"
    assert "services.envd" in {p.name for p in cube_agent().packages}


def test_without_the_lock_file_there_is_no_agent(monkeypatch, tmp_path):
    monkeypatch.setattr(bundle, "LOCK_NAME", "no-such.lock")
    with pytest.raises(bundle.BundleError, match=r"no-such\.lock not found"):
        bundle.agent_bundle()


def test_the_bundle_is_standard_library_only_and_knows_no_host_side():
    # envd ships this module into the guest: importing it loads the standard library and the
    # agent's own packages, nothing else (no vmm_core, no other service, no third-party package).
    code = ("import sys\n"
            "before = set(sys.modules)\n"
            "import services.envd.bundle\n"
            "new = {m for m in set(sys.modules) - before if m.split('.')[0] not in sys.stdlib_module_names}\n"
            "print(sorted(m for m in new if m != 'services' and not m.startswith(('services.envd', 'cube_common'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_make_artifacts_passes_the_agent_to_vmm_core():
    args = agent_args(cube_agent())
    assert f"--agent-package=services.envd={REPO / 'services/envd'}" in args
    assert f"--agent-package=cube_common={REPO / 'cube_common'}" in args
    assert f"--agent-constraints={REPO / 'requirements.lock'}" in args


def test_vmm_core_artifacts_without_an_agent_refuses():
    r = subprocess.run([sys.executable, "-m", "vmm_core", "artifacts"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and "--agent-package" in r.stderr
