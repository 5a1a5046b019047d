"""The unmodified E2B SDK through CubeProxy to the real envd. The SDK is pointed at the proxy's
plain listener with E2B_SANDBOX_URL (header routing): the https://<port>-<id>.<domain> form
always uses port 443, which tests do not take. A minimal stand-in control plane answers
create and kill; the test writes the route the way the master does and waits for the ack."""

from __future__ import annotations

import asyncio
import socket
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


@pytest.mark.parametrize("transport", ["http1", "h2"])
async def test_command_in_flight_when_killed_ends_with_sandbox_not_running(proxy, routes, envd_agent, fake_api,
                                                                         sdk_env, monkeypatch, transport):
    """A foreground command streaming when its sandbox is killed: the route goes, the proxy
    closes Envoy's connection to the guest once Envoy serves that, Envoy resets the client's
    stream, the SDK probes /health, meets the proxy's "was not found" and raises its "killed or
    reached its end of life" SandboxNotRunningException. Before, the stream hung until the
    command's own timeout (here the command would end normally after 60 s: envd on this host
    outlives the route). Over the plain listener (HTTP/1.1: Envoy closes the connection) and
    over TLS (h2, as the SDK talks to https://49983-<id>.<domain>: Envoy resets the stream)."""
    import time

    if transport == "h2":
        # *.cube.localhost resolves to loopback where the node's setup put myhostname in NSS.
        try:
            socket.getaddrinfo("sbx.cube.localhost", proxy.https_port)
        except socket.gaierror:
            pytest.skip("*.cube.localhost does not resolve here (scripts/local_dns.sh)")
        monkeypatch.setenv("E2B_SANDBOX_URL", f"https://sbx.cube.localhost:{proxy.https_port}")
        monkeypatch.setenv("SSL_CERT_FILE", proxy.ca)
        # The SDK keeps its connection pools for the process, built with the CAs of the moment:
        # start this test from empty caches so its pool trusts the test proxy's CA.
        from e2b.api import client_sync
        for cache in ("_transports", "_pools", "_httpx_transports"):
            monkeypatch.setattr(client_sync, cache, {})

    from e2b import Sandbox
    from e2b.exceptions import SandboxNotRunningException

    await routes.delete_all_to(ENVD_HOST)  # other tests' sandboxes on the same envd
    sid = new_id()
    await routes.put(sid, host=ENVD_HOST)
    fake_api["ids"].append(sid)
    sbx = await asyncio.to_thread(Sandbox.create)
    started = threading.Event()
    outcome: dict[str, object] = {}

    def run() -> None:
        t0 = time.monotonic()
        try:
            outcome["result"] = sbx.commands.run("echo started; sleep 60; echo done", timeout=120,
                                                 on_stdout=lambda _: started.set())
        except Exception as e:  # noqa: BLE001 - the test inspects it
            outcome["error"] = e
        outcome["seconds"] = time.monotonic() - t0

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    assert await asyncio.to_thread(started.wait, 30), outcome
    killed_at = time.monotonic()
    await routes.delete(sid)  # killed: the master deletes the route (then kills the VM)
    await asyncio.to_thread(worker.join, 30)
    assert not worker.is_alive(), f"the command's stream did not end after the kill:\n{proxy.log_tail()}"
    err = outcome.get("error")
    assert isinstance(err, SandboxNotRunningException), outcome
    assert "killed or reached its end of life" in str(err), err
    assert time.monotonic() - killed_at < 15
    # The guest itself was not harmed by the reset (a kill takes it down, not the proxy): a
    # sandbox routed to it again gets answers.
    sid2 = new_id()
    await routes.put(sid2, host=ENVD_HOST)
    fake_api["ids"].append(sid2)
    again = await asyncio.to_thread(Sandbox.create)
    assert (await asyncio.to_thread(again.commands.run, "echo ok")).stdout == "ok\n"
    await routes.delete(sid2)
