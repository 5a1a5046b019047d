"""api.<domain>: E2B's volume content calls (/volumecontent/...) go on to cube-api, here a stand-in
HTTP server on loopback (the API is not what is under test); other paths there get a JSON 404.

A proxy of its own points --api-upstream at the stand-in; the shared proxy has the route off."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import ssl
import threading
import uuid
from collections.abc import Iterator

import httpx
import pytest

from testkit.proxy import Proxy
from tests.proxy.conftest import DOMAIN, Routes, http_request, new_id, tls_client

pytestmark = pytest.mark.timeout(180)

API_HOST = f"api.{DOMAIN}"
MiB = 1 << 20
# Upload and download waits: the other side must have seen the first MiB before the rest is sent.
STREAM_WAIT_S = 10.0


class StandInApi(http.server.ThreadingHTTPServer):
    """Records each request (method, raw target, headers, body size and digest, chunked or not).

    /volumecontent/<id>/file?stream=down: 8 MiB in two writes, the second only once the test says
    the client got the first (`client_got_first`). A request whose path has /reset/ is dropped
    unanswered. Anything else: the JSON of what came in."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.port = self.server_address[1]
        self.requests: list[dict] = []
        self.got_first = threading.Event()  # the first upload bytes arrived
        self.client_got_first = threading.Event()  # set by the test during a download

    def last(self) -> dict:
        assert self.requests, "the stand-in API got no request"
        return self.requests[-1]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: StandInApi

    def log_message(self, *args) -> None:
        pass

    def _body(self) -> Iterator[bytes]:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                yield self.rfile.read(size)
                self.rfile.readline()
        left = int(self.headers.get("content-length") or 0)
        while left:
            chunk = self.rfile.read(min(left, 256 * 1024))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk

    def _handle(self) -> None:
        if "/reset/" in self.path:
            self.close_connection = True
            return
        digest, size = hashlib.sha256(), 0
        for chunk in self._body():
            digest.update(chunk)
            size += len(chunk)
            self.server.got_first.set()
        record = {"method": self.command, "target": self.path, "bytes": size, "sha256": digest.hexdigest(),
                  "headers": {k.lower(): v for k, v in self.headers.items()},
                  "chunked": self.headers.get("transfer-encoding", "").lower() == "chunked"}
        self.server.requests.append(record)
        if "stream=down" in self.path:
            self.send_response(200)
            self.send_header("content-type", "application/octet-stream")
            self.send_header("content-length", str(8 * MiB))
            self.end_headers()
            self.wfile.write(PATTERN)
            self.wfile.flush()
            if not self.server.client_got_first.wait(STREAM_WAIT_S):
                self.close_connection = True  # buffered by the proxy: the client gets a short body
                return
            self.wfile.write(PATTERN * 7)
            return
        body = httpx.Response(200, json=record).content
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = _handle


PATTERN = os.urandom(MiB)


@pytest.fixture(scope="module")
def api() -> Iterator[StandInApi]:
    server = StandInApi()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(scope="module")
def api_proxy(etcd_server, api) -> Iterator[Proxy]:
    with Proxy(etcd_server.endpoint, prefix=f"/t-proxy-api-{uuid.uuid4().hex[:8]}",
               api_upstream=f"127.0.0.1:{api.port}").running() as p:
        yield p


def tls_request(client: httpx.Client, proxy: Proxy, method: str, path: str, host: str = API_HOST,
                **kw) -> httpx.Response:
    """To the HTTPS listener with SNI api.<domain> and `host` as the Host (:authority on h2)."""
    headers = {"Host": host, **kw.pop("headers", {})}
    return client.request(method, f"https://127.0.0.1:{proxy.https_port}{path}", headers=headers,
                          extensions={"sni_hostname": API_HOST}, **kw)


@pytest.mark.parametrize("transport", ["plain", "tls-http1.1", "tls-h2"])
def test_volume_content_reaches_the_api_intact(api_proxy, api, transport):
    body = os.urandom(6 * MiB + 123)
    path = "/volumecontent/vol-1/file?path=%2Fdata%2Fa%20b.bin&username=user"
    headers = {"Authorization": "Bearer vtok-123", "Content-Type": "application/octet-stream"}
    if transport == "plain":
        r = http_request(api_proxy, "PUT", path, host=API_HOST, headers=headers, content=body)
    else:
        with tls_client(api_proxy, http2=transport == "tls-h2") as c:
            r = tls_request(c, api_proxy, "PUT", path, headers=headers, content=body)
            assert r.http_version == ("HTTP/2" if transport == "tls-h2" else "HTTP/1.1")
    assert r.status_code == 200, r.text
    got = api.last()
    assert got == r.json()
    assert got["method"] == "PUT" and got["target"] == path  # path and query untouched
    assert got["headers"]["authorization"] == "Bearer vtok-123"
    assert got["headers"]["host"] == API_HOST
    assert got["bytes"] == len(body) and got["sha256"] == hashlib.sha256(body).hexdigest()
    # No internal header reaches the API.
    assert not [h for h in got["headers"] if h.startswith("x-cube-")]


def test_uploads_and_downloads_are_streamed(api_proxy, api):
    """Neither body is buffered: the API sees the first MiB of an upload before the client sends
    the rest, and the client the first MiB of a download before the API sends the rest."""
    api.got_first.clear()
    first, rest = os.urandom(MiB), os.urandom(7 * MiB)

    def chunks() -> Iterator[bytes]:
        yield first
        assert api.got_first.wait(STREAM_WAIT_S), "the upload was held back by the proxy"
        yield rest

    r = http_request(api_proxy, "POST", "/volumecontent/vol-1/file?path=big", host=API_HOST,
                     headers={"Authorization": "Bearer t"}, content=chunks())
    assert r.status_code == 200, r.text
    got = api.last()
    assert got["chunked"] and got["bytes"] == 8 * MiB
    assert got["sha256"] == hashlib.sha256(first + rest).hexdigest()

    api.client_got_first.clear()
    received = bytearray()
    with httpx.Client(timeout=30) as c, c.stream(
            "GET", api_proxy.http_url + "/volumecontent/vol-1/file?path=big&stream=down",
            headers={"Host": API_HOST, "Authorization": "Bearer t"}) as resp:
        assert resp.status_code == 200
        for chunk in resp.iter_bytes():
            received += chunk
            if len(received) >= MiB:
                api.client_got_first.set()
    assert bytes(received) == PATTERN * 8


@pytest.mark.parametrize("host", [f"{API_HOST}:443", "API.Cube.Localhost", f"Api.{DOMAIN}:3002"])
def test_api_host_with_a_port_and_any_case(api_proxy, api, host):
    r = http_request(api_proxy, "GET", "/volumecontent/vol-2/dir?path=%2F", host=host,
                     headers={"Authorization": "Bearer x"})
    assert r.status_code == 200, r.text
    assert api.last()["target"] == "/volumecontent/vol-2/dir?path=%2F"
    with tls_client(api_proxy, http2=True) as c:  # what the SDK sends: https://api.<domain>, port 443
        r = tls_request(c, api_proxy, "GET", "/volumecontent/vol-2/path?path=%2Fx", host=host)
        assert r.status_code == 200, r.text
        assert api.last()["target"] == "/volumecontent/vol-2/path?path=%2Fx"


def raw_get(proxy: Proxy, path: str, host: str = API_HOST) -> tuple[int, dict[str, str], bytes]:
    """A GET with the request target exactly as given (HTTP clients remove dot segments)."""
    with socket.create_connection(("127.0.0.1", proxy.http_port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data and (chunk := s.recv(65536)):
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *lines = head.decode().split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        while len(body) < int(headers.get("content-length", 0)) and (chunk := s.recv(65536)):
            body += chunk
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize("path", ["/", "/health", "/sandboxes", "/volumes/vol-1", "/volumecontent",
                                  "/volumecontent/", "/volumecontentx/a", "/volumecontent/../sandboxes",
                                  "/volumecontent/%2e%2e/sandboxes", "/volumecontent/a/./b",
                                  "/volumecontent/a/..", "//volumecontent/a/%2E%2E/%2e%2e/v2/sandboxes"])
def test_other_paths_on_the_api_host_are_404(api_proxy, api, path):
    before = len(api.requests)
    status, headers, raw = raw_get(api_proxy, path)
    assert status == 404, raw
    assert headers["content-type"] == "application/json"
    body = json.loads(raw)
    assert body["code"] == 404 and isinstance(body["message"], str) and set(body) == {"code", "message"}
    assert len(api.requests) == before  # never reached the API


def test_api_unreachable_is_a_json_502(api_proxy, api):
    r = http_request(api_proxy, "GET", "/volumecontent/reset/dir", host=API_HOST)
    assert r.status_code == 502
    assert r.json() == {"code": 502, "message": "The Cube API is unreachable"}


async def test_sandboxes_route_as_before_on_the_same_proxy(api_proxy, api, etcd_client, upstreams):
    routes = Routes(etcd_client, api_proxy.prefix)
    up = upstreams[0]
    sid = new_id()
    await routes.put(sid, host=up.host)
    before = len(api.requests)
    r = http_request(api_proxy, "GET", "/echo?x=1", host=f"{up.port}-{sid}.{DOMAIN}")
    assert r.status_code == 200 and r.json()["me"] == f"{up.host}:{up.port}" and r.json()["path"] == "/echo?x=1"
    # The sandbox headers take precedence over the Host, api.<domain> included.
    r = http_request(api_proxy, "GET", "/volumecontent/x/dir", host=API_HOST,
                     headers={"E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": str(up.port)})
    assert r.status_code == 200 and r.json()["me"] == f"{up.host}:{up.port}"
    assert r.json()["host"] == API_HOST
    # A sandbox map entry cannot be reached by naming the API's: the id is not a sandbox id.
    r = http_request(api_proxy, "GET", "/volumecontent/x/dir", headers={"E2b-Sandbox-Id": "@api",
                                                                         "E2b-Sandbox-Port": "80"})
    assert r.status_code == 400
    # Another host under the domain is still not the API.
    r = http_request(api_proxy, "GET", "/volumecontent/x/dir", host=f"apix.{DOMAIN}")
    assert r.status_code == 400
    assert len(api.requests) == before
    # Sandboxes coming and going leave the API's route alone.
    await routes.delete(sid)
    r = http_request(api_proxy, "GET", "/volumecontent/vol-3/dir", host=API_HOST)
    assert r.status_code == 200 and api.last()["target"] == "/volumecontent/vol-3/dir"


def test_route_off_answers_404(proxy):
    """The shared proxy runs with --api-upstream '': api.<domain> is 404 whatever the path."""
    for path in ("/volumecontent/vol-1/dir?path=%2F", "/"):
        r = http_request(proxy, "GET", path, host=API_HOST, headers={"Authorization": "Bearer x"})
        assert r.status_code == 404 and r.json()["code"] == 404
    ctx = ssl.create_default_context(cafile=proxy.ca)
    with httpx.Client(verify=ctx, timeout=30) as c:
        r = tls_request(c, proxy, "GET", "/volumecontent/vol-1/dir")
        assert r.status_code == 404 and r.json()["code"] == 404
