"""An idle sandbox of the default template runs a guest kernel without the periodic work that woke it
for nothing (issue 17; bench/idle_bench.py measures what is left, source by source): no soft-lockup
watchdog, no proactive compaction, memory statistics folded every 10 s, no transparent huge pages.
They are boot arguments of the template's kernel, so this checks that the template was built with
them and that its clones keep them; and that the guest still keeps time without the PIT its
machine no longer has."""
from __future__ import annotations

import time


def test_the_default_templates_guest_is_quiet_when_idle_and_keeps_time(sandboxes):
    sbx = sandboxes.create()
    read = sbx.commands.run("cat /proc/sys/kernel/watchdog /proc/sys/kernel/soft_watchdog "
                            "/proc/sys/vm/compaction_proactiveness /proc/sys/vm/stat_interval "
                            "/sys/kernel/mm/transparent_hugepage/enabled", user="root").stdout.split("\n")
    assert read[:4] == ["0", "0", "0", "10"], read
    assert "[never]" in read[4]
    # Timekeeping rests on the TSC and the local APIC timer: a 2 s sleep takes 2 s of the host's
    # time (within what a loaded 2-core host may add), and the guest's clock is the host's.
    t0 = time.time()
    out = sbx.commands.run("sleep 2; date +%s.%N", timeout=60).stdout.strip()
    waited = time.time() - t0
    assert 2.0 <= waited < 30.0, waited
    assert abs(float(out) - time.time()) < 5.0, (out, time.time())
