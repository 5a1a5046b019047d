"""The browser template's image: Debian's Chromium, socat, and python3 with Playwright, as an OCI
image layout built from Debian and PyPI packages (no registry), for `cubemastercli tpl
create-from-image`.

    .venv/bin/python -m examples.browser.image     # prints the reference: oci:<layout>:browser

Cached under ``$CUBE_STATE_DIR/artifacts/browser-oci/<key>``; the key covers the package lists, the
host's apt sources and suite, requirements.lock and this file, so an unchanged build costs nothing.

What a sandbox of it runs (the image's entrypoint, as the unprivileged `user`, uid 1000, the user
E2B's templates and Cube's default template run code as):
- Chromium, headless, with its DevTools endpoint (CDP) on 127.0.0.1:9223. Chromium binds its
  endpoint to loopback whatever it is asked, and answers only requests whose Host is an IP address
  or a `localhost` name (its DNS-rebinding guard): clients reaching it through the proxy either use
  a `*.localhost` sandbox domain or have the proxy mask the Host (``mask_request_host``).
- socat on 0.0.0.0:9222 forwarding to it, so the proxy (which reaches guest ports on the guest's
  address) can carry CDP to it. The template snapshots once ``/json/version`` answers on 9222, so
  every sandbox starts with the browser already up.
- Nothing that calls out on its own: Chromium runs with background networking, component
  updates, crash reports and sync off.

Playwright (PyPI, the version requirements.lock pins) is installed for the guest's python3, for code
that drives the browser from inside the sandbox: ``connect_over_cdp("http://127.0.0.1:9223")``, or
``chromium.launch(executable_path="/usr/lib/chromium/chromium")``. No Playwright browser download is needed
or possible: both ends use Debian's chromium.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from vmm_core import (
    ArtifactError,
    VmmSettings,
    apt_sources_fingerprint,
    cached_dir,
    debian_suite,
    input_key,
    mmdebstrap,
)

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "requirements.lock"
TAG = "browser"
USER, UID = "user", 1000
CDP_PORT = 9222           # what the template exposes (socat)
CDP_LOCAL_PORT = 9223     # Chromium's own endpoint, loopback only
# chromium-sandbox: Chromium's setuid sandbox helper (the guest kernel allows no unprivileged user
# namespaces to the image's user), so renderers stay sandboxed inside the VM too. libatomic1: the
# Node.js runtime in Playwright's wheel needs it.
DEBIAN_PACKAGES = ["chromium", "chromium-sandbox", "fonts-liberation", "fonts-dejavu-core", "socat", "python3",
                   "ca-certificates", "procps", "sudo", "libatomic1"]
PYPI_PACKAGES = ["playwright"]
ENTRYPOINT = "/usr/local/bin/cube-browser"
# The browser itself, not Debian's /usr/bin/chromium wrapper script, which reads /proc/cpuinfo
# (absent in the build's chroot) and adds nothing a headless CDP endpoint needs.
CHROMIUM = "/usr/lib/chromium/chromium"
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# No first-run UI, no calls home (updates, metrics, safe-browsing lists, sync), no crash
# uploader; the profile lives in the user's home, so it is part of the snapshot.
CHROMIUM_FLAGS = (
    "--headless", f"--remote-debugging-port={CDP_LOCAL_PORT}", "--remote-debugging-address=127.0.0.1",
    f"--user-data-dir=/home/{USER}/.config/cube-chromium", "--no-first-run", "--no-default-browser-check",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-domain-reliability", "--disable-client-side-phishing-detection", "--disable-breakpad",
    "--metrics-recording-only", "--no-pings", "--password-store=basic", "--use-mock-keychain",
    "--mute-audio", "--disable-gpu",
)

ENTRYPOINT_SCRIPT = f"""#!/bin/sh
# Written by examples/browser/image.py. Chromium serves CDP on loopback only; socat makes it
# reachable on {CDP_PORT} for the proxy. If either ends, the other is stopped and the service ends.
set -u
socat TCP-LISTEN:{CDP_PORT},fork,reuseaddr TCP:127.0.0.1:{CDP_LOCAL_PORT} &
relay=$!
trap 'kill $relay 2>/dev/null' EXIT
{CHROMIUM} {" ".join(CHROMIUM_FLAGS)} about:blank
"""


def _sh(*argv: str, timeout: float = 900) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        why = (r.stderr or r.stdout).strip()[-2000:]
        raise ArtifactError(f"{' '.join(argv[:3])} ... failed ({r.returncode}): {why}")
    return r.stdout


def _chroot(root: Path, *argv: str, user: str | None = None) -> str:
    spec = [f"--userspec={user}"] if user else []
    return _sh("chroot", *spec, str(root), "/usr/bin/env", "-i", f"PATH={GUEST_PATH}",
               f"HOME=/home/{USER}" if user else "HOME=/root", "LANG=C.UTF-8", *argv)


def _python_minor(root: Path) -> int:
    minors = [int(m.group(1)) for p in (root / "usr/lib").glob("python3.*")
              if (m := re.fullmatch(r"python3\.(\d+)", p.name))]
    if not minors:
        raise ArtifactError("the browser root has no python3")
    return max(minors)


def _fill_root(root: Path) -> None:
    mmdebstrap(root, DEBIAN_PACKAGES)
    minor = _python_minor(root)
    if (3, minor) != sys.version_info[:2]:
        # The wheels are chosen by this host's pip: its Python must be the guest's.
        raise ArtifactError(f"the browser root's python is 3.{minor}, this host's is "
                            f"{sys.version_info[0]}.{sys.version_info[1]}")
    _sh(sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-cache-dir",
        "--only-binary=:all:", "--target", str(root / f"usr/local/lib/python3.{minor}/dist-packages"),
        "-c", str(LOCK), *PYPI_PACKAGES)
    bin_dir = root / f"usr/local/lib/python3.{minor}/dist-packages/bin"
    shutil.rmtree(bin_dir, ignore_errors=True)  # console scripts naming the host's interpreter
    _chroot(root, "useradd", "--create-home", "--uid", str(UID), "--user-group", "--shell", "/bin/bash", USER)
    sudoers = root / "etc/sudoers.d" / USER
    sudoers.write_text(f"{USER} ALL=(ALL:ALL) NOPASSWD: ALL\n")
    sudoers.chmod(0o440)
    entry = root / ENTRYPOINT.lstrip("/")
    entry.write_text(ENTRYPOINT_SCRIPT)
    entry.chmod(0o755)
    # Smoke test as the sandbox user: the browser runs, and Playwright imports.
    version = _chroot(root, CHROMIUM, "--version", user=f"{UID}:{UID}")
    if "Chromium" not in version:
        raise ArtifactError(f"chromium --version in the browser root printed {version!r}")
    _chroot(root, "/usr/bin/python3", "-c", "import playwright.sync_api", user=f"{UID}:{UID}")
    driver = f"/usr/local/lib/python3.{minor}/dist-packages/playwright/driver/node"
    if not _chroot(root, driver, "--version", user=f"{UID}:{UID}").startswith("v"):
        raise ArtifactError("Playwright's Node.js does not run in the browser root")
    for d in ("var/cache/apt", "var/lib/apt/lists", "var/log"):
        for child in (root / d).glob("*"):
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


def _build(out: Path) -> None:
    layout, bundle = out / "layout", out / "bundle"
    ref = f"{layout}:{TAG}"
    _sh("umoci", "init", "--layout", str(layout))
    _sh("umoci", "new", "--image", ref)
    _sh("umoci", "unpack", "--image", ref, str(bundle))
    shutil.rmtree(bundle / "rootfs")  # empty; mmdebstrap wants to make it
    _fill_root(bundle / "rootfs")
    _sh("umoci", "repack", "--image", ref, str(bundle))
    _sh("umoci", "config", "--image", ref, "--config.user", USER, "--config.workingdir", f"/home/{USER}",
        "--config.entrypoint", ENTRYPOINT, "--config.exposedports", f"{CDP_PORT}/tcp",
        "--config.env", "LANG=C.UTF-8", "--config.env", f"HOME=/home/{USER}")
    _sh("umoci", "gc", "--layout", str(layout))
    shutil.rmtree(bundle)


def image_key() -> str:
    return input_key(DEBIAN_PACKAGES, PYPI_PACKAGES, apt_sources_fingerprint(), debian_suite(), LOCK,
                     Path(__file__), sys.version_info[:2])


def ensure_image(settings: VmmSettings | None = None) -> str:
    """The image's reference for `--image` (``oci:<layout>:browser``), built first if needed."""
    settings = settings or VmmSettings.from_env()
    out = cached_dir(settings.artifacts_dir, "browser-oci", image_key(), _build)
    return f"oci:{out / 'layout'}:{TAG}"


if __name__ == "__main__":
    print(ensure_image())
