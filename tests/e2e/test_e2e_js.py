"""The unmodified E2B JS SDKs (`e2b`, `@e2b/code-interpreter` from npm, pinned in js/package.json
and js/package-lock.json) against the node: create, runCode, files, commands, kill.

The JS SDK reads E2B_API_URL and E2B_API_KEY (and E2B_DOMAIN / E2B_SANDBOX_URL / E2B_DEBUG, unset
here); it uses the `domain` the API returns. Node ignores SSL_CERT_FILE: our CA reaches it through
NODE_EXTRA_CA_CERTS.
"""
from __future__ import annotations

import json
import os
import subprocess
import uuid

import pytest

from deploy.env import sdk_env
from tests.e2e import cluster
from tests.e2e.cluster import CFG
from tests.e2e.run import CREATED, RUN_ID, TAG
from tests.support.npm import npm_ci

JS = cluster.REPO / "tests" / "e2e" / "js"


@pytest.fixture(scope="module")
def node_modules():
    """`npm ci` into js/node_modules, once per lockfile (a stamp holds the lockfile's hash)."""
    return npm_ci(JS, "the JS SDK test")


def js_env(with_ca: bool = True) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("E2B_") and k not in ("NODE_EXTRA_CA_CERTS", "SSL_CERT_FILE")}
    sdk = sdk_env(CFG)
    env.update({"E2B_API_URL": sdk["E2B_API_URL"], "E2B_API_KEY": sdk["E2B_API_KEY"], "CUBE_E2E_RUN": RUN_ID})
    if with_ca:
        env["NODE_EXTRA_CA_CERTS"] = sdk["SSL_CERT_FILE"]
    return env


def run_script(node: str, marker: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([node, "sdk_roundtrip.mjs", marker], cwd=JS, env=env, capture_output=True, text=True,
                          timeout=300)


def test_js_sdk_create_run_code_files_kill(node_modules):
    marker = "js" + uuid.uuid4().hex[:8]
    r = run_script(node_modules, marker, js_env())
    assert r.returncode == 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    out = json.loads(r.stdout.strip().splitlines()[-1])
    CREATED.add(out["sandboxId"])
    assert out["sandboxDomain"] == CFG.domain
    assert out["runCode"] == {"stdout": [marker + "\n"], "stderr": [], "text": "42", "error": None}
    assert out["state"] == "43"
    assert out["jsKernel"] == "[ 2, 4, 6 ]"
    assert out["fileRoundTrip"] is True and out["fileList"] == [marker + ".txt"]
    assert out["command"] == {"exitCode": 0, "stdout": f"{len(f'hello from node {marker}') + 1}\nuser\n"}
    assert out["info"] == {"templateId": "code-interpreter", "running": True}
    assert out["killed"] is True and out["connectAfterKill"] == "SandboxNotFoundError"
    cluster.wait_until(lambda: not cluster.traces_of(out["sandboxId"]), 30, what="JS sandbox gone")


def test_js_sdk_needs_node_extra_ca_certs(node_modules):
    """Without NODE_EXTRA_CA_CERTS Node does not trust the node's CA: sandbox traffic fails with a
    certificate error (the API itself is plain HTTP, so the create and the kill still work)."""
    r = run_script(node_modules, "nocert", js_env(with_ca=False))
    assert r.returncode != 0
    assert "self-signed certificate" in r.stderr or "SELF_SIGNED_CERT_IN_CHAIN" in r.stderr, r.stderr[-2000:]
    # The script's `finally` killed its sandbox through the API: nothing of it is left.
    import httpx

    listed = httpx.get(f"{cluster.API_URL}/v2/sandboxes", params={"metadata": f"{TAG}={RUN_ID}&lang=js"},
                       headers={"X-API-KEY": sdk_env(CFG)["E2B_API_KEY"]}, timeout=30).json()
    assert listed == []


def test_js_sdk_every_language(node_modules):
    """The JS SDK's runCode in each language of the default template, ES modules and top-level
    await in JavaScript (what E2B's own JS SDK tests check), env vars of the sandbox and a call."""
    r = subprocess.run([node_modules, "languages.mjs"], cwd=JS, env=js_env(), capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    out = json.loads(r.stdout.strip().splitlines()[-1])
    CREATED.add(out["sandboxId"])
    expected = {lang: {"stdout": ["Hello, World!\n"], "error": None} for lang in ("js", "ts", "python", "java", "bash")}
    expected["r"] = {"stdout": ['[1] "Hello, World!"\n'], "error": None}
    assert out["hello"] == expected
    assert out["esm"] == ["function\n"] and out["tla"] == "Hello World!"
    assert out["env"] == {"ts": "from-create", "java": "call", "r": ['[1] "call"']}
    assert out["tsError"] == {"name": "TypeError", "value": "boom"}
    assert out["killed"] is True
