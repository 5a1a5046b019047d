"""Memory files written from a memfd (vmm_core.sealed_memory.write_file): the bytes round-trip,
and a guest's zero pages stay holes even when the memfd was allocated whole (a checkpoint's is,
before its RAM is loaded), so a snapshot's memory file costs the disk what the guest used."""
from __future__ import annotations

import os
import random

from vmm_core import sealed_memory


def test_zero_blocks_stay_holes_and_the_data_round_trips(tmp_path):
    size = 16 << 20
    rng = random.Random(7)
    want = bytearray(size)
    for off in range(0, size, 256 << 10):  # a guest's used RAM comes in runs
        if rng.random() < 0.3:
            want[off:off + (256 << 10)] = rng.randbytes(256 << 10)
    want[4096:4100] = b"edge"  # and a lone page in a zero block
    src = os.memfd_create("test-ram")
    try:
        os.ftruncate(src, size)
        os.pwrite(src, bytes(want), 0)
        os.posix_fallocate(src, 0, size)  # all of it data, zeros included
        sealed_memory.write_file(src, tmp_path / "memory", size)
    finally:
        os.close(src)
    out = tmp_path / "memory"
    assert out.stat().st_size == size and out.read_bytes() == bytes(want)
    data_blocks = sum(1 for off in range(0, size, sealed_memory.ZERO_BLOCK)
                      if any(want[off:off + sealed_memory.ZERO_BLOCK]))
    # Allocated: the 64 KB blocks holding data, not the whole 16 MB (filesystem rounding aside).
    assert out.stat().st_blocks * 512 <= data_blocks * sealed_memory.ZERO_BLOCK + (1 << 20)
    assert out.stat().st_blocks * 512 < size
