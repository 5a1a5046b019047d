"""Bodies pass through whole and unbuffered: NDJSON and Connect server streams (the real envd),
chunked uploads, a 100 MB download."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import time

import pytest

from testkit.upstream import PATTERN
from tests.proxy.conftest import DOMAIN, ENVD_HOST, http_request, https_request, new_id, tls_client

pytestmark = pytest.mark.timeout(180)


def envelope(msg: dict, flags: int = 0) -> bytes:
    data = json.dumps(msg).encode()
    return struct.pack(">BI", flags, len(data)) + data


class EnvelopeReader:
    def __init__(self):
        self.buf = b""

    def feed(self, chunk: bytes) -> list[tuple[int, dict]]:
        self.buf += chunk
        out = []
        while len(self.buf) >= 5:
            flags, n = struct.unpack(">BI", self.buf[:5])
            if len(self.buf) < 5 + n:
                break
            out.append((flags, json.loads(self.buf[5:5 + n])))
            self.buf = self.buf[5 + n:]
        return out


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "h2"])
async def test_ndjson_stream_is_not_buffered(proxy, upstreams, routes, http2):
    up = upstreams[0]
    sid = new_id()
    await routes.put(sid, host=up.host)
    with tls_client(proxy, http2=http2) as c:
        host = f"{up.port}-{sid}.{DOMAIN}"
        t0 = time.monotonic()
        arrivals = []
        with c.stream("GET", f"https://127.0.0.1:{proxy.https_port}/ndjson?n=3&gap=1.0",
                      headers={"Host": host}, extensions={"sni_hostname": host}) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line:
                    arrivals.append((json.loads(line)["i"], time.monotonic() - t0))
    assert [i for i, _ in arrivals] == [0, 1, 2]
    # Line 0 is sent at once and line 2 two seconds later: each must arrive when it is sent.
    assert arrivals[0][1] < 0.8, arrivals
    assert arrivals[1][1] < 1.8, arrivals
    assert arrivals[2][1] >= 1.9, arrivals


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "h2"])
async def test_envd_connect_server_stream(proxy, routes, envd_agent, http2):
    """/process.Process/Start against the real guest agent: events arrive while the process runs."""
    sid = new_id()
    await routes.put(sid, host=ENVD_HOST)
    host = f"{envd_agent.envd_port}-{sid}.{DOMAIN}"
    body = envelope({"process": {"cmd": "/bin/sh", "args": ["-c", "echo one; sleep 2; echo two"]}})
    headers = {"Content-Type": "application/connect+json", "Connect-Protocol-Version": "1",
               "E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": str(envd_agent.envd_port), "Host": host}

    def chunked_body():
        yield body  # a generator: sent with Transfer-Encoding: chunked over HTTP/1.1, like the SDK

    reader = EnvelopeReader()
    events = []
    with tls_client(proxy, http2=http2) as c:
        t0 = time.monotonic()
        with c.stream("POST", f"https://127.0.0.1:{proxy.https_port}/process.Process/Start", content=chunked_body(),
                      headers=headers, extensions={"sni_hostname": host}) as r:
            assert r.status_code == 200, r.read()
            assert r.headers["content-type"] == "application/connect+json"
            for chunk in r.iter_raw():
                for flags, msg in reader.feed(chunk):
                    events.append((time.monotonic() - t0, flags, msg))
    stdout = [(t, base64.b64decode(m["event"]["data"]["stdout"])) for t, f, m in events
              if "data" in m.get("event", {}) and "stdout" in m["event"]["data"]]
    assert [s for _, s in stdout] == [b"one\n", b"two\n"], events
    assert stdout[0][0] < 1.5, "the first output must arrive before the process ends"
    assert stdout[1][0] >= 1.9
    assert events[-1][1] == 2  # end-of-stream envelope


async def test_envd_health_and_files_through_proxy(proxy, routes, envd_agent):
    sid = new_id()
    await routes.put(sid, host=ENVD_HOST)
    with tls_client(proxy) as c:
        r = https_request(c, proxy, "GET", f"{envd_agent.envd_port}-{sid}.{DOMAIN}", "/health")
        assert r.status_code == 204


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "h2"])
async def test_chunked_upload(proxy, upstreams, routes, http2):
    up = upstreams[1]
    sid = new_id()
    await routes.put(sid, host=up.host)
    size = 24 * 1024 * 1024
    h = hashlib.sha256()

    def gen():
        block = bytes(range(256)) * 1024 * 4  # 1 MiB
        for _ in range(size // len(block)):
            h.update(block)
            yield block

    with tls_client(proxy, http2=http2) as c:
        r = https_request(c, proxy, "POST", f"{up.port}-{sid}.{DOMAIN}", "/upload", content=gen())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["bytes"] == size and body["sha256"] == h.hexdigest()
    if not http2:
        assert body["chunked"]  # passed on as chunked, not buffered into a Content-Length


async def test_plain_http_chunked_upload(proxy, upstreams, routes):
    up = upstreams[0]
    sid = new_id()
    await routes.put(sid, host=up.host)
    chunks = [b"a" * 1000, b"b" * 5, b"c" * 70000]
    r = http_request(proxy, "POST", "/upload", content=iter(chunks),
                     headers={"E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": str(up.port)})
    assert r.json() == {"bytes": 71005, "sha256": hashlib.sha256(b"".join(chunks)).hexdigest(), "chunked": True}


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "h2"])
async def test_100mb_download(proxy, upstreams, routes, http2):
    up = upstreams[0]
    sid = new_id()
    await routes.put(sid, host=up.host)
    mb = 100
    expected = hashlib.sha256()
    for _ in range(mb):
        expected.update(PATTERN)
    got = hashlib.sha256()
    n = 0
    first_byte = None
    with tls_client(proxy, http2=http2) as c:
        host = f"{up.port}-{sid}.{DOMAIN}"
        t0 = time.monotonic()
        with c.stream("GET", f"https://127.0.0.1:{proxy.https_port}/download?mb={mb}",
                      headers={"Host": host}, extensions={"sni_hostname": host}) as r:
            assert r.status_code == 200
            assert int(r.headers["content-length"]) == mb * len(PATTERN)
            for chunk in r.iter_raw():
                if first_byte is None:
                    first_byte = time.monotonic() - t0
                got.update(chunk)
                n += len(chunk)
        total = time.monotonic() - t0
    assert n == mb * len(PATTERN) and got.hexdigest() == expected.hexdigest()
    assert first_byte is not None and first_byte < total / 2  # streamed, not collected first
