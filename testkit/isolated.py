"""`python -m testkit.isolated CMD...`: run CMD (make test's pytest) apart from any Cube node the
operator runs on this machine.

    python -m testkit.isolated .venv/bin/python -m pytest tests/e2e/test_e2e_sdk.py

- **Its own network namespace** (``unshare --net``, with only loopback, brought up): every port the
  tests bind (loopback's 443, which sandbox URLs use, the API's, etcd's, the metrics ports) and
  every tap, route and eBPF attachment of the test node live there, so a node `make up` runs in
  the machine's namespace is neither reached nor disturbed, and nothing a test or sandbox sends
  can leave this machine. Namespaces the tests make themselves (clusters, labs) hang off it.
- **Its own state dir**, ``$CUBE_TEST_STATE_DIR`` (default ``$CUBE_STATE_DIR-test``: the test
  node's etcd, templates, sandboxes, logs), whose ``artifacts`` is a symlink to the node's cache
  of guest artifacts (keyed by inputs; a cubelet that borrows a cache never prunes it,
  services/cubelet/gc.py).
- **None of the operator's client settings**: a `make env` shell's ``E2B_*`` and
  ``CUBE_MASTER_ADDR``/``CUBE_TLS_DIR`` point at the operator's node; CMD gets none of them.
- A test node an earlier run left (a run killed before its teardown) is stopped first: it would
  answer from a namespace this run cannot reach.

Nothing in the namespace can fetch packages: `testkit.prepare` (run before, by `make test`) builds
what the suite needs from the network. The namespace ends with the last process in it; CMD's exit
status is this command's.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cube_common import defaults
from testkit import REPO

# A `make env` shell's settings for reaching the operator's node (deploy/env.py).
DROPPED_ENV = ("CUBE_MASTER_ADDR", "CUBE_TLS_DIR", "NODE_EXTRA_CA_CERTS", "SSL_CERT_FILE")
# Names the namespace this command made, for in_isolation().
MARK = "CUBE_TEST_NETNS"
# Run inside the new namespace before CMD: loopback starts down there.
INSIDE = f'ip link set lo up && {MARK}=$(readlink /proc/self/ns/net) && export {MARK} && exec "$@"'


def in_isolation() -> bool:
    """Whether this process runs in the network namespace this command made for it."""
    return os.environ.get(MARK) == os.readlink("/proc/self/ns/net")


def prepare_state_dir(cache: Path, test_state: Path) -> None:
    """``test_state``, private, with ``artifacts`` a symlink to the artifact cache ``cache``."""
    test_state.mkdir(parents=True, exist_ok=True)
    os.chmod(test_state, 0o700)
    link = test_state / "artifacts"
    cache.mkdir(parents=True, exist_ok=True)
    if link.is_symlink():
        if Path(os.readlink(link)) == cache:
            return
        link.unlink()
    elif link.exists():
        raise SystemExit(f"{link} is a directory of its own; remove it so the tests share {cache}")
    link.symlink_to(cache)


def stop_leftover_node(env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "-m", "deploy.supervisor", "stop"], cwd=REPO, env=env, check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main(argv: list[str]) -> int:
    if not argv:
        raise SystemExit("usage: python -m testkit.isolated CMD [ARG...]")
    node_state = Path(os.environ.get("CUBE_STATE_DIR") or defaults.STATE_DIR)
    test_state = Path(os.environ.get("CUBE_TEST_STATE_DIR") or f"{node_state}-test")
    if test_state.resolve() == node_state.resolve():
        raise SystemExit(f"CUBE_TEST_STATE_DIR is the node's state dir ({node_state}): the tests need their own")
    prepare_state_dir(node_state / "artifacts", test_state)
    env = {k: v for k, v in os.environ.items() if not k.startswith("E2B_") and k not in DROPPED_ENV}
    env["CUBE_STATE_DIR"] = str(test_state)
    stop_leftover_node(env)
    return subprocess.run(["unshare", "--net", "--", "sh", "-c", INSIDE, "sh", *argv], env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
