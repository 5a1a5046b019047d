"""The guest kernel: Debian's cloud kernel, downloaded as a package and unpacked, never installed.

Cached under `<artifacts>/kernel/<package>_<version>/` with `vmlinuz` and `modules/` (the
package's /lib/modules/<release> tree).
"""
from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..cache import cached_dir
from ..errors import ArtifactError
from ..settings import VmmSettings

log = logging.getLogger("vmm_core.kernel")


@dataclass(frozen=True)
class Kernel:
    package: str
    version: str
    release: str  # `uname -r` inside the guest, the name of the modules directory
    vmlinuz: Path
    modules_dir: Path

    @property
    def key(self) -> str:
        return f"{self.package}_{self.version}"


def _apt(*args: str) -> str:
    try:
        return subprocess.run(["apt-cache", *args], check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise ArtifactError(f"apt-cache {' '.join(args)} failed: {e}") from e


def resolve_package(meta_package: str) -> tuple[str, str]:
    """Map the metapackage to the concrete kernel image package and its candidate version."""
    deps = _apt("depends", meta_package)
    names = [line.split()[-1] for line in deps.splitlines() if "Depends: linux-image-" in line]
    if not names:
        raise ArtifactError(f"{meta_package} names no linux-image dependency (is apt's package list current?)")
    pkg = names[0]
    version = ""
    for line in _apt("policy", pkg).splitlines():
        if line.strip().startswith("Candidate:"):
            version = line.split(":", 1)[1].strip()
    if not version or version == "(none)":
        raise ArtifactError(f"no candidate version for {pkg}")
    return pkg, version


def _build(pkg: str, version: str, out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="cube-kernel-") as tmp:
        log.info("downloading %s=%s", pkg, version)
        r = subprocess.run(["apt-get", "download", f"{pkg}={version}"], cwd=tmp, capture_output=True, text=True)
        debs = list(Path(tmp).glob("*.deb"))
        if r.returncode != 0 or not debs:
            raise ArtifactError(f"apt-get download {pkg}={version} failed: {r.stderr.strip()}")
        unpacked = Path(tmp) / "x"
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)], check=True)
        vmlinuz = next(unpacked.glob("boot/vmlinuz-*"), None)
        moddirs = list(unpacked.glob("lib/modules/*"))
        if vmlinuz is None or not moddirs:
            raise ArtifactError(f"{debs[0].name} has no vmlinuz or modules")
        # The package leaves modules.dep to depmod at install time; we never install it, so run
        # depmod on the unpacked tree ourselves.
        subprocess.run(["depmod", "-b", str(unpacked), moddirs[0].name], check=True)
        shutil.copy2(vmlinuz, out / "vmlinuz")
        shutil.move(str(moddirs[0]), out / "modules")
        (out / "release").write_text(moddirs[0].name)


def _load(out: Path, pkg: str, version: str) -> Kernel:
    return Kernel(pkg, version, (out / "release").read_text().strip(), out / "vmlinuz", out / "modules")


def ensure_kernel(settings: VmmSettings) -> Kernel:
    """The cached guest kernel for the current candidate version, downloading it when missing.

    Without a package list (offline, or apt not updated) the newest cached kernel is used.
    """
    base = settings.artifacts_dir / "kernel"
    try:
        pkg, version = resolve_package(settings.kernel_package)
    except ArtifactError:
        cached = sorted(p for p in base.glob("*_*") if (p / "release").exists()) if base.is_dir() else []
        if not cached:
            raise
        pkg, version = cached[-1].name.split("_", 1)
        return _load(cached[-1], pkg, version)
    out = cached_dir(settings.artifacts_dir, "kernel", f"{pkg}_{version}", lambda d: _build(pkg, version, d))
    return _load(out, pkg, version)
