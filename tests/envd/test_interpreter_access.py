"""The code-interpreter port (49999) checks the sandbox's access token on every endpoint but
/health once /init has set one (issue 11), and behaves as before while none is set. The context
routes accept a request that presents no token, because the E2B SDKs send none there."""

from __future__ import annotations

import httpx
import pytest
from e2b import ConnectionConfig, SandboxException
from e2b.envd.versions import ENVD_DEBUG_FALLBACK
from e2b_code_interpreter import Sandbox

from .conftest import INTERPRETER

# Every route of the port (ids that do not exist: the check comes before the lookup), and a path
# that is no route at all.
ENDPOINTS = [
    ("GET", "/contexts", None),
    ("POST", "/contexts", {"language": "python"}),
    ("POST", "/contexts/missing/restart", None),
    ("DELETE", "/contexts/missing", None),
    ("POST", "/execute", {"code": "1"}),
    ("POST", "/warmup", None),
    ("GET", "/no-such-route", None),
]


def call(method: str, path: str, body: dict | None, token: str | None = None, timeout: float = 120):
    headers = {"X-Access-Token": token} if token is not None else {}
    return httpx.request(method, INTERPRETER + path, json=body, headers=headers, timeout=timeout)


CONTEXT_ROUTES = {"/contexts", "/contexts/missing/restart", "/contexts/missing"}


# Every endpoint with a missing, empty and wrong token, but for a missing one on the context routes
# (the SDKs send none there: test_context_calls_without_a_token).
REFUSED = [(m, p, b, presented) for m, p, b in ENDPOINTS for presented in (None, "", "wrong")
           if not (presented is None and p in CONTEXT_ROUTES)]


@pytest.mark.parametrize("method,path,body,presented", REFUSED,
                         ids=[f"{m} {p} {'missing' if t is None else t or 'empty'}" for m, p, _, t in REFUSED])
def test_every_endpoint_refuses_a_missing_or_wrong_token(token, method, path, body, presented):
    r = call(method, path, body, presented)
    assert r.status_code == 401, r.text
    assert r.json() == {"code": 401, "message": "missing or invalid access token"}


def test_context_calls_without_a_token(token):
    """What the SDKs send: no header at all. It passes; a wrong token would not (above)."""
    r = call("POST", "/contexts", {"language": "python"})
    assert r.status_code == 200, r.text
    ctx = r.json()["id"]
    assert ctx in {c["id"] for c in call("GET", "/contexts", None).json()}
    assert call("POST", f"/contexts/{ctx}/restart", None).status_code == 200
    assert call("DELETE", f"/contexts/{ctx}", None).status_code == 200


def test_health_stays_open(token):
    """The cubelet probes it without a token; it returns nothing of the sandbox."""
    r = httpx.get(INTERPRETER + "/health", timeout=10)
    assert r.status_code == 200 and r.json() == "OK"


def test_the_right_token_is_accepted_everywhere(token):
    r = call("POST", "/contexts", {"language": "python", "cwd": "/tmp"}, token)
    assert r.status_code == 200, r.text
    ctx = r.json()["id"]
    try:
        assert ctx in {c["id"] for c in call("GET", "/contexts", None, token).json()}
        r = call("POST", "/execute", {"code": "import os; os.getcwd()", "context_id": ctx}, token)
        assert r.status_code == 200 and '"/tmp"' in r.text.replace("'", '"'), r.text
        assert call("POST", f"/contexts/{ctx}/restart", None, token).status_code == 200
        assert call("POST", "/warmup", None, token).status_code == 204
        assert call("GET", "/no-such-route", None, token).status_code == 404
    finally:
        assert call("DELETE", f"/contexts/{ctx}", None, token).status_code == 200
    assert call("DELETE", f"/contexts/{ctx}", None, token).status_code == 404


def test_without_a_token_set_every_endpoint_is_open(agent):
    """A template being built, a pooled clone before its claim, local development."""
    assert call("GET", "/contexts", None).status_code == 200
    assert call("POST", "/execute", {"code": "1"}).status_code == 200
    assert call("POST", "/warmup", None).status_code == 204


# -- the unmodified SDK ----------------------------------------------------------------------------

def sdk_holding(token: str) -> Sandbox:
    """The SDK object `Sandbox.create()` makes from an API answer carrying `envdAccessToken`
    (debug mode has no API, so the same constructor call is made here)."""
    headers = {"X-Access-Token": token, "E2b-Sandbox-Id": "debug_sandbox_id",
               "E2b-Sandbox-Port": str(ConnectionConfig.envd_port)}
    return Sandbox(sandbox_id="debug_sandbox_id", sandbox_domain=None, envd_version=ENVD_DEBUG_FALLBACK,
                   envd_access_token=token, traffic_access_token=None,
                   connection_config=ConnectionConfig(extra_sandbox_headers=headers))


def test_the_sdk_without_the_token_cannot_run_code(token, sandbox):
    """`sandbox` is the package's debug-mode SDK object, which holds no token."""
    with pytest.raises(SandboxException, match="401"):
        sandbox.run_code("1")


def test_the_sdk_with_the_token_runs_code(token):
    assert sdk_holding(token).run_code("6 * 7").text == "42"


def test_the_sdk_manages_contexts_on_a_sandbox_with_a_token(token):
    """create/list/restart/remove with the unmodified SDK against a sandbox whose token is set, and
    the context is usable by run_code (which does send the token)."""
    sbx = sdk_holding(token)
    ctx = sbx.create_code_context(cwd="/tmp")
    try:
        assert ctx.id in {c.id for c in sbx.list_code_contexts()}
        assert sbx.run_code("import os; os.getcwd()", context=ctx).text == "/tmp"
        sbx.restart_code_context(ctx)
    finally:
        sbx.remove_code_context(ctx)
    assert ctx.id not in {c.id for c in sbx.list_code_contexts()}


def test_the_pinned_sdk_sends_no_token_with_context_calls(token, monkeypatch):
    """The reason for the exception above. When an SDK starts sending the token on context calls,
    this fails: then drop TOKENLESS_PREFIX and require the token there too."""
    seen: list[httpx.Request] = []
    send = httpx.Client.send

    def recording_send(self, request, *args, **kwargs):
        seen.append(request)
        return send(self, request, *args, **kwargs)

    monkeypatch.setattr(httpx.Client, "send", recording_send)
    sbx = sdk_holding(token)
    sbx.remove_code_context(sbx.create_code_context())
    context_calls = [r for r in seen if r.url.path.startswith("/contexts")]
    assert context_calls and all("x-access-token" not in r.headers for r in context_calls)
