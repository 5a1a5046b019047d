"""Auth on: a second cube-api with CUBE_AUTH=on in front of the node's master. A key issued by
`cubemastercli apikey create` works with the unmodified SDK; a wrong, malformed, missing or
revoked key gets 401, which the SDK raises as AuthenticationException."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest
from e2b import AuthenticationException
from e2b_code_interpreter import Sandbox

from cube_common.procs import stop_process
from testkit.ports import free_port
from tests.e2e.cluster import CFG, REPO
from tests.e2e.run import CREATED, tag

CLI = str(REPO / ".venv/bin/cubemastercli")
AUTH_API_LOG: list = []


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, "--json", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "CUBE_MASTER_ADDR": CFG.master_addr})


@pytest.fixture(scope="module")
def auth_api(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("auth-api") / "api.log"
    env = {**CFG.env(), "CUBE_AUTH": "on", "CUBE_API_PORT": str(port), "CUBE_MASTER_ADDR": CFG.master_addr,
           "CUBE_API_HOST": "127.0.0.1", "CUBE_API_METRICS_LISTEN": f"127.0.0.1:{free_port()}"}
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "services.api"], cwd=REPO, env=env, stdout=f,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, f"auth API exited: {log.read_text()}"
            assert time.monotonic() < deadline, f"auth API not up: {log.read_text()}"
            time.sleep(0.2)
        AUTH_API_LOG.append(log)
        yield url
    finally:
        stop_process(proc, 20)


@pytest.fixture(scope="module")
def key():
    r = cli("apikey", "create", "--name", "e2e-auth")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    secret, key_id = out["key"], out["apiKey"]["keyId"]
    assert secret and secret.startswith("e2b_") and len(secret) == 44, out
    assert key_id, out
    yield secret, key_id
    cli("apikey", "revoke", key_id)


@pytest.fixture
def use_api(monkeypatch):
    def use(url: str, api_key: str | None) -> None:
        monkeypatch.setenv("E2B_API_URL", url)
        if api_key is None:
            monkeypatch.delenv("E2B_API_KEY", raising=False)
        else:
            monkeypatch.setenv("E2B_API_KEY", api_key)
    return use


def test_right_key_works(auth_api, key, use_api):
    use_api(auth_api, key[0])
    sbx = Sandbox.create(metadata=tag({"case": "auth"}))
    CREATED.add(sbx.sandbox_id)
    try:
        assert sbx.run_code("6 * 7").text == "42"
        listed = Sandbox.list().next_items()
        assert sbx.sandbox_id in {s.sandbox_id for s in listed}
    finally:
        assert sbx.kill() is True


@pytest.mark.parametrize("bad", ["e2b_" + "0" * 40, "e2b_" + "f" * 40, "not-a-key"],
                         ids=["zeros", "unknown", "malformed"])
def test_wrong_key_is_401(auth_api, key, use_api, bad):
    use_api(auth_api, bad)
    with pytest.raises(AuthenticationException):
        Sandbox.create(metadata=tag({"case": "auth-wrong"}))
    with pytest.raises(AuthenticationException):
        Sandbox.list().next_items()
    r = httpx.post(auth_api + "/v2/sandboxes", json={"templateID": "base"}, headers={"X-API-KEY": bad}, timeout=30)
    assert r.status_code == 401 and r.json()["code"] == 401 and isinstance(r.json()["message"], str), r.text
    r = httpx.delete(auth_api + "/sandboxes/nosuchsandbox0000000", headers={"X-API-KEY": bad}, timeout=30)
    assert r.status_code == 401, r.text  # checked before the sandbox is looked up


def test_missing_key(auth_api, use_api):
    use_api(auth_api, None)
    with pytest.raises(AuthenticationException):  # the SDK refuses locally without a key
        Sandbox.create()
    r = httpx.get(auth_api + "/v2/sandboxes", timeout=30)
    assert r.status_code == 401 and r.json()["code"] == 401


def test_wrong_key_cannot_touch_a_sandbox(auth_api, key, use_api):
    use_api(auth_api, key[0])
    sbx = Sandbox.create(metadata=tag({"case": "auth-owner"}))
    CREATED.add(sbx.sandbox_id)
    try:
        bad = {"api_key": "e2b_" + "1" * 40, "api_url": auth_api}
        with pytest.raises(AuthenticationException):
            Sandbox.kill(sbx.sandbox_id, **bad)
        with pytest.raises(AuthenticationException):
            Sandbox.set_timeout(sbx.sandbox_id, 1, **bad)
        with pytest.raises(AuthenticationException):
            Sandbox.connect(sbx.sandbox_id, **bad)
        assert sbx.is_running() and sbx.get_info().state.value == "running"
    finally:
        assert sbx.kill() is True


def test_revoked_key_is_401(auth_api, use_api):
    r = cli("apikey", "create", "--name", "e2e-revoke")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    secret, key_id = out["key"], out["apiKey"]["keyId"]
    use_api(auth_api, secret)
    assert isinstance(Sandbox.list().next_items(), list)
    r = cli("apikey", "revoke", key_id)
    assert r.returncode == 0, r.stderr
    assert key_id not in {k["keyId"] for k in json.loads(cli("apikey", "list").stdout)}
    deadline = time.monotonic() + 10  # allowed: a short validation cache
    while True:
        try:
            Sandbox.list().next_items()
        except AuthenticationException:
            break
        assert time.monotonic() < deadline, "a revoked key still works after 10 s"
        time.sleep(0.5)
    with pytest.raises(AuthenticationException):
        Sandbox.create(metadata=tag({"case": "auth-revoked"}))


def test_auth_api_log_has_no_secrets(auth_api, key):
    # The key travels in X-API-KEY; it must never reach the log.
    httpx.get(auth_api + "/v2/sandboxes", headers={"X-API-KEY": key[0]}, timeout=30)
    time.sleep(0.5)
    assert "request" in AUTH_API_LOG[0].read_text() and key[0] not in AUTH_API_LOG[0].read_text()
