"""The guest agent as vmm_core's input: checked before anything is built, laid out in the base
image at its import names, and part of the base image's key."""
from __future__ import annotations

from pathlib import Path

import pytest

from vmm_core import AgentPackage, ArtifactError, GuestAgent, VmmSettings, ensure_guest_artifacts
from vmm_core.guest.base_image import _agent_key, _copy_agent


def _package(root: Path, *files: str) -> Path:
    root.mkdir(parents=True)
    (root / "__init__.py").write_text("")
    for f in files:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_text(f"# {f}\n")
    return root


@pytest.fixture
def agent(tmp_path: Path) -> GuestAgent:
    req = tmp_path / "requirements.txt"
    req.write_text("aiohttp\n")
    lock = tmp_path / "requirements.lock"
    lock.write_text("aiohttp==3.9.5\n")
    return GuestAgent((AgentPackage("svc.agent", _package(tmp_path / "src/agent", "main.py", "sub/x.py")),
                       AgentPackage("common", _package(tmp_path / "src/common", "ports.py"))), req, lock)


def _with(agent: GuestAgent, **changes) -> GuestAgent:
    fields = {"packages": agent.packages, "requirements": agent.requirements, "constraints": agent.constraints}
    return GuestAgent(**{**fields, **changes})


def test_a_complete_agent_passes(agent):
    agent.check()


@pytest.mark.parametrize("broken, message", [
    (lambda a, t: _with(a, packages=()), "no packages"),
    (lambda a, t: _with(a, packages=(AgentPackage("gone", t / "missing"),)), "not a Python package directory"),
    (lambda a, t: _with(a, packages=(AgentPackage("plain", t),)), "not a Python package directory"),
    (lambda a, t: _with(a, packages=(AgentPackage("not-a-name", a.packages[0].source),)), "dotted Python name"),
    (lambda a, t: _with(a, packages=(a.packages[0], a.packages[0])), "twice"),
    (lambda a, t: _with(a, packages=(*a.packages, AgentPackage("svc", a.packages[1].source))), "contains another"),
    (lambda a, t: _with(a, requirements=t / "nope.txt"), "requirements file"),
    (lambda a, t: _with(a, constraints=t / "nope.lock"), "constraints file"),
])
def test_a_missing_or_malformed_input_is_an_artifact_error(agent, tmp_path, broken, message):
    with pytest.raises(ArtifactError, match=message):
        broken(agent, tmp_path).check()


def test_ensure_guest_artifacts_fails_before_building_anything(agent, tmp_path):
    settings = VmmSettings(state_dir=tmp_path / "state")
    with pytest.raises(ArtifactError, match="constraints"):
        ensure_guest_artifacts(settings, _with(agent, constraints=tmp_path / "absent.lock"))
    assert not (tmp_path / "state").exists()


def test_packages_land_at_their_import_names(agent, tmp_path):
    (agent.packages[0].source / "__pycache__").mkdir()
    (agent.packages[0].source / "__pycache__/main.cpython-311.pyc").write_bytes(b"stale")
    app = tmp_path / "app"
    _copy_agent(agent, app)
    files = sorted(str(p.relative_to(app)) for p in app.rglob("*") if p.is_file())
    assert files == ["common/__init__.py", "common/ports.py", "svc/__init__.py", "svc/agent/__init__.py",
                     "svc/agent/main.py", "svc/agent/sub/x.py"]
    assert (app / "svc/__init__.py").read_text() == ""  # the parent is an empty package


def test_the_key_follows_the_agents_code(agent):
    before = _agent_key(agent)
    (agent.packages[1].source / "ports.py").write_text("PORT = 1\n")
    assert _agent_key(agent) != before
