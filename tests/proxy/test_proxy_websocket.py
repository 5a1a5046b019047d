"""WebSockets to sandbox ports through a real Envoy, as E2B's proxy carries them (Jupyter, Chrome
DevTools on 9222, ...): HTTP/1.1 upgrades over both listeners and HTTP/2 extended CONNECT
(RFC 8441) reach a real WebSocket server and echo text and binary messages; the guest sees the
Host as sent, or its mask; an upgrade passes the traffic token check like any request; an unknown
sandbox gets the proxy's JSON 502; the hop to another node's proxy carries it too; and an upgrade
to a paused autoResume sandbox gets a prompt HTTP answer (it cannot be replayed by Envoy)."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
from google.protobuf import json_format
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side, State

from cube_common.keys import Keys
from cube_common.route_ack import wait_routes_applied
from sdk.gen.cube.v1 import master_pb2, master_pb2_grpc, route_pb2
from services.proxy import xds
from testkit.ports import free_port
from testkit.proxy import Proxy
from tests.proxy.conftest import DOMAIN, Routes, http_request, new_id

pytestmark = pytest.mark.timeout(120)

GUEST = "127.0.0.2"  # a loopback address of the harness's guests
MESSAGES: list[str | bytes] = ["hello", b"\x00\x01\xfe\xff" * 300, "x" * 70000, b"", "last"]


def host(port: int, sid: str) -> str:
    return f"{port}-{sid}.{DOMAIN}"


@dataclass
class Guest:
    """A WebSocket echo server standing in for a guest's port; records each handshake's headers."""

    port: int
    handshakes: list[dict[str, str]] = field(default_factory=list)

    async def handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        self.handshakes.append({k.lower(): v for k, v in ws.request.headers.raw_items()}
                               | {":path": ws.request.path})
        async for message in ws:
            await ws.send(message)


@pytest.fixture
async def guest() -> AsyncIterator[Guest]:
    g = Guest(free_port(GUEST))
    async with serve(g.handle, GUEST, g.port, max_size=None, compression=None):
        yield g


def _tls(proxy: Proxy, alpn: str = "http/1.1") -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=proxy.ca)
    ctx.set_alpn_protocols([alpn])
    return ctx


def ws_connect(proxy: Proxy, authority: str, path: str = "/ws", tls: bool = True, **kw) -> connect:
    """Like `--resolve`: TCP to the proxy on loopback, Host (and SNI) `authority`."""
    if tls:
        return connect(f"wss://{authority}{path}", host="127.0.0.1", port=proxy.https_port, ssl=_tls(proxy),
                       proxy=None, open_timeout=15, max_size=None, compression=None, **kw)
    return connect(f"ws://{authority}{path}", host="127.0.0.1", port=proxy.http_port,
                   proxy=None, open_timeout=15, max_size=None, compression=None, **kw)


async def echo_all(ws: ClientConnection) -> None:
    for m in MESSAGES:
        await ws.send(m)
    assert [await ws.recv() for _ in MESSAGES] == MESSAGES  # text stays str, binary bytes


async def refused(cm: connect) -> InvalidStatus:
    with pytest.raises(InvalidStatus) as e:
        async with cm:
            pass
    return e.value


# ---- HTTP/1.1 upgrades --------------------------------------------------------------------------

@pytest.mark.parametrize("tls", [True, False], ids=["https", "http"])
async def test_echo_through_the_proxy(proxy, routes, guest, tls):
    sid = new_id()
    await routes.put(sid, host=GUEST)
    h = host(guest.port, sid)
    async with ws_connect(proxy, h, "/ws?token=q", tls=tls) as ws:
        await echo_all(ws)
    [seen] = guest.handshakes
    assert seen["host"] == h  # as the client sent it (default port: none in the Host)
    assert seen[":path"] == "/ws?token=q" and seen["upgrade"].lower() == "websocket"
    assert "x-cube-sandbox" not in seen and "x-cube-port" not in seen and "x-forwarded-host" not in seen


async def test_header_routing(proxy, routes, guest):
    """E2B_SANDBOX_URL clients name the sandbox in headers; any Host."""
    sid = new_id()
    await routes.put(sid, host=GUEST)
    headers = {"E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": str(guest.port)}
    async with ws_connect(proxy, "proxy.example", tls=False, additional_headers=headers) as ws:
        await echo_all(ws)
    assert guest.handshakes[0]["host"] == "proxy.example"


async def test_masked_host(proxy, routes, guest):
    sid = new_id()
    await routes.put(sid, host=GUEST, mask="localhost:${PORT}")
    h = host(guest.port, sid)
    async with ws_connect(proxy, h) as ws:
        await echo_all(ws)
    [seen] = guest.handshakes
    assert seen["host"] == f"localhost:{guest.port}"
    assert seen["x-forwarded-host"] == h


async def test_traffic_access_token(proxy, routes, guest):
    sid = new_id()
    await routes.put(sid, host=GUEST, token="tok-ws")
    h = host(guest.port, sid)
    plain = http_request(proxy, "GET", "/ws", host=h)
    assert plain.status_code == 401
    for headers, status in [({}, 401), ({"E2B-Traffic-Access-Token": "wrong"}, 403)]:
        e = await refused(ws_connect(proxy, h, additional_headers=headers))
        assert e.response.status_code == status
        body = json.loads(e.response.body or b"")
        assert body["code"] == status and body["sandboxId"] == sid
    assert guest.handshakes == []
    async with ws_connect(proxy, h, additional_headers={"e2b-traffic-access-token": "tok-ws"}) as ws:
        await echo_all(ws)
    assert len(guest.handshakes) == 1


async def test_unknown_sandbox_gets_the_json_502(proxy):
    sid = new_id()
    e = await refused(ws_connect(proxy, host(3000, sid)))
    assert e.response.status_code == 502
    assert e.response.headers["content-type"] == "application/json"
    body = json.loads(e.response.body or b"")
    assert body["sandboxId"] == sid and "was not found" in body["message"]


async def test_closed_port_gets_the_json_502(proxy, routes):
    sid = new_id()
    await routes.put(sid, host="127.0.0.4")  # nothing listens on 127.0.0.4
    e = await refused(ws_connect(proxy, host(9222, sid)))
    assert e.response.status_code == 502
    assert json.loads(e.response.body or b"")["message"] == "The sandbox is running but port is not open"


# ---- HTTP/2 extended CONNECT (RFC 8441) ---------------------------------------------------------

async def _h2_websocket(proxy: Proxy, authority: str, headers: list[tuple[str, str]]) -> tuple[int, list]:
    """Opens a WebSocket over HTTP/2 with extended CONNECT; returns the status and, when it is 200,
    the echoed messages (websockets' sans-I/O protocol frames them; h2 carries them)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.https_port, ssl=_tls(proxy, "h2"),
                                                   server_hostname=authority.split(":")[0])
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    writer.write(conn.data_to_send())

    async def events() -> list[h2.events.Event]:
        data = await asyncio.wait_for(reader.read(65536), 15)
        assert data, "the proxy closed the connection"
        out = conn.receive_data(data)
        writer.write(conn.data_to_send())
        return out

    try:
        while not any(isinstance(e, h2.events.RemoteSettingsChanged) for e in await events()):
            pass
        # Without allow_connect Envoy does not offer extended CONNECT.
        assert conn.remote_settings.enable_connect_protocol == 1
        conn.send_headers(1, [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https"),
                              (":path", "/ws"), (":authority", authority), ("sec-websocket-version", "13"),
                              *headers])
        writer.write(conn.data_to_send())
        status = 0
        while not status:
            for e in await events():
                if isinstance(e, h2.events.ResponseReceived):
                    status = int(dict(e.headers)[b":status"])
        if status != 200:
            return status, []
        ws = Protocol(Side.CLIENT, state=State.OPEN, max_size=None)
        for m in MESSAGES:
            ws.send_text(m.encode()) if isinstance(m, str) else ws.send_binary(m)
        out = b"".join(ws.data_to_send())
        while out:  # in frames and windows h2 allows
            n = min(len(out), conn.local_flow_control_window(1), conn.max_outbound_frame_size)
            if n == 0:
                await events()  # wait for a WINDOW_UPDATE
                continue
            conn.send_data(1, out[:n])
            writer.write(conn.data_to_send())
            out = out[n:]
        got: list = []
        while len(got) < len(MESSAGES):
            for e in await events():
                if isinstance(e, h2.events.DataReceived):
                    conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
                    ws.receive_data(e.data)
            for f in ws.events_received():
                assert isinstance(f, Frame)
                got.append(bytes(f.data).decode() if f.opcode is Opcode.TEXT else bytes(f.data))
            writer.write(conn.data_to_send())
        return status, got
    finally:
        writer.close()


async def test_http2_extended_connect(proxy, routes, guest):
    sid = new_id()
    await routes.put(sid, host=GUEST, token="tok-h2")
    h = host(guest.port, sid)
    assert await _h2_websocket(proxy, h, []) == (401, [])
    assert await _h2_websocket(proxy, h, [("e2b-traffic-access-token", "tok-h2")]) == (200, MESSAGES)
    [seen] = guest.handshakes  # an HTTP/1.1 upgrade toward the guest
    assert seen["host"] == h and seen["upgrade"].lower() == "websocket" and seen[":path"] == "/ws"
    assert seen["sec-websocket-key"] == xds.WS_KEY  # the proxy's: an HTTP/2 client sends none


# ---- through another node's proxy ---------------------------------------------------------------

async def test_remote_hop(etcd_server, etcd_client, guest):
    """Node A's proxy → node B's plain listener → the guest, token checked on both."""
    prefix = f"/t-proxy-{new_id()}"
    routes = Routes(etcd_client, prefix)
    a = Proxy(etcd_server.endpoint, prefix, node_id="node-wa")
    b = Proxy(etcd_server.endpoint, prefix, node_id="node-wb")
    try:
        a.start()
        b.start()
        sid = new_id()
        rev = await routes.put(sid, host=GUEST, node_id="node-wb", node_proxy_address=f"127.0.0.1:{b.http_port}",
                               token="t0k", mask="localhost:${PORT}", wait=False)
        assert set(await wait_routes_applied(etcd_client, Keys(prefix), rev, timeout=10)) == {"node-wa", "node-wb"}
        h = host(guest.port, sid)
        assert (await refused(ws_connect(a, h))).response.status_code == 401
        async with ws_connect(a, h, additional_headers={"E2B-Traffic-Access-Token": "t0k"}) as ws:
            await echo_all(ws)
        [seen] = guest.handshakes
        # B, the owning node, masks; A kept the client's Host for it.
        assert seen["host"] == f"localhost:{guest.port}" and seen["x-forwarded-host"] == h
        assert "e2b-sandbox-id" in seen  # A's hop names the sandbox in headers
    finally:
        a.destroy()
        b.destroy()


# ---- paused autoResume sandboxes ----------------------------------------------------------------

class _Master(master_pb2_grpc.MasterServicer):
    """The two calls the resumer makes: resuming puts the running route, as the master does."""

    def __init__(self, routes: Routes, guest_host: str) -> None:
        self.routes, self.guest_host, self.resumed = routes, guest_host, 0

    async def GetSandbox(self, request, context):
        return master_pb2.Sandbox(sandbox_id=request.sandbox_id, auto_resume=True, timeout_s=60)

    async def ConnectSandbox(self, request, context):
        self.resumed += 1
        await self.routes.put(request.sandbox_id, host=self.guest_host)
        return master_pb2.ConnectSandboxResponse()


async def test_paused_auto_resume_sandbox(etcd_server, etcd_client, guest):
    prefix = f"/t-proxy-{new_id()}"
    routes = Routes(etcd_client, prefix)
    master = _Master(routes, GUEST)
    server = grpc.aio.server()
    master_pb2_grpc.add_MasterServicer_to_server(master, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    p = Proxy(etcd_server.endpoint, prefix, node_id="node-wr", master=f"127.0.0.1:{port}")
    try:
        await asyncio.to_thread(p.start)
        sid = new_id()
        paused = route_pb2.SandboxRoute(sandbox_id=sid, state=route_pb2.ROUTE_STATE_PAUSED, auto_resume=True)
        await routes.put_raw(sid, json_format.MessageToJson(paused).encode())
        h = host(guest.port, sid)
        # Envoy replays only complete requests, and an upgrade's body is the WebSocket itself: the
        # resumer's 307 (sent once the sandbox runs) reaches the client, at once, instead.
        upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                   "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
        r = await asyncio.to_thread(http_request, p, "GET", "/ws?a=1", host=h, headers=upgrade)
        assert r.status_code == 307 and r.headers["location"] == f"http://{h}/ws?a=1"
        assert master.resumed == 1 and guest.handshakes == []
        async with ws_connect(p, h, tls=False) as ws:  # the retry connects
            await echo_all(ws)
        # The same over HTTP/2 (extended CONNECT).
        await routes.put_raw(sid, json_format.MessageToJson(paused).encode())
        assert await _h2_websocket(p, h, []) == (307, [])
        assert master.resumed == 2
        assert await _h2_websocket(p, h, []) == (200, MESSAGES)
    finally:
        p.destroy()
        await server.stop(None)
