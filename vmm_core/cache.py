"""Content-keyed build cache under the state directory.

Every artifact lives in `<artifacts>/<kind>/<key>/` where the key hashes all of its inputs. A
build happens in a temporary sibling directory that is renamed into place only when complete, so
an interrupted build never leaves something that looks finished.

Each `<key>` directory is 0700: artifacts include whole Debian roots, with their setuid binaries
and device nodes, which no other local user may reach. Only root reads them (QEMU opens what it
needs before it drops to its jail uid).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path


def input_key(*parts: object) -> str:
    """A short stable hash of the inputs (strings, bytes, paths' contents, JSON-able values)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            h.update(part.read_bytes())
        elif isinstance(part, bytes):
            h.update(part)
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def tree_key(root: Path, patterns: tuple[str, ...] = ("**/*",)) -> str:
    """Hash of every file (path and content) under root matching the patterns."""
    h = hashlib.sha256()
    files = sorted({p for pat in patterns for p in root.glob(pat) if p.is_file() and "__pycache__" not in p.parts})
    for p in files:
        h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def cached_dir(base: Path, kind: str, key: str, build: Callable[[Path], None]) -> Path:
    """Return `<base>/<kind>/<key>`, building it with `build(tmpdir)` first if it does not exist."""
    final = base / kind / key
    if final.is_dir():
        if final.stat().st_mode & 0o077:
            final.chmod(0o700)  # made by an earlier release, before artifacts were private
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{key}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o700)
    try:
        build(tmp)
        os.rename(tmp, final)
    except OSError as e:
        if final.is_dir():  # another process finished the same build first
            shutil.rmtree(tmp, ignore_errors=True)
            return final
        shutil.rmtree(tmp, ignore_errors=True)
        raise e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
