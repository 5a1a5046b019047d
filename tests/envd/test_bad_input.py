"""Input the SDK cannot (or should not) produce: every case gets an error in the protocol's shape
and the agent keeps serving."""

from __future__ import annotations

import base64
import time
from datetime import UTC

import httpx
import pytest
from e2b import AuthenticationException, Sandbox
from e2b.sandbox.signature import get_signature

from .conftest import ENVD, envelope, init, parse_envelopes, stream, unary

ROOT = {"Authorization": "Basic " + base64.b64encode(b"root:").decode()}


@pytest.fixture(autouse=True)
def still_serving(agent):
    yield
    assert agent.proc.poll() is None
    assert httpx.get(ENVD + "/health").status_code == 204


def test_malformed_json_unary(agent):
    r = unary("/filesystem.Filesystem/Stat", b"{not json")
    assert r.status_code == 400
    assert r.json()["code"] == "invalid_argument"
    r = unary("/filesystem.Filesystem/Stat", {"path": 5})
    assert r.status_code == 400 and r.json()["code"] == "invalid_argument"


def test_wrong_content_type_and_method(agent):
    r = httpx.post(ENVD + "/process.Process/List", content=b"{}", headers={"Content-Type": "application/proto"})
    assert r.status_code == 415 and r.json()["code"] == "invalid_argument"
    r = httpx.get(ENVD + "/process.Process/List")
    assert r.status_code == 501 and r.json()["code"] == "unimplemented"
    r = unary("/process.Process/Nope", {})
    assert r.json()["code"] == "unimplemented"


def test_malformed_envelopes(agent):
    r = stream("/process.Process/Start", b"\x00\x00\x00")  # truncated header
    assert r.status_code == 400 and r.json()["code"] == "invalid_argument"
    r = stream("/process.Process/Start", b"\x00\x00\x00\x00\x10{}")  # short payload
    assert r.json()["code"] == "invalid_argument"
    r = stream("/process.Process/Start", envelope(b"{bad"))
    assert r.json()["code"] == "invalid_argument"
    r = stream("/process.Process/Start", envelope({}, flags=1))  # compressed
    assert r.status_code >= 400
    r = stream("/process.Process/Start", b"")  # no message at all
    assert r.json()["code"] == "invalid_argument"
    r = stream("/process.Process/Start", envelope({"process": {"cmd": "true"}}) * 2)
    assert r.json()["code"] == "invalid_argument"
    r = stream("/process.Process/Start", envelope({"process": {}}))  # no cmd
    assert r.json()["code"] == "invalid_argument"


def test_stream_happy_path_raw(agent):
    r = stream("/process.Process/Start", envelope({"process": {"cmd": "/bin/echo", "args": ["raw"]}, "stdin": False}))
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/connect+json"
    msgs = parse_envelopes(r.content)
    assert msgs[0] == (0, {"event": {"start": {"pid": msgs[0][1]["event"]["start"]["pid"]}}})
    assert msgs[-1] == (2, {})
    assert any(m.get("event", {}).get("data", {}).get("stdout") == base64.b64encode(b"raw\n").decode() for _, m in msgs)


def test_deadline_and_keepalive(agent):
    h = {"Connect-Timeout-Ms": "1500", "Keepalive-Ping-Interval": "0.3"}
    t = time.monotonic()
    r = stream("/process.Process/Start", envelope({"process": {"cmd": "/bin/sleep", "args": ["20"]}}), h)
    assert time.monotonic() - t < 10
    msgs = parse_envelopes(r.content)
    assert any("keepalive" in m.get("event", {}) for _, m in msgs)
    flags, end = msgs[-1]
    assert flags == 2 and end["error"]["code"] == "deadline_exceeded"
    r = unary("/process.Process/List", {}, {"Connect-Timeout-Ms": "abc"})
    assert r.json()["code"] == "invalid_argument"


def test_unknown_pid(sandbox):
    r = unary("/process.Process/SendInput", {"process": {"pid": 999999}, "input": {"stdin": "eA=="}})
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    r = stream("/process.Process/Connect", envelope({"process": {"pid": 999999}}))
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    from e2b import NotFoundException

    with pytest.raises(NotFoundException):
        sandbox.commands.connect(999999)
    assert sandbox.commands.kill(999999) is False


def test_client_stream_errors(agent):
    r = stream("/process.Process/StreamInput", envelope({"data": {"input": {"stdin": "eA=="}}}))
    flags, end = parse_envelopes(r.content)[-1]
    assert flags == 2 and end["error"]["code"] == "invalid_argument"
    r = stream("/process.Process/StreamInput", envelope({"start": {"process": {"pid": 999999}}}))
    assert parse_envelopes(r.content)[-1][1]["error"]["code"] == "not_found"


def test_wrong_user(sandbox):
    with pytest.raises(AuthenticationException):
        sandbox.commands.run("true", user="nobody-here")
    with pytest.raises(AuthenticationException):
        sandbox.files.read("/etc/hostname", user="nobody-here")
    r = unary("/filesystem.Filesystem/Stat", {"path": "/"}, {"Authorization": "Bearer x"})
    assert r.status_code == 401 and r.json()["code"] == "unauthenticated"


def test_missing_path_and_directory_path(agent):
    r = httpx.get(ENVD + "/files", params={"path": "/nope/nothing"})
    assert r.status_code == 404 and "does not exist" in r.json()["message"]
    r = httpx.get(ENVD + "/files", params={"path": "/tmp"})
    assert r.status_code == 400 and r.json()["code"] == 400
    r = httpx.get(ENVD + "/files")
    assert r.status_code == 400
    r = httpx.post(ENVD + "/files", params={"path": "/tmp"}, content=b"x",
                   headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 400 and "directory" in r.json()["message"]
    r = httpx.post(ENVD + "/files", content=b"x", headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 400
    r = httpx.post(ENVD + "/files", content=b"--b\r\ngarbage",
                   headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert r.status_code == 400
    r = unary("/filesystem.Filesystem/ListDir", {"path": "/etc/hostname"}, ROOT)
    assert r.json()["code"] == "invalid_argument"
    r = unary("/filesystem.Filesystem/Stat", {"path": ""})
    assert r.json()["code"] == "invalid_argument"


def test_access_token_is_enforced(token, agent):
    assert httpx.get(ENVD + "/health").status_code == 204  # exempt
    r = unary("/process.Process/List", {})
    assert r.status_code == 401 and r.json()["code"] == "unauthenticated"
    assert unary("/process.Process/List", {}, {"X-Access-Token": "wrong"}).status_code == 401
    assert unary("/process.Process/List", {}, {"X-Access-Token": token}).status_code == 200
    # The SDK in debug mode has no token: it must get AuthenticationException.
    sbx = Sandbox.create()
    with pytest.raises(AuthenticationException):
        sbx.commands.run("true")
    with pytest.raises(AuthenticationException):
        sbx.files.read("/etc/hostname")
    # /files takes the header or a signature.
    r = httpx.get(ENVD + "/files", params={"path": "/etc/hostname"}, headers={"X-Access-Token": token})
    assert r.status_code == 200
    sig = get_signature("/etc/hostname", "read", None, token, 60)
    r = httpx.get(ENVD + "/files", params={"path": "/etc/hostname", "signature": sig["signature"],
                                          "signature_expiration": sig["expiration"]})
    assert r.status_code == 200
    bad = get_signature("/etc/hostname", "read", None, "other", 60)
    r = httpx.get(ENVD + "/files", params={"path": "/etc/hostname", "signature": bad["signature"],
                                          "signature_expiration": bad["expiration"]})
    assert r.status_code == 401
    expired = get_signature("/etc/hostname", "read", None, token, -10)
    r = httpx.get(ENVD + "/files", params={"path": "/etc/hostname", "signature": expired["signature"],
                                          "signature_expiration": expired["expiration"]})
    assert r.status_code == 401  # the messages: test_signed_urls_fail_with_upstreams_messages
    wsig = get_signature("/home/user/signed.txt", "write", "root", token)
    r = httpx.post(ENVD + "/files", params={"path": "/home/user/signed.txt", "username": "root",
                                           "signature": wsig["signature"]},
                   files={"file": ("signed.txt", b"via signature")})
    assert r.status_code == 200 and r.json()[0]["path"] == "/home/user/signed.txt"
    # /init needs the current token to change it.
    assert init({"accessToken": "stolen"}).status_code == 401
    # The code-interpreter port checks it on every endpoint: test_interpreter_access.py.


def _secured_sdk_sandbox(token: str) -> Sandbox:
    """The SDK's sandbox object as Sandbox.connect builds it for a secured sandbox (debug mode
    makes no API call and so knows no token): what download_url()/upload_url() sign with."""
    from e2b.connection_config import ConnectionConfig
    from packaging.version import Version

    return Sandbox(sandbox_id="debug_sandbox_id", sandbox_domain=None, envd_version=Version("0.6.13"),
                   envd_access_token=token, traffic_access_token=None,
                   connection_config=ConnectionConfig(extra_sandbox_headers={"X-Access-Token": token}))


def test_signed_urls_fail_with_upstreams_messages(token, agent):
    """Upstream envd's answers for signed /files URLs: 401 JSON {code, message}, the signature
    checked before its expiry, a header that is present checked instead of the signature."""
    sbx = _secured_sdk_sandbox(token)
    sbx.files.write("/home/user/signed/f.txt", "signed")
    assert httpx.get(sbx.download_url("/home/user/signed/f.txt", use_signature_expiration=60)).text == "signed"

    def expect(r: httpx.Response, status: int, message: str) -> None:
        assert (r.status_code, r.json()) == (status, {"code": status, "message": message}), r.text
        assert r.headers["content-type"].startswith("application/json")

    expect(httpx.get(sbx.download_url("/home/user/signed/f.txt", use_signature_expiration=-10)),
           401, "signature is already expired")
    expect(httpx.post(sbx.upload_url("/home/user/signed/f.txt", use_signature_expiration=-10),
                      files={"file": ("f.txt", b"late")}), 401, "signature is already expired")
    assert sbx.files.read("/home/user/signed/f.txt") == "signed"  # the late upload wrote nothing
    # A forged signature is invalid whatever its expiry says.
    forged = get_signature("/home/user/signed/f.txt", "read", None, "not-the-token", -10)
    expect(httpx.get(ENVD + "/files", params={"path": "/home/user/signed/f.txt", "signature": forged["signature"],
                                              "signature_expiration": forged["expiration"]}),
           401, "invalid signature")
    # The signature covers the operation: a read URL does not upload.
    read_sig = get_signature("/home/user/signed/f.txt", "read", None, token, 60)
    expect(httpx.post(ENVD + "/files", params={"path": "/home/user/signed/f.txt", "signature": read_sig["signature"],
                                               "signature_expiration": read_sig["expiration"]},
                      files={"file": ("f.txt", b"x")}), 401, "invalid signature")
    expect(httpx.get(ENVD + "/files", params={"path": "/home/user/signed/f.txt"}),
           401, "missing signature query parameter")
    expect(httpx.get(sbx.download_url("/home/user/signed/f.txt", use_signature_expiration=60),
                     headers={"X-Access-Token": "wrong"}), 401, "access token present in header but does not match")
    r = httpx.get(ENVD + "/files", params={"path": "/home/user/signed/f.txt", "signature": read_sig["signature"],
                                          "signature_expiration": "soon"})
    assert r.status_code == 400 and "signature_expiration" in r.json()["message"], r.text
    # The SDK turns the 401 into AuthenticationException carrying that message.
    from e2b.envd.api import format_envd_api_exception
    err = format_envd_api_exception(401, "signature is already expired")
    assert isinstance(err, AuthenticationException) and "signature is already expired" in str(err)


def test_init_env_vars_reach_processes_and_kernels(sandbox, agent):
    assert init({"envVars": {"FROM_INIT": "hello"}, "timestamp": time.time(), "sandboxID": "testsandbox",
                 "entropy": base64.b64encode(b"0123456789abcdef").decode()}).status_code == 204
    try:
        assert sandbox.commands.run("echo $FROM_INIT").stdout == "hello\n"
        assert sandbox.run_code("import os; os.environ['FROM_INIT']").text == "hello"
        assert httpx.get(ENVD + "/envs").json() == {"FROM_INIT": "hello"}
    finally:
        init({"envVars": {}})


def test_a_cells_env_vars_win_over_the_sandbox_env_after_init(sandbox, agent):
    """Python kernels apply /init's env vars in a pre-run hook; a cell's own env vars must still
    win in the first cell after an /init, and the sandbox's value be back in the next cell."""
    assert init({"envVars": {"PRECEDENCE": "sandbox"}}).status_code == 204
    try:
        ex = sandbox.run_code("import os; os.environ['PRECEDENCE']", envs={"PRECEDENCE": "cell"})
        assert ex.text == "cell", ex
        assert sandbox.run_code("os.environ['PRECEDENCE']").text == "sandbox"
    finally:
        init({"envVars": {}})


def test_init_bad_input(agent):
    assert httpx.post(ENVD + "/init", content=b"[1,2]").status_code == 400
    assert httpx.post(ENVD + "/init", content=b"{bad").status_code == 400
    assert init({"timestamp": "yesterday"}).status_code == 400
    assert init({"envVars": {"A": 1}}).status_code == 400
    assert init({"defaultUser": "nobody-here"}).status_code == 400
    # A current RFC 3339 time with Go's nanoseconds parses; being within the threshold, it leaves
    # the clock alone (a test must never step the host's clock).
    from datetime import datetime

    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.123456789Z")
    assert init({"timestamp": now}).status_code == 204


def test_timestamp_parsing():
    from services.envd.identity import InitError, _parse_timestamp

    assert _parse_timestamp("2025-01-01T00:00:00Z") == 1735689600.0
    assert _parse_timestamp("2025-01-01T01:00:00.5+01:00") == 1735689600.5
    assert _parse_timestamp(1735689600) == 1735689600.0
    assert _parse_timestamp("1735689600") == 1735689600.0
    with pytest.raises(InitError):
        _parse_timestamp("2025-01-01T00:00:00")  # no offset
