"""Run cubemastercli (sdk/cli.py) as a separate process, as an operator would."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.control.cluster import REPO


def cubemastercli(master: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUBE_MASTER_ADDR": master}
    p = subprocess.run([sys.executable, "-m", "sdk.cli", *args], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=60)
    if check and p.returncode != 0:
        raise AssertionError(f"cubemastercli {' '.join(args)} failed ({p.returncode}): {p.stderr}")
    return p
