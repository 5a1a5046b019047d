"""Debian root filesystems with mmdebstrap, from the apt sources this host is configured with."""
from __future__ import annotations

import subprocess
from pathlib import Path

from ..errors import ArtifactError

# Documentation and locales are dead weight in a guest image.
_EXCLUDES = ("/usr/share/man/*", "/usr/share/doc/*", "/usr/share/locale/*", "/usr/share/info/*")


def apt_source_files() -> list[Path]:
    """The host's enabled apt source files: mmdebstrap copies them, so no mirror is hard-coded."""
    files = sorted(Path("/etc/apt/sources.list.d").glob("*.sources")) + sorted(
        Path("/etc/apt/sources.list.d").glob("*.list"))
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists() and any(
            line.strip() and not line.lstrip().startswith("#") for line in legacy.read_text().splitlines()):
        files.insert(0, legacy)
    if not files:
        raise ArtifactError("no apt sources configured on this host (/etc/apt/sources.list.d)")
    return files


def suite() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return "bookworm"


def sources_fingerprint() -> str:
    return "\n".join(f"{p}:{p.read_text()}" for p in apt_source_files())


def mmdebstrap(target: Path, packages: list[str], *, variant: str = "minbase") -> None:
    cmd = ["mmdebstrap", "--quiet", f"--variant={variant}", "--mode=root", "--format=directory",
           f"--include={','.join(packages)}"]
    cmd += [f"--dpkgopt=path-exclude={p}" for p in _EXCLUDES]
    # Packages that register manual pages as alternatives (OpenJDK's postinst) fail when the
    # directory the excluded pages would be in does not exist.
    cmd += ["--essential-hook=mkdir -p \"$1\"/usr/share/man/man1"]
    cmd += ["--customize-hook=rm -rf \"$1\"/var/cache/apt/* \"$1\"/var/lib/apt/lists/*"]
    cmd += [suite(), str(target)] + [str(p) for p in apt_source_files()]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise ArtifactError(f"mmdebstrap failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
