"""The guest base image: read-only erofs with the guest init and the guest agent's runtime.

The agent is an input (a ``GuestAgent``: its packages, its requirements and the constraints that pin
them); this module knows nothing about which agent it is. Built in three cached steps so that
editing the agent does not re-run mmdebstrap:
  base-rootfs/<key>   Debian minbase + python3 + iproute2   (key: packages, apt sources)
  agent-site/<key>    the agent's PyPI dependencies          (key: its requirements and constraints)
  base-image/<key>    rootfs + site + agent packages + init + cube-ctl -> base.erofs
                                                             (key: the above, every .py of the agent)
Inside the image the agent's packages are under ``APP_DIR`` and its dependencies under
``SITE_DIR``; whoever starts the agent puts both on its PYTHONPATH.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..cache import cached_dir, input_key, tree_key
from ..errors import ArtifactError
from ..settings import VmmSettings
from . import debian
from .agent import GuestAgent

BASE_PACKAGES = ["python3", "iproute2"]
GUEST_INIT = Path(__file__).with_name("init.py")
CTL_AGENT_SOURCE = Path(__file__).with_name("cube_ctl.c")
CC = "gcc"
# Where things live inside the base image.
SITE_DIR = "opt/cube/site"
APP_DIR = "opt/cube/app"


@dataclass(frozen=True)
class BaseImage:
    path: Path
    key: str


def _rootfs(settings: VmmSettings) -> Path:
    key = input_key(BASE_PACKAGES, debian.sources_fingerprint(), debian.suite())

    def build(out: Path) -> None:
        debian.mmdebstrap(out / "root", BASE_PACKAGES)

    return cached_dir(settings.artifacts_dir, "base-rootfs", key, build) / "root"


def _agent_site(settings: VmmSettings, agent: GuestAgent) -> Path:
    key = input_key(agent.constraints, agent.requirements, sys.version_info[:2])

    def build(out: Path) -> None:
        # Installed by the host's pip for the same Python minor version as the guest's python3;
        # pure-Python and manylinux wheels run unchanged inside the guest.
        r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                            "--only-binary=:all:", "--target", str(out / "site"), "-c", str(agent.constraints),
                            "-r", str(agent.requirements)], capture_output=True, text=True)
        if r.returncode != 0:
            raise ArtifactError(f"pip install of the agent runtime failed: {r.stderr.strip()[-2000:]}")

    return cached_dir(settings.artifacts_dir, "agent-site", key, build) / "site"


def _guest_python_minor(rootfs: Path) -> tuple[int, int]:
    minors = sorted(int(p.name.split(".", 1)[1]) for p in (rootfs / "usr/lib").glob("python3.*")
                    if p.name.split(".", 1)[1].isdigit())
    if not minors:
        raise ArtifactError("base rootfs has no python3")
    return 3, minors[-1]


def _compiler_version() -> str:
    try:
        return subprocess.run([CC, "-dumpfullversion"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as e:
        raise ArtifactError(f"{CC} is needed to build the guest's cube-ctl: {e}") from e


def _build_ctl_agent(dest: Path) -> None:
    """cube-ctl, linked statically: it must not depend on the guest's libc or a loader search."""
    r = subprocess.run([CC, "-O2", "-Wall", "-Werror", "-static", "-s", "-o", str(dest), str(CTL_AGENT_SOURCE)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise ArtifactError(f"building cube-ctl failed: {r.stderr.strip()[-2000:]}")


def _agent_key(agent: GuestAgent) -> list[list[str]]:
    """The agent's code as a key: each package's import name and the hash of its Python files."""
    return [[p.name, tree_key(p.source, ("**/*.py",))] for p in agent.packages]


def _copy_agent(agent: GuestAgent, app: Path) -> None:
    """Each package at its import name under ``app``, its parents as empty packages."""
    for p in agent.packages:
        dest = app.joinpath(*p.parts)
        for depth in range(1, len(p.parts)):
            parent = app.joinpath(*p.parts[:depth])
            parent.mkdir(parents=True, exist_ok=True)
            (parent / "__init__.py").touch()
        shutil.copytree(p.source, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def ensure_base_image(settings: VmmSettings, agent: GuestAgent) -> BaseImage:
    """Build (or take from the cache) the base image carrying ``agent``. Raises ArtifactError."""
    # Before any build step: a missing input must fail now, not after minutes of mmdebstrap.
    agent.check()
    rootfs = _rootfs(settings)
    if _guest_python_minor(rootfs) != sys.version_info[:2]:
        raise ArtifactError(f"guest python {_guest_python_minor(rootfs)} differs from host {sys.version_info[:2]}; "
                            "the agent runtime is built with the host's pip")
    site = _agent_site(settings, agent)
    key = input_key(rootfs.parent.name, site.parent.name, GUEST_INIT, _agent_key(agent), "pyc-preserve-mtime",
                    CTL_AGENT_SOURCE, _compiler_version())

    def build(out: Path) -> None:
        stage = out / "stage"
        subprocess.run(["cp", "-a", "--reflink=auto", "-l", str(rootfs), str(stage)], check=True)
        shutil.copytree(site, stage / SITE_DIR)
        _copy_agent(agent, stage / APP_DIR)
        init = stage / "sbin" / "cube-init"
        init.unlink(missing_ok=True)  # hard link into the cached rootfs: never write through it
        shutil.copy2(GUEST_INIT, init)
        init.chmod(0o755)
        ctl = stage / "sbin" / "cube-ctl"
        ctl.unlink(missing_ok=True)
        _build_ctl_agent(ctl)
        for d in ("run/cube", "proc", "sys", "dev", "tmp"):
            (stage / d).mkdir(parents=True, exist_ok=True)
        # The image is read-only, so bytecode Python cannot cache at run time must be there already:
        # hash-based .pyc for the agent and its packages (valid whatever the file times), and file
        # times kept exactly (--preserve-mtime) so Debian's timestamp-based stdlib .pyc stay valid.
        # Without both, the agent recompiles everything on every cold boot (~20 s under TCG).
        subprocess.run([sys.executable, "-m", "compileall", "-q", "-j0", "--invalidation-mode", "unchecked-hash",
                        str(stage / SITE_DIR), str(stage / APP_DIR)], check=True, capture_output=True)
        r = subprocess.run(["mkfs.erofs", "--quiet", "--all-root", "--preserve-mtime", str(out / "base.erofs"),
                            str(stage)], capture_output=True, text=True)
        shutil.rmtree(stage)
        if r.returncode != 0:
            raise ArtifactError(f"mkfs.erofs failed: {r.stderr.strip()}")

    out = cached_dir(settings.artifacts_dir, "base-image", key, build)
    return BaseImage(out / "base.erofs", key)
