"""The guest base image: read-only erofs with the guest init and the guest agent's runtime.

Built in three cached steps so that editing the agent does not re-run mmdebstrap:
  base-rootfs/<key>   Debian minbase + python3 + iproute2   (key: packages, apt sources)
  agent-site/<key>    the agent's PyPI dependencies          (key: requirements.lock, agent list)
  base-image/<key>    rootfs + site + agent code + init + cube-ctl -> base.erofs
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

REPO = Path(__file__).resolve().parents[2]
BASE_PACKAGES = ["python3", "iproute2"]
AGENT_REQUIREMENTS = Path(__file__).with_name("agent-requirements.txt")
GUEST_INIT = Path(__file__).with_name("init.py")
CTL_AGENT_SOURCE = Path(__file__).with_name("cube_ctl.c")
CC = "gcc"
AGENT_SOURCE = REPO / "services" / "envd"
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


def _agent_site(settings: VmmSettings) -> Path:
    lock = REPO / "requirements.lock"
    key = input_key(lock, AGENT_REQUIREMENTS, sys.version_info[:2])

    def build(out: Path) -> None:
        # Installed by the host's pip for the same Python minor version as the guest's python3;
        # pure-Python and manylinux wheels run unchanged inside the guest.
        r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                            "--only-binary=:all:", "--target", str(out / "site"), "-c", str(lock),
                            "-r", str(AGENT_REQUIREMENTS)], capture_output=True, text=True)
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


def ensure_base_image(settings: VmmSettings) -> BaseImage:
    rootfs = _rootfs(settings)
    if _guest_python_minor(rootfs) != sys.version_info[:2]:
        raise ArtifactError(f"guest python {_guest_python_minor(rootfs)} differs from host {sys.version_info[:2]}; "
                            "the agent runtime is built with the host's pip")
    site = _agent_site(settings)
    agent_key = tree_key(AGENT_SOURCE, ("**/*.py",)) if AGENT_SOURCE.is_dir() else "none"
    key = input_key(rootfs.parent.name, site.parent.name, GUEST_INIT, agent_key, "pyc-preserve-mtime",
                    CTL_AGENT_SOURCE, _compiler_version())

    def build(out: Path) -> None:
        stage = out / "stage"
        subprocess.run(["cp", "-a", "--reflink=auto", "-l", str(rootfs), str(stage)], check=True)
        shutil.copytree(site, stage / SITE_DIR)
        app = stage / APP_DIR / "services"
        app.mkdir(parents=True)
        (app / "__init__.py").write_text("")
        if AGENT_SOURCE.is_dir():
            shutil.copytree(AGENT_SOURCE, app / "envd", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
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
