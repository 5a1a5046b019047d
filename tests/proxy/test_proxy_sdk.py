"""The unmodified E2B SDK through CubeProxy to the real envd. The SDK is pointed at the proxy's
plain listener with E2B_SANDBOX_URL (header routing): the https://<port>-<id>.<domain> form
always uses port 443, which tests do not take. A minimal stand-in control plane answers
create and kill; the test writes the route the way the master does and waits for the ack."""

from __future__ import annotations

import asyncio
import threading
from typing import TypedDict

import pytest
from aiohttp import web

from testkit.ports import free_port
from tests.proxy.conftest import ENVD_HOST, new_id

pytestmark = pytest.mark.timeout(180)


class FakeApi(TypedDict):
    ids: list[str]  # the sandbox ids the next creates answer with, in order
    port: int


@pytest.fixture
def fake_api():
    """POST /v2/sandboxes answers 201 with the next id from `ids`; DELETE answers 204."""
    state: FakeApi = {"ids": [], "port": free_port()}

    async def create(request):
        sid = state["ids"].pop(0)
        return web.json_response({"templateID": "base", "sandboxID": sid, "clientID": "x",
                                  "envdVersion": "0.6.13", "domain": "cube.localhost"}, status=201)

    async def kill(request):
        return web.Response(status=204)

    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/v2/sandboxes", create)
    app.router.add_delete("/sandboxes/{id}", kill)
    runner = web.AppRunner(app)
    ready = threading.Event()

    def serve():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", state["port"]).start())
        ready.set()
        loop.run_forever()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    assert ready.wait(10)
    try:
        yield state
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        t.join(10)


@pytest.fixture
def sdk_env(proxy, fake_api, monkeypatch):
    monkeypatch.setenv("E2B_API_URL", f"http://127.0.0.1:{fake_api['port']}")
    monkeypatch.setenv("E2B_API_KEY", "e2b_" + "0" * 40)
    monkeypatch.setenv("E2B_SANDBOX_URL", proxy.http_url)
    monkeypatch.delenv("E2B_DEBUG", raising=False)


async def test_sdk_through_proxy(proxy, routes, envd_agent, fake_api, sdk_env):
    from e2b import Sandbox

    sid = new_id()
    await routes.put(sid, host=ENVD_HOST)  # what the master does before answering 201
    fake_api["ids"].append(sid)

    def use() -> tuple[str, str, list[str]]:
        sbx = Sandbox.create()
        assert sbx.sandbox_id == sid
        streamed: list[str] = []
        r = sbx.commands.run("echo hello; echo err >&2", on_stdout=streamed.append)
        sbx.files.write("/tmp/proxy-sdk.txt", "through the proxy")
        content = sbx.files.read("/tmp/proxy-sdk.txt")
        sbx.kill()
        return r.stdout, content, streamed

    stdout, content, streamed = await asyncio.to_thread(use)
    assert stdout == "hello\n" and content == "through the proxy" and streamed == ["hello\n"]


async def test_sdk_sees_not_running_after_delete(proxy, routes, envd_agent, fake_api, sdk_env):
    from e2b import Sandbox
    from e2b.exceptions import SandboxNotRunningException

    sid = new_id()
    await routes.put(sid, host=ENVD_HOST)
    fake_api["ids"].append(sid)

    sbx = await asyncio.to_thread(Sandbox.create)
    assert (await asyncio.to_thread(sbx.commands.run, "true")).exit_code == 0
    await routes.delete(sid)  # killed: the master deletes the route
    with pytest.raises(SandboxNotRunningException):
        await asyncio.to_thread(sbx.commands.run, "true")
    with pytest.raises(SandboxNotRunningException):
        await asyncio.to_thread(sbx.files.read, "/etc/hostname")
