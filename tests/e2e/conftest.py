"""End-to-end fixtures: a real Cube node (`make up`) driven by the unmodified E2B SDKs.

The node is the test run's own: `make test` runs the suite in a network namespace and state dir of
its own (testkit/isolated.py), never on a node the operator runs; run elsewhere, the package refuses.

* `node` (package scope, autouse): makes sure the node is up. If it is not (no ready file, or the
  API does not answer), it runs `scripts/node_up.sh` (what `make up` runs; idempotent; a clean
  machine builds everything first) and, because it started the node, stops it again
  (`python -m deploy.supervisor stop`, what `make down` runs) once the e2e tests are done.
  It points the SDKs at the node with `deploy.env.sdk_env` (what `make env` prints) and, at the
  end, checks that nothing any e2e test created is left anywhere on the node.
* `sandboxes` (per test): create sandboxes through it so they carry this run's metadata tag and
  are killed when the test ends, whatever happened.
* Before every test the node must answer (the operator may restart it while tests run).
"""
from __future__ import annotations

import json
import os
import subprocess
import time

import httpx
import pytest

from cube_common.mtls import Role
from deploy.env import sdk_env
from testkit.isolated import in_isolation
from tests.e2e import cluster
from tests.e2e.cluster import API_URL, CFG, REPO
from tests.e2e.run import CREATED, RUN_ID, TAG, tag
from tests.support.sdk import drop_sdk_connection_pools

NODE_UP_TIMEOUT_S = 45 * 60  # a clean machine builds the guest artifacts and the default template


def api_answers(timeout: float = 3.0) -> bool:
    try:
        r = httpx.get(f"{API_URL}/v2/sandboxes", params={"limit": 1},
                      headers={"X-API-KEY": sdk_env(CFG)["E2B_API_KEY"]}, timeout=timeout)
        return r.status_code == 200
    except httpx.HTTPError:
        return False


def node_ready() -> bool:
    return (CFG.run / "ready").exists() and api_answers()


def wait_node(timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not node_ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"the Cube node is not answering after {timeout}s (ready file "
                                 f"{(CFG.run / 'ready').exists()}, supervisor pid {cluster.supervisor_pid()})")
        time.sleep(1)


def pytest_collection_modifyitems(config, items):
    """Fault-injection tests (kill -9, etcd frozen) run after the other e2e tests, so a fault they
    uncover cannot make functional tests fail; the first e2e test pays for bringing the node up
    (a clean machine builds everything)."""
    slots = [i for i, it in enumerate(items) if "tests/e2e/" in str(it.fspath).replace(os.sep, "/")]
    if not slots:
        return
    ours = [items[i] for i in slots]
    ordered = sorted(ours, key=lambda it: it.fspath.basename == "test_e2e_crash.py")  # stable
    for i, it in zip(slots, ordered, strict=True):
        items[i] = it
    items[slots[0]].add_marker(pytest.mark.timeout(NODE_UP_TIMEOUT_S + 600))


def _our_sandboxes_in_api() -> list[dict]:
    r = httpx.get(f"{API_URL}/v2/sandboxes", params={"metadata": f"{TAG}={RUN_ID}", "state": "running,paused",
                                                     "limit": 100},
                  headers={"X-API-KEY": sdk_env(CFG)["E2B_API_KEY"]}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def leftovers_of_run(ids: set[str]) -> list[str]:
    """Everything of this run still somewhere: API list, cubemastercli, etcd, VMs, node files."""
    problems = []
    listed = _our_sandboxes_in_api()
    if listed:
        problems.append(f"API still lists sandboxes of this run: {[s['sandboxID'] for s in listed]}")
    cli = subprocess.run([str(REPO / ".venv/bin/cubemastercli"), "--json", "sandbox", "list"], capture_output=True,
                         text=True, env={**os.environ, "CUBE_MASTER_ADDR": CFG.master_addr}, timeout=60)
    assert cli.returncode == 0, cli.stderr
    cli_ids = {s.get("sandboxId") for s in json.loads(cli.stdout or "[]")}
    if cli_ids & ids:
        problems.append(f"cubemastercli sandbox list still has {sorted(cli_ids & ids)}")
    for sid in sorted(ids):
        for t in cluster.traces_of(sid):
            problems.append(f"{sid}: {t}")
    return problems


@pytest.fixture(scope="package", autouse=True)
def node():
    if not in_isolation():
        pytest.exit("the end-to-end tests run only apart from the operator's node: `make test`, or "
                    "`.venv/bin/python -m testkit.isolated .venv/bin/python -m pytest tests/e2e/...`", returncode=4)
    started_here = False
    if not node_ready():
        if cluster.supervisor_pid() is not None:
            # A supervisor runs but is not ready (still starting, or being restarted): give it time.
            try:
                wait_node(300)
            except AssertionError:
                pass
        if not node_ready():
            started_here = cluster.supervisor_pid() is None
            log = CFG.logs / "e2e-node-up.log"
            CFG.logs.mkdir(parents=True, exist_ok=True)
            with open(log, "ab") as f:
                r = subprocess.run(["bash", "scripts/node_up.sh"], cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, timeout=NODE_UP_TIMEOUT_S)
            if r.returncode != 0:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
                pytest.fail(f"scripts/node_up.sh failed ({r.returncode}):\n{tail}")
            wait_node(120)

    saved = {k: os.environ.get(k) for k in ("E2B_API_URL", "E2B_API_KEY", "SSL_CERT_FILE", "CUBE_TEMPLATE_ID",
                                            "CUBE_TLS_DIR", "E2B_DEBUG", "E2B_SANDBOX_URL", "E2B_DOMAIN",
                                            "E2B_ACCESS_TOKEN")}
    # Other test packages may have switched the SDK into debug mode for their own envd (at import).
    for k in ("E2B_DEBUG", "E2B_SANDBOX_URL", "E2B_DOMAIN", "E2B_ACCESS_TOKEN"):
        os.environ.pop(k, None)
    os.environ.update(sdk_env(CFG))
    os.environ["CUBE_TLS_DIR"] = str(CFG.tls(Role.OPERATOR).dir)  # cubemastercli, sdk.client: operators
    drop_sdk_connection_pools()  # pools built by earlier packages do not trust the node's CA
    try:
        yield CFG
        # Nothing this run created may be left anywhere (kills happen in each test's teardown;
        # give the node a moment for the asynchronous parts, e.g. route deletion acks).
        wait_node(180)
        ids = set(CREATED)
        deadline = time.monotonic() + 60
        while True:
            problems = leftovers_of_run(ids)
            if not problems or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert not problems, "sandboxes of this e2e run left behind:\n" + "\n".join(problems)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        drop_sdk_connection_pools()
        if started_here:
            subprocess.run([str(REPO / ".venv/bin/python"), "-m", "deploy.supervisor", "stop"], cwd=REPO,
                           timeout=300)


@pytest.fixture(autouse=True)
def node_answers(node):
    """The operator may restart the node between tests: wait for it rather than fail."""
    wait_node(300)


class Sandboxes:
    """Creates sandboxes with this run's tag and kills every one of them at the end of the test."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def track(self, sandbox_id: str) -> str:
        self.ids.append(sandbox_id)
        CREATED.add(sandbox_id)
        return sandbox_id

    def create(self, metadata: dict[str, str] | None = None, **kw):
        from e2b_code_interpreter import Sandbox

        sbx = Sandbox.create(metadata=tag(metadata), **kw)
        self.track(sbx.sandbox_id)
        return sbx

    async def acreate(self, metadata: dict[str, str] | None = None, **kw):
        from e2b_code_interpreter import AsyncSandbox

        sbx = await AsyncSandbox.create(metadata=tag(metadata), **kw)
        self.track(sbx.sandbox_id)
        return sbx

    def kill_all(self) -> None:
        key = sdk_env(CFG)["E2B_API_KEY"]
        for sid in self.ids:
            try:
                httpx.delete(f"{API_URL}/sandboxes/{sid}", headers={"X-API-KEY": key}, timeout=60)
            except httpx.HTTPError:
                pass


@pytest.fixture
def sandboxes():
    s = Sandboxes()
    try:
        yield s
    finally:
        s.kill_all()


@pytest.fixture
def api():
    """Raw HTTP to the API, for the statuses and bodies the SDK hides."""
    with httpx.Client(base_url=API_URL, headers={"X-API-KEY": sdk_env(CFG)["E2B_API_KEY"]}, timeout=60) as c:
        yield c
