"""The default code-interpreter template: Debian + python3 (ipykernel, numpy, pandas, matplotlib,
e2b-charts, requests, bash_kernel), Deno (the javascript and typescript kernel), R with IRkernel,
Java with the JJava kernel, and nodejs, built by the project from Debian packages and PyPI (no
registry).

What `e2b.Sandbox.create()` (`base`) and `e2b_code_interpreter.Sandbox.create()`
(`code-interpreter-v1`) get when they name no template. Built in cached steps under
`$CUBE_STATE_DIR/artifacts/` (by a node's first template build, or by
`python -m services.cubelet.default_image`), so editing this module does not re-run mmdebstrap or pip:

  default-debian/<key>   mmdebstrap of DEBIAN_PACKAGES          (key: packages, apt sources, suite)
  default-site/<key>     the PyPI packages, host pip --target     (key: requirements.lock, list, python)
  default-rootfs/<key>   debian + site + users and configuration  (key: the two above + this module)
  default-image/<key>    default-rootfs as a read-only ext4 image  (key: default-rootfs key)

The PyPI packages are installed by the host's pip with `--target` (as the guest base image does for
the agent) rather than by a pip inside the root: the host's Python has the same minor version as
Debian's python3 (checked), pip then needs no network or DNS inside a chroot, no pip has to exist in
the template, and the versions are exactly those of `requirements.lock` (`--only-binary` wheels,
which run unchanged on the guest's glibc).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from vmm_core import (
    ArtifactError,
    GuestConfig,
    VmmSettings,
    apt_sources_fingerprint,
    cached_dir,
    debian_suite,
    ext4_from_dir,
    input_key,
    mmdebstrap,
)

from .guest_agent import agent_service

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "requirements.lock"

# Debian's python3 runs the python and bash kernels; R with IRkernel the r kernel (without
# Recommends: no compilers or recommended R packages, ~95 MB); Debian's JRE the java kernel (it has
# the jdk.jshell and jdk.compiler modules JShell needs; the JDK would add 76 MB of jmods). nodejs is
# for users' own `node` (E2B's templates have it); the javascript kernel is Deno's. `requests`
# comes from Debian because requirements.lock does not pin it (nor urllib3/idna/charset-normalizer).
# iproute2 brings `ss`, which the E2B SDK's `wait_for_port` ready command runs.
DEBIAN_PACKAGES = [
    "python3", "python3-pip", "python3-requests", "nodejs", "r-base-core", "r-cran-irkernel",
    "default-jre-headless",
    "bash", "coreutils", "procps", "iproute2", "ca-certificates", "curl", "git", "sudo", "less", "tzdata",
]
# Versions come from requirements.lock (used as constraints). e2b-charts is what the kernels' `e2b/chart`
# format runs on (services/envd/interpreter/e2b_formats.py); it brings pydantic. deno's wheel is
# the Deno binary (/usr/local/bin/deno: the javascript and typescript kernel); jjava's carries the
# java kernel's jar (/usr/local/share/jupyter/kernels/java).
PYPI_PACKAGES = ["ipykernel", "numpy", "pandas", "matplotlib", "bash_kernel", "e2b-charts", "deno", "jjava"]
# Imported (not bound to any name) when a python kernel starts, so the default kernel that lives in
# the snapshot already has them loaded: a clone's first `import pandas` costs nothing. New
# contexts pay the import once (well under a second with KVM, a few seconds under TCG). The user
# never imports e2b_charts: the first figure shown does (0.1 s natively, pydantic mostly), so it is
# loaded here to keep that out of a clone's first chart.
PRELOAD_MODULES = ("numpy", "pandas", "matplotlib", "matplotlib.pyplot", "e2b_charts")

USER = "user"
USER_UID = 1000
PY_DIST = "usr/local/lib/python3.{minor}/dist-packages"
# Test suites shipped inside wheels: tens of MB nobody imports in a sandbox.
_TEST_DIRS = ("numpy/tests", "numpy/*/tests", "pandas/tests", "matplotlib/tests", "mpl_toolkits/*/tests",
              "contourpy/util/tests", "fontTools/*/tests", "kiwisolver/tests", "PIL/tests")
# debugpy (an ipykernel dependency) ships attach helpers for every OS.
_FOREIGN_BINARIES = (".dll", ".dylib", ".exe", ".pdb")


def _guest_python_minor(root: Path) -> int:
    minors = sorted(int(m.group(1)) for p in (root / "usr/lib").glob("python3.*")
                    if (m := re.fullmatch(r"python3\.(\d+)", p.name)))
    if not minors:
        raise ArtifactError("the default root has no python3")
    return minors[-1]


def _debian(settings: VmmSettings) -> Path:
    key = input_key(DEBIAN_PACKAGES, apt_sources_fingerprint(), debian_suite())

    def build(out: Path) -> None:
        mmdebstrap(out / "root", DEBIAN_PACKAGES)

    return cached_dir(settings.artifacts_dir, "default-debian", key, build) / "root"


def _site(settings: VmmSettings) -> Path:
    key = input_key(LOCK, PYPI_PACKAGES, sys.version_info[:2])

    def build(out: Path) -> None:
        r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                            "--no-cache-dir", "--only-binary=:all:", "--target", str(out / "site"),
                            "-c", str(LOCK), *PYPI_PACKAGES], capture_output=True, text=True)
        if r.returncode != 0:
            raise ArtifactError(f"pip install of the default template's packages failed: {r.stderr.strip()[-2000:]}")

    return cached_dir(settings.artifacts_dir, "default-site", key, build) / "site"


def _chroot(root: Path, argv: list[str], *, user: str | None = None, env: dict[str, str] | None = None) -> None:
    cmd = ["chroot"] + ([f"--userspec={user}"] if user else []) + [str(root), *argv]
    base = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    r = subprocess.run(cmd, capture_output=True, text=True, env={**base, **(env or {})})
    if r.returncode != 0:
        raise ArtifactError(f"{' '.join(argv)} in the default root failed: {(r.stderr or r.stdout).strip()[-1500:]}")


def _install_site(site: Path, root: Path, minor: int) -> None:
    """Put the pip --target tree where Debian's python3 looks (/usr/local/lib/python3.X/dist-packages),
    its console scripts on PATH with the guest's interpreter, and its data files under /usr/local."""
    dist = root / PY_DIST.format(minor=minor)
    dist.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(dist, ignore_errors=True)
    shutil.copytree(site, dist, symlinks=True)
    for sub in ("bin", "share", "etc"):
        src = dist / sub
        if not src.is_dir():
            continue
        dst = root / "usr/local" / sub
        dst.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True)
        shutil.rmtree(src)
    for script in (root / "usr/local/bin").iterdir():
        if not script.is_file() or script.is_symlink():
            continue
        data = script.read_bytes()
        if data.startswith(b"#!") and b"python" in data.split(b"\n", 1)[0]:
            # pip wrote the host interpreter's path; inside the template it is Debian's python3.
            script.write_bytes(b"#!/usr/bin/python3\n" + data.split(b"\n", 1)[1])
    for pattern in _TEST_DIRS:
        for d in dist.glob(pattern):
            if d.is_dir():
                shutil.rmtree(d)
    for f in (dist / "debugpy").rglob("*") if (dist / "debugpy").is_dir() else ():
        if f.suffix in _FOREIGN_BINARIES and f.is_file():
            f.unlink()
    # Bytecode of the removed tests is gone with them; the rest stays: the image is read-only, so
    # without it every non-root import of numpy/pandas would compile from source, every time.


def _configure(root: Path, minor: int) -> None:
    dist = root / PY_DIST.format(minor=minor)
    # The sandbox's user, with a login shell, passwordless sudo (as in E2B's templates) and its home.
    _chroot(root, ["useradd", "--create-home", "--uid", str(USER_UID), "--user-group", "--shell", "/bin/bash",
                   USER])
    sudoers = root / "etc/sudoers.d" / USER
    sudoers.write_text(f"{USER} ALL=(ALL:ALL) NOPASSWD: ALL\n")
    sudoers.chmod(0o440)
    # Sandboxes are throwaway machines: let `pip install` work as it does in E2B (PEP 668 marker).
    for marker in (root / "usr/lib").glob("python3.*/EXTERNALLY-MANAGED"):
        marker.unlink()
    # `python` as well as `python3`, as in E2B's templates (built on the python:3 images) and as
    # code written for them assumes; Debian's python-is-python3 package is just this link.
    python = root / "usr/bin/python"
    if not python.exists() and not python.is_symlink():
        python.symlink_to("python3")

    # matplotlib: a non-interactive backend for scripts (kernels use the inline backend through
    # MPLBACKEND, set by the agent), and font caches built now rather than in every sandbox.
    rc = dist / "matplotlib/mpl-data/matplotlibrc"
    text = rc.read_text()
    text, n = re.subn(r"^#*\s*backend\s*:.*$", "backend: Agg", text, count=1, flags=re.M)
    rc.write_text(text if n else text + "\nbackend: Agg\n")
    warm = "import matplotlib.font_manager"
    _chroot(root, ["/usr/bin/python3", "-c", warm], env={"HOME": "/root"})
    _chroot(root, ["/usr/bin/python3", "-c", warm], user=f"{USER_UID}:{USER_UID}", env={"HOME": f"/home/{USER}"})

    # Kernelspecs, for anything in the sandbox that looks for kernels the Jupyter way (the agent
    # launches kernels directly and needs none).
    kernels = root / "usr/local/share/jupyter/kernels"
    (kernels / "bash").mkdir(parents=True, exist_ok=True)
    (kernels / "bash/kernel.json").write_text(
        '{"argv": ["/usr/bin/python3", "-m", "bash_kernel", "-f", "{connection_file}"],\n'
        ' "display_name": "Bash", "language": "bash", "env": {"PS1": "$"}}\n')
    py_spec = kernels / "python3/kernel.json"
    if py_spec.is_file():
        py_spec.write_text(py_spec.read_text().replace('"python"', '"/usr/bin/python3"', 1))

    # Every IPython kernel (any user) preloads the heavy libraries; see PRELOAD_MODULES.
    ipy = root / "etc/ipython"
    ipy.mkdir(parents=True, exist_ok=True)
    preload = ("import importlib as _cube_il\n"
               f"for _cube_m in {PRELOAD_MODULES!r}:\n"
               "    try:\n"
               "        _cube_il.import_module(_cube_m)\n"
               "    except Exception:\n"
               "        pass\n"
               "del _cube_il, _cube_m\n")
    (ipy / "ipython_kernel_config.py").write_text(
        "# Written by the Cube default template build (services/cubelet/default_image.py).\n"
        "c = get_config()  # noqa: F821\n"
        f"c.InteractiveShellApp.exec_lines = [{preload!r}]\n")
    compile((ipy / "ipython_kernel_config.py").read_text(), "ipython_kernel_config.py", "exec")
    compile(preload, "preload", "exec")
    # Smoke test as the sandbox user: every library imports with the template's own python3, and
    # `python` on PATH is that interpreter.
    _chroot(root, ["/usr/bin/python3", "-c", "import ipykernel, bash_kernel, numpy, pandas, matplotlib.pyplot, "
                   "e2b_charts, requests"], user=f"{USER_UID}:{USER_UID}", env={"HOME": f"/home/{USER}"})
    _chroot(root, ["python", "-c", "import sys; assert sys.version_info[0] == 3"],
            user=f"{USER_UID}:{USER_UID}", env={"HOME": f"/home/{USER}"})

    # Caches and logs of the build are no part of the template.
    for d in ("var/cache/apt", "var/lib/apt/lists", "root/.cache/pip", "var/log"):
        p = root / d
        if p.is_dir():
            for child in p.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
    (root / "home" / USER).chmod(0o755)


def ensure_default_root(settings: VmmSettings) -> Path:
    """The default template's root directory (built once per input key, then cached)."""
    deb = _debian(settings)
    minor = _guest_python_minor(deb)
    if (3, minor) != sys.version_info[:2]:
        raise ArtifactError(f"the default root's python is 3.{minor} but this host's is "
                            f"{sys.version_info[0]}.{sys.version_info[1]}; "
                            "its packages are installed with the host's pip")
    site = _site(settings)
    key = input_key(deb.parent.name, site.parent.name, Path(__file__))

    def build(out: Path) -> None:
        root = out / "root"
        subprocess.run(["cp", "-a", "--reflink=auto", str(deb), str(root)], check=True)
        _install_site(site, root, minor)
        _configure(root, minor)

    return cached_dir(settings.artifacts_dir, "default-rootfs", key, build) / "root"


def ensure_default_image(settings: VmmSettings) -> Path:
    """The default template's read-only ext4 image (the `cube-tpl` disk), cached by its root's key."""
    root = ensure_default_root(settings)
    key = input_key(root.parent.name)

    def build(out: Path) -> None:
        ext4_from_dir(root, out / "template.ext4", label="cube-tpl")

    return cached_dir(settings.artifacts_dir, "default-image", key, build) / "template.ext4"


def default_guest_config(hostname: str = "cube") -> GuestConfig:
    """What the guest init runs in a sandbox of the default template: the agent, nothing else
    (kernels are the agent's)."""
    return GuestConfig(hostname=hostname, services=(agent_service(),))


def image_stats(image: Path) -> dict[str, int]:
    """Apparent and allocated size of an image, for reports."""
    st = os.stat(image)
    return {"bytes": st.st_size, "allocated_bytes": st.st_blocks * 512}


if __name__ == "__main__":
    # `python -m services.cubelet.default_image`: build (or find cached) the image; prints its path.
    print(ensure_default_image(VmmSettings.from_env()))
