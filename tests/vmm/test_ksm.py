"""vmm_core.accounting.ksm_state: the host's page merging, as the cubelet reports it."""
from __future__ import annotations

import os

from vmm_core.accounting import KsmState, ksm_state


def test_reads_whether_ksm_runs_and_what_it_saves(tmp_path):
    (tmp_path / "run").write_text("1\n")
    (tmp_path / "pages_sharing").write_text("300\n")
    assert ksm_state(tmp_path) == KsmState(True, 300 * os.sysconf("SC_PAGE_SIZE"))
    (tmp_path / "run").write_text("0\n")  # stopped: what it merged stays merged
    assert ksm_state(tmp_path) == KsmState(False, 300 * os.sysconf("SC_PAGE_SIZE"))


def test_a_kernel_without_ksm_has_no_state(tmp_path):
    assert ksm_state(tmp_path / "absent") is None
    (tmp_path / "run").write_text("1\n")
    (tmp_path / "pages_sharing").write_text("garbage\n")
    assert ksm_state(tmp_path) is None
