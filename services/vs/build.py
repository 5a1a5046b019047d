"""Compile the eBPF datapath with clang, cached by the hash of its inputs.

The object lands in ``<state_dir>/bpf/<hash>/datapath.bpf.o`` where the hash covers the C
sources, the compiler's version and the flags, so a node rebuilds only when one of them changes
and a clean machine builds on first use (the loader calls :func:`ensure_object`).

Only uapi (linux-libc-dev) and libbpf headers are used: a node needs neither kernel headers nor
a BTF-derived ``vmlinux.h``. Run ``python -m services.vs.build`` to prebuild (prints the path).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BPF_DIR = Path(__file__).resolve().parent / "bpf"
OBJECT_NAME = "datapath.bpf.o"
SOURCE = BPF_DIR / "datapath.bpf.c"


class BuildError(RuntimeError):
    """clang is missing or the program does not compile."""


def _clang() -> str:
    clang = os.environ.get("CUBE_CLANG") or shutil.which("clang")
    if not clang:
        raise BuildError("clang not found: install Debian package 'clang' (scripts/setup.sh does)")
    return clang


def _flags() -> list[str]:
    flags = ["-target", "bpf", "-O2", "-g", "-Wall", "-Werror"]
    # <asm/types.h> lives in the multiarch include dir that -target bpf does not search.
    for d in ("/usr/include/x86_64-linux-gnu", "/usr/include/aarch64-linux-gnu"):
        if Path(d, "asm", "types.h").exists():
            flags.append(f"-I{d}")
            break
    return flags


def _inputs_hash(clang: str, flags: list[str]) -> str:
    h = hashlib.sha256()
    version = subprocess.run([clang, "--version"], capture_output=True, text=True, check=True).stdout
    h.update(version.encode())
    h.update("\0".join(flags).encode())
    for path in sorted(BPF_DIR.glob("*.[ch]")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def ensure_object(state_dir: str | os.PathLike) -> Path:
    """Return the compiled object, building it first if no cached build matches the inputs."""
    clang = _clang()
    flags = _flags()
    out_dir = Path(state_dir) / "bpf" / _inputs_hash(clang, flags)
    obj = out_dir / OBJECT_NAME
    if obj.exists():
        return obj
    out_dir.mkdir(parents=True, exist_ok=True)
    # Compile next to the target and rename, so a concurrent or interrupted build never leaves a
    # half-written object that a later run would trust.
    fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".tmp")
    os.close(fd)
    try:
        proc = subprocess.run([clang, *flags, "-c", str(SOURCE), "-o", tmp], capture_output=True, text=True)
        if proc.returncode != 0:
            raise BuildError(f"clang failed on {SOURCE.name}:\n{proc.stderr.strip()}")
        os.replace(tmp, obj)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return obj


def main() -> None:
    from services.vs.settings import Settings

    print(ensure_object(Settings.from_env().state_dir))


if __name__ == "__main__":
    try:
        main()
    except BuildError as e:
        print(e, file=sys.stderr)
        sys.exit(1)
