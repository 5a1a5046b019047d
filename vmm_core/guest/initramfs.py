"""The initramfs: busybox, the virtio/overlay/erofs modules in dependency order, and a tiny init."""
from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..cache import cached_dir, input_key
from ..errors import ArtifactError
from ..settings import VmmSettings
from .kernel import Kernel

# What the guest needs beyond the built-in ext4: virtio-mmio transport, disks, network, the
# control channel (virtio-serial), hardware RNG, and the filesystems that layer images.
REQUIRED_MODULES = ("virtio_mmio", "virtio_blk", "virtio_net", "virtio_console", "virtio-rng", "overlay", "erofs")
BUSYBOX = Path("/bin/busybox")
INIT_SCRIPT = Path(__file__).with_name("initramfs_init.sh")


@dataclass(frozen=True)
class Initramfs:
    path: Path
    key: str


def _module_deps(modules_dir: Path) -> dict[str, list[str]]:
    """modules.dep as {relative path: [relative paths it depends on]}."""
    deps: dict[str, list[str]] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        target, _, rest = line.partition(":")
        deps[target.strip()] = rest.split()
    return deps


def module_load_order(modules_dir: Path, wanted: tuple[str, ...] = REQUIRED_MODULES) -> list[str]:
    """Relative module paths to insmod, every dependency before its dependants."""
    deps = _module_deps(modules_dir)
    by_name = {Path(p).name.split(".ko")[0].replace("-", "_"): p for p in deps}
    order: list[str] = []

    def visit(path: str, stack: tuple[str, ...] = ()) -> None:
        if path in order:
            return
        if path in stack:
            raise ArtifactError(f"module dependency cycle at {path}")
        for dep in deps.get(path, []):
            visit(dep, stack + (path,))
        order.append(path)

    for name in wanted:
        path = by_name.get(name.replace("-", "_"))
        if path is None:
            raise ArtifactError(f"kernel has no module {name}")
        visit(path)
    return order


def _build(kernel: Kernel, out: Path) -> None:
    root = out / "root"
    for d in ("bin", "lib/modules", "proc", "sys", "dev", "newroot"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, root / "bin/busybox")
    shutil.copy2(INIT_SCRIPT, root / "init")
    os.chmod(root / "init", 0o755)
    order = module_load_order(kernel.modules_dir)
    for rel in order:
        dst = root / "lib/modules" / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(kernel.modules_dir / rel, dst)
    (root / "modules.order").write_text("\n".join(order) + "\n")
    files = subprocess.run(["find", "."], cwd=root, check=True, capture_output=True).stdout
    cpio = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet", "-R", "0:0"], cwd=root, input=files,
                          check=True, capture_output=True).stdout
    # gzip level 1: decompression time dominates boot, not size.
    (out / "initramfs.cpio.gz").write_bytes(gzip.compress(cpio, compresslevel=1))
    shutil.rmtree(root)


def ensure_initramfs(settings: VmmSettings, kernel: Kernel) -> Initramfs:
    if not BUSYBOX.exists():
        raise ArtifactError("busybox-static is not installed (run scripts/setup.sh)")
    key = input_key(kernel.key, INIT_SCRIPT, REQUIRED_MODULES, BUSYBOX)
    out = cached_dir(settings.artifacts_dir, "initramfs", key, lambda d: _build(kernel, d))
    return Initramfs(out / "initramfs.cpio.gz", key)
