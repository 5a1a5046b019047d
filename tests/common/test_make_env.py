"""`make env` as a new user's shell evaluates it: the SDK variables, and the project's commands
(`cubemastercli`, which the README runs bare) on PATH, once however often it is evaluated."""
from __future__ import annotations

import os
import subprocess

from deploy.env import TOOLS

REPO = TOOLS.parents[1]


def _shell(script: str) -> str:
    env = {"HOME": os.environ.get("HOME", "/root"), "PATH": "/usr/bin:/bin", "CUBE_STATE_DIR": "/nonexistent-cube"}
    return subprocess.run(["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True, check=True,
                          timeout=120).stdout


def test_make_env_puts_the_cli_on_path_once():
    out = _shell('eval "$(make -s env)"; eval "$(make -s env)"; command -v cubemastercli; echo "$PATH"; '
                 'echo "$E2B_API_URL"')
    where, path, api = out.strip().splitlines()[-3:]
    assert where == str(TOOLS / "cubemastercli")
    assert path.split(":").count(str(TOOLS)) == 1 and path.endswith("/usr/bin:/bin")
    assert api.startswith("http://127.0.0.1:")
