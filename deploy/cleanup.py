"""After the services stop: kill every VM of this node and remove CubeVS's datapath.

Sandboxes outlive a cubelet restart on purpose; `make down` is the moment they must not. Records
stay on disk: the next `make up` sees their VMs gone and cleans up (paused sandboxes keep their
saved state and can be resumed).
"""
from __future__ import annotations

import asyncio
import subprocess
import sys

from vmm_core import Machine, VmmError, VmmSettings, forget, list_machines


async def kill_machines(settings: VmmSettings) -> int:
    n = 0
    for vm_id in list_machines(settings):
        try:
            m = await Machine.attach(settings, vm_id)
            await m.kill()
            n += 1
        except VmmError:
            forget(settings, vm_id)  # its QEMU died: its jail and files still go
    return n


def main() -> None:
    n = asyncio.run(kill_machines(VmmSettings.from_env()))
    print(f"killed {n} machine(s)")
    subprocess.run([sys.executable, "-m", "services.vs", "teardown"], check=False)


if __name__ == "__main__":
    main()
