"""Which files the node's machines still use.

Every running machine's record (`vms/<id>/machine.json`) and every paused sandbox's snapshot record
(`paused/<id>/snapshot.json`) names the files it needs: snapshot memory, disks, kernel, initramfs.
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
