"""`python -m testkit.suite [PYTEST_ARG...]`: the whole test suite (`make test`), as two pytest runs at
once.

The machine has two cores, and half the suite's time goes to tests of whole nodes (end to end, the
cluster, the cubelet's template VMs), which wait on their guests under TCG as much as they compute;
the other half tests parts (the control plane on fake nodes, the guest agent, vmm_core's microVMs,
the datapath, the proxy). So the two run side by side, in about the time the nodes take alone:

- ``parts``: the packages in PARTS_LANE, in a network namespace and state dir of their own
  (nested in what testkit/isolated.py made), so no port or file of theirs meets the test node's;
- ``nodes``: everything else under tests/ (so a new package is never left out), in the
  namespace and state dir testkit/isolated.py made, where the end-to-end tests start their node.

Each lane has its own pytest base temp dir (two sessions sharing pytest's default one would
prune each other's). The nodes lane prints as it goes; the parts lane's output is kept in a file
and printed when it ends. The exit status is 0 only when both lanes passed. Run inside
testkit/isolated.py (make test does): the end-to-end tests refuse to run elsewhere.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from testkit import REPO
from testkit.isolated import INSIDE, prepare_state_dir

PARTS_LANE = ("tests/control", "tests/envd", "tests/vmm", "tests/vs", "tests/common", "tests/chart", "tests/sdk",
              "tests/proxy", "tests/oci")
PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=25"]


def lane_commands(extra: list[str], temp: Path) -> dict[str, list[str]]:
    ignore = [f"--ignore={p}" for p in PARTS_LANE]
    return {
        "parts": ["unshare", "--net", "--", "sh", "-c", INSIDE, "sh", *PYTEST,
                  f"--basetemp={temp / 'parts'}", *extra, *PARTS_LANE],
        "nodes": [*PYTEST, f"--basetemp={temp / 'nodes'}", *ignore, *extra, "tests"],
    }


def main(extra: list[str]) -> int:
    state = Path(os.environ["CUBE_STATE_DIR"])
    parts_state = state / "parts-lane"
    prepare_state_dir(Path(os.readlink(state / "artifacts")), parts_state)
    temp = Path(tempfile.mkdtemp(prefix="cube-suite-"))
    log = temp / "parts.log"
    cmds = lane_commands(extra, temp)
    procs: dict[str, subprocess.Popen] = {}
    # A stop (CI's timeout, kill) reaches the lanes too: the handler below ends them.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        with open(log, "wb") as out:
            procs["parts"] = subprocess.Popen(cmds["parts"], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL,
                                              env={**os.environ, "CUBE_STATE_DIR": str(parts_state)})
        procs["nodes"] = subprocess.Popen(cmds["nodes"], cwd=REPO, stdin=subprocess.DEVNULL)
        codes = {name: p.wait() for name, p in procs.items()}
        print(f"\n==== the parts lane ({' '.join(PARTS_LANE)}) ====", flush=True)
        sys.stdout.write(log.read_text(errors="replace"))
        print(f"\n==== lanes: parts exit {codes['parts']}, nodes exit {codes['nodes']} ====", flush=True)
        return 0 if not any(codes.values()) else 1
    except BaseException:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        raise
    finally:
        shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
