"""Garbage collection of cached build artifacts on this node.

Every change of an input (the agent's code, the default image's package list, ...) produces a new
cached artifact under `<state>/artifacts/<kind>/<key>/`, and CI runs on the same machine again and
again, so old ones must go. An artifact is kept while anything still names it: a template build's
snapshot, a paused sandbox's saved state, or a running machine (their records hold the paths they
use); otherwise only the newest few of each kind are kept. Only the cubelet whose state dir holds
the cache prunes it: one that borrows another's (a symlink, or a cache outside its state dir) does
not, since the owner's templates and machines are out of its sight.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from vmm_core import VmmSettings

from .references import sandbox_records, template_records
from .settings import CubeletSettings

log = logging.getLogger("cubelet.gc")
KEEP_NEWEST = 2


def prune_artifacts(settings: CubeletSettings, vmm: VmmSettings, keep_newest: int = KEEP_NEWEST) -> list[Path]:
    """Remove unreferenced artifacts beyond the newest `keep_newest` of each kind."""
    removed: list[Path] = []
    root = vmm.artifacts_dir
    if not root.is_dir():
        return removed
    if root.is_symlink() or not root.resolve().is_relative_to(settings.state_dir.resolve()):
        # Another state dir's cache (a test cluster's hosts share the node's): its templates and
        # machines are not ours to see, so what they still name cannot be told here.
        log.info("artifact cache shared with another state dir: not pruned here", extra={"artifacts": str(root)})
        return removed
    refs = sandbox_records(settings, vmm) + template_records(settings)
    for kind in sorted(p for p in root.iterdir() if p.is_dir()):
        keys = sorted((k for k in kind.iterdir() if k.is_dir() and not k.name.startswith(".")),
                      key=lambda k: k.stat().st_mtime, reverse=True)
        for k in keys[keep_newest:]:
            if any(str(k) in r for r in refs):
                continue
            shutil.rmtree(k, ignore_errors=True)
            removed.append(k)
    if removed:
        log.info("pruned artifacts", extra={"removed": [str(p) for p in removed]})
    return removed
