"""Small container images for template tests: a static busybox root made with umoci, pushed to a
test registry (testkit/registry.py) with skopeo.

`busybox_image` writes an OCI layout holding one image: /bin/busybox with the given applets,
/etc/passwd with root and `web` (uid 100, home /www), /www/index.html naming the image, and the
config's user `web`, working directory /www, env GREETING=hello, exposed port 8080 and the given
command. Nothing here reaches beyond loopback: skopeo pushes over plain HTTP to the registry given.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

APPLETS = ("sh", "httpd", "dd", "sleep", "false", "cat", "echo", "ls", "id", "df", "mkdir", "rm", "env",
           "pwd", "stat", "wc", "chmod", "touch")
WEB = ["/bin/httpd", "-f", "-p", "8080", "-h", "/www"]


def sh(*argv: str, timeout: float = 300) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {r.stderr[-2000:]}")
    return r.stdout


def busybox_image(work: Path, name: str, cmd: list[str], *, arch: str = "amd64", salt: bool = False) -> Path:
    """An OCI layout (`work/layout-<name>`, tag `name`) with one busybox image; `salt` adds a layer
    file no other image (and no layer cache) has."""
    layout = work / f"layout-{name}"
    sh("umoci", "init", "--layout", str(layout))
    sh("umoci", "new", "--image", f"{layout}:{name}")
    bundle = work / f"bundle-{name}"
    sh("umoci", "unpack", "--image", f"{layout}:{name}", str(bundle))
    root = bundle / "rootfs"
    (root / "bin").mkdir(exist_ok=True)
    shutil.copy2("/bin/busybox", root / "bin/busybox")
    for applet in APPLETS:
        os.symlink("busybox", root / "bin" / applet)
    (root / "www").mkdir()
    (root / "www/index.html").write_text(f"served by image {name}\n")
    if salt:
        (root / "www/salt").write_bytes(os.urandom(4096))
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\nweb:x:100:100::/www:/bin/sh\n")
    sh("umoci", "repack", "--image", f"{layout}:{name}", str(bundle))
    args = ["umoci", "config", "--image", f"{layout}:{name}", "--config.user", "web", "--config.workingdir", "/www",
            "--config.env", "GREETING=hello", "--config.exposedports", "8080/tcp", "--architecture", arch]
    for c in cmd:
        args += ["--config.cmd", c]
    sh(*args)
    return layout


def push(layout: Path, tag: str, dest: str) -> None:
    """Copy `layout`'s image `tag` to `dest` (`host:port/repo:tag`) over plain HTTP."""
    sh("skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{layout}:{tag}", f"docker://{dest}")
