"""One real agent for the whole envd test session, over a throwaway overlay of this host's `/`,
driven by the unmodified E2B SDKs in debug mode (which hard-codes localhost:49983/49999)."""

from __future__ import annotations

import json
import os
import struct
import tempfile
import time

import httpx
import pytest

from services.envd.devroot import DevRoot, PortBusy


@pytest.fixture(scope="package", autouse=True)
def sdk_debug_mode():
    """The SDKs' debug mode (localhost:49983/49999, no API) for this package only: set at import
    time it would leak into every other test package collected in the same run."""
    saved = {k: os.environ.get(k) for k in ("E2B_DEBUG", "E2B_API_KEY")}
    os.environ["E2B_DEBUG"] = "true"
    os.environ.setdefault("E2B_API_KEY", "e2b_0000")
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v

ENVD = "http://127.0.0.1:49983"
INTERPRETER = "http://127.0.0.1:49999"


@pytest.fixture(scope="session")
def agent():
    if os.geteuid() != 0:
        pytest.skip("the envd tests need root (overlay mount and chroot)")
    log = tempfile.NamedTemporaryFile(prefix="envd-test-", suffix=".log", delete=False)
    log.close()
    dev = DevRoot(log_path=log.name)
    try:
        dev.start()
    except PortBusy as e:
        pytest.fail(f"cannot start envd for the tests: {e}")
    try:
        yield dev
    finally:
        dev.stop()
        print(f"\nenvd log: {log.name}")


@pytest.fixture(scope="package")
def sandbox(agent, sdk_debug_mode):
    from e2b_code_interpreter import Sandbox

    return Sandbox.create()


@pytest.fixture
def root_path(agent):
    """Maps a path inside the sandbox to the same file seen from the host."""
    return lambda p: os.path.join(agent.root, p.lstrip("/"))


def text_after_interrupt(sandbox, context, code: str, expected: str, within_s: float = 30.0) -> str | None:
    """What `code` shows in `context` once the kernel is back from an interrupt (a client timeout):
    the first call may still meet the interrupted cell's end, so it retries until `expected` or
    `within_s`. Returns the last text."""
    deadline = time.monotonic() + within_s
    while True:
        text = sandbox.run_code(code, context=context, timeout=30).text
        if text == expected or time.monotonic() > deadline:
            return text


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS


# -- raw protocol helpers, for input the SDK cannot produce -------------------------------------

def envelope(payload: bytes | dict, flags: int = 0) -> bytes:
    if isinstance(payload, dict):
        payload = json.dumps(payload).encode()
    return struct.pack(">BI", flags, len(payload)) + payload


def parse_envelopes(body: bytes) -> list[tuple[int, dict]]:
    out = []
    while body:
        flags, n = struct.unpack(">BI", body[:5])
        out.append((flags, json.loads(body[5:5 + n])))
        body = body[5 + n:]
    return out


def unary(path: str, body: bytes | dict, headers: dict | None = None) -> httpx.Response:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    h = {"Content-Type": "application/json", "Connect-Protocol-Version": "1", **(headers or {})}
    return httpx.post(ENVD + path, content=data, headers=h, timeout=30)


def stream(path: str, body: bytes, headers: dict | None = None) -> httpx.Response:
    h = {"Content-Type": "application/connect+json", "Connect-Protocol-Version": "1", **(headers or {})}
    return httpx.post(ENVD + path, content=body, headers=h, timeout=30)


def init(body: dict, token: str | None = None) -> httpx.Response:
    h = {"X-Access-Token": token} if token else {}
    return httpx.post(ENVD + "/init", json=body, headers=h, timeout=30)


@pytest.fixture
def token(agent):
    """An access token set with /init for one test, as the host sets a sandbox's; cleared after."""
    tok = "tok-" + str(time.time())
    assert init({"accessToken": tok}).status_code == 204
    try:
        yield tok
    finally:
        assert init({"accessToken": ""}, token=tok).status_code == 204
