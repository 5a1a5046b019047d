"""The guest console on the host is a bounded ring (vmm_core.machine.trim_console): a guest that
prints without end costs at most the cap, and readers only ever read a tail."""
from __future__ import annotations

from vmm_core.machine import console_tail, trim_console


def test_a_console_over_its_cap_keeps_its_last_half_from_a_line_start(tmp_path):
    log = tmp_path / "console.log"
    log.write_bytes(b"".join(b"line %06d\n" % i for i in range(10_000)))  # 120 000 bytes
    assert trim_console(log, 200_000) is False and log.stat().st_size == 120_000
    assert trim_console(log, 40_000) is True
    data = log.read_bytes()
    assert len(data) <= 20_000 and data.startswith(b"line ") and data.endswith(b"line 009999\n")
    # Appending goes on after a cut (QEMU writes with O_APPEND).
    with open(log, "ab") as f:
        f.write(b"after the cut\n")
    assert console_tail(log, 2) == "line 009999\nafter the cut"
    assert trim_console(tmp_path / "gone.log", 10) is False


def test_the_tail_reads_a_bounded_amount(tmp_path):
    log = tmp_path / "console.log"
    with open(log, "wb") as f:
        f.truncate(1 << 30)  # a 1 GiB console (sparse): reading it whole would take a GiB
        f.seek(0, 2)
        f.write(b"\nlast words\n")
    assert console_tail(log, 1000, max_bytes=4096).splitlines()[-1] == "last words"
