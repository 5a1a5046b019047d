"""Which files the node's machines still use.

Every running machine's record (`vms/<id>/machine.json`) and every paused sandbox's snapshot record
(`paused/<id>/snapshot.json`) names the files it needs: snapshot memory, disks, kernel, initramfs.
A template that is a snapshot of a sandbox names its base template's build in its own snapshot
record (`templates/<id>/builds/<key>/snapshot/snapshot.json`): its disk and memory read through it.
Before removing an artifact or an old template build, callers check that no record's text
mentions its path.
"""
from __future__ import annotations

from pathlib import Path

from vmm_core import VmmSettings

from .settings import CubeletSettings


def record_texts(*places: tuple[Path, str]) -> list[str]:
    """The text of every record matching each (root, glob pattern); unreadable ones are skipped."""
    texts: list[str] = []
    for root, pattern in places:
        if root.is_dir():
            for p in root.glob(pattern):
                try:
                    texts.append(p.read_text())
                except OSError:
                    pass
    return texts


def sandbox_records(settings: CubeletSettings, vmm: VmmSettings) -> list[str]:
    """Records of the running machines (sandboxes and the warm pool) and of the paused sandboxes."""
    return record_texts((vmm.vms_dir, "*/machine.json"), (settings.paused_dir, "*/snapshot.json"))


def template_records(settings: CubeletSettings, but: Path | None = None) -> list[str]:
    """The snapshot records of every template build, except those under ``but`` (a template's own
    builds name themselves)."""
    texts = []
    root = settings.templates_dir
    for p in sorted(root.glob("*/builds/*/snapshot/snapshot.json")) if root.is_dir() else []:
        if but is not None and p.is_relative_to(but):
            continue
        try:
            texts.append(p.read_text())
        except OSError:
            pass
    return texts
