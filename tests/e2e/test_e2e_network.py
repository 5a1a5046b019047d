"""CubeVS with real sandboxes (microVMs on the node): isolation and network options end to end.

Only destinations on this machine are probed (another sandbox, the node's own addresses), so no
packet can leave the machine even if isolation were broken.
"""
from __future__ import annotations

import os
import ssl
import subprocess
import time

import httpx
import pytest

from tests.e2e import cluster

PROBE = """
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket()
s.settimeout(3)
try:
    s.connect((host, port))
    print("CONNECTED")
except OSError as e:
    print("BLOCKED", type(e).__name__)
"""


def _node_addresses() -> list[str]:
    """The node's own IPv4 addresses other than loopback (where an operator may expose its services)."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout
    addrs = []
    for line in out.splitlines():
        addr = line.split()[3].split("/")[0]
        if not addr.startswith("127."):
            addrs.append(addr)
    return addrs


def _probe(sbx, host: str, port: int) -> str:
    sbx.files.write("/tmp/probe.py", PROBE)
    return sbx.commands.run(f"python3 /tmp/probe.py {host} {port}", timeout=30).stdout.strip()


def _host_address(sandbox_id: str) -> str:
    route = cluster.etcd_routes()[sandbox_id]
    return route["hostAddress"]


def test_sandboxes_cannot_reach_each_other_or_the_node(sandboxes):
    a = sandboxes.create()
    b = sandboxes.create()
    # B serves something on port 8000, which the proxy can reach...
    b.commands.run("python3 -m http.server 8000 --bind 0.0.0.0", background=True)
    url = f"https://{b.get_host(8000)}/"
    tls = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    last = ""
    deadline = time.monotonic() + 60
    while True:
        try:
            r = httpx.get(url, verify=tls, timeout=5)
            if r.status_code == 200:
                break
            last = f"{r.status_code} {r.text[:200]}"
        except httpx.HTTPError as e:
            last = repr(e)
        if time.monotonic() > deadline:
            pytest.fail(f"the proxy never reached sandbox B's port 8000: {last}")
        time.sleep(0.5)
    # ...but sandbox A cannot, neither at B's node-local address nor at the guest address they share.
    b_addr = _host_address(b.sandbox_id)
    assert _probe(a, b_addr, 8000).startswith("BLOCKED")
    assert _probe(a, b_addr, 49983).startswith("BLOCKED")
    # The node's services (API :3000, proxy :3002, master, cubelet) are unreachable from a sandbox,
    # at every address of the node and at the proxy's own source address.
    proxy_source = cluster.etcd_routes()[a.sandbox_id]["proxySourceAddress"]
    for addr in _node_addresses() + [proxy_source, "169.254.0.22"]:
        for port in (3000, 3002, 2379):
            result = _probe(a, addr, port)
            assert result.startswith("BLOCKED"), f"sandbox reached {addr}:{port} ({result})"


def test_network_options_are_carried_and_reported(sandboxes, api):
    sbx = sandboxes.create(allow_internet_access=False)
    info = api.get(f"/sandboxes/{sbx.sandbox_id}").json()
    assert info.get("allowInternetAccess") is False
    # The policy reached CubeVS: the node's view (cube-vs state) has internet access off.
    state = cluster.etcd_sandboxes()[sbx.sandbox_id]
    network = state.get("network") or {}
    assert network.get("allowInternetAccess") is False


def test_bad_network_options_are_refused(api):
    r = api.post("/v2/sandboxes", json={"templateID": "base", "metadata": {}, "envVars": {},
                                        "network": {"allowOut": ["not-a-cidr/99"]}})
    assert r.status_code == 400, r.text
    body = r.json()
    assert (body["code"] == 400 and "cidr" in body["message"].lower()) or "not-a-cidr" in body["message"]


def test_private_traffic_needs_the_sandbox_s_token(sandboxes):
    """`network={"allow_public_traffic": False}`: the create answers a traffic access token, the
    SDK sends it on its own calls (run_code goes to port 49999), and the proxy asks every other
    client for it on every port but envd's: none → 401, another → 403. A fork keeps the rule with a
    token of its own."""
    sbx = sandboxes.create({"case": "private-traffic"}, network={"allow_public_traffic": False})
    token = sbx.traffic_access_token
    assert token and len(token) >= 32
    assert sbx.run_code("6 * 7").text == "42"  # the code interpreter's port, with the SDK's header
    assert sbx.commands.run("echo envd").stdout.strip() == "envd"  # envd's port needs no traffic token
    sbx.commands.run("python3 -m http.server 8000 --bind 0.0.0.0", background=True)
    url = f"https://{sbx.get_host(8000)}/"
    tls = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    deadline = time.monotonic() + 60
    while True:
        try:
            r = httpx.get(url, verify=tls, timeout=5, headers={"e2b-traffic-access-token": token})
            if r.status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the server in the sandbox never answered"
        time.sleep(0.5)
    r = httpx.get(url, verify=tls, timeout=5)
    assert r.status_code == 401 and "missing E2B-Traffic-Access-Token" in r.text, r.text
    r = httpx.get(url, verify=tls, timeout=5, headers={"e2b-traffic-access-token": "0" * 32})
    assert r.status_code == 403, r.text
    # Connecting again hands the same token to another client.
    from e2b_code_interpreter import Sandbox
    assert Sandbox.connect(sbx.sandbox_id).traffic_access_token == token
    (fork,) = sbx.fork(count=1)
    sandboxes.track(fork.sandbox_id)
    assert fork.traffic_access_token and fork.traffic_access_token != token
    assert fork.run_code("6 * 7").text == "42"


def test_update_network_changes_the_running_sandbox_s_policy(sandboxes):
    """`sbx.update_network(...)` (PUT /sandboxes/{id}/network) replaces the egress policy of a
    running sandbox in CubeVS's maps (what its datapath enforces: tests/vs), without a restart:
    the same VM answers before and after."""
    sbx = sandboxes.create({"case": "update-network"})
    vm_before = next(v for v in cluster.vms().values() if v.sandbox_id == sbx.sandbox_id)
    sbx.update_network({"deny_out": ["10.9.9.0/24"], "allow_out": ["10.9.9.9/32"]})
    alloc = cluster.vs_allocations()[cluster.cubelet_records()[sbx.sandbox_id]["vs_id"]]
    assert alloc["policy"]["deny_out"] == ["10.9.9.0/24"] and alloc["policy"]["allow_out"] == ["10.9.9.9/32"]
    info = sbx.get_info()
    assert info.network == {"allow_out": ["10.9.9.9/32"], "deny_out": ["10.9.9.0/24"]}
    sbx.update_network({"allow_internet_access": False})
    alloc = cluster.vs_allocations()[cluster.cubelet_records()[sbx.sandbox_id]["vs_id"]]
    assert alloc["policy"]["allow_internet_access"] is False and alloc["policy"]["deny_out"] == []
    assert sbx.get_info().allow_internet_access is False
    vm_after = next(v for v in cluster.vms().values() if v.sandbox_id == sbx.sandbox_id)
    assert vm_after.pid == vm_before.pid  # no restart
    assert sbx.commands.run("echo still here").stdout.strip() == "still here"


HOST_ECHO = """
import http.server, json
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"host": self.headers.get("Host"), "xfh": self.headers.get("X-Forwarded-Host")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", 8000), H).serve_forever()
"""


def _get_when_up(url: str, tls: ssl.SSLContext) -> httpx.Response:
    deadline = time.monotonic() + 60
    last = ""
    while True:
        try:
            r = httpx.get(url, verify=tls, timeout=5)
            if r.status_code == 200:
                return r
            last = f"{r.status_code} {r.text[:200]}"
        except httpx.HTTPError as e:
            last = repr(e)
        if time.monotonic() > deadline:
            pytest.fail(f"the server in the sandbox never answered: {last}")
        time.sleep(0.5)


def test_mask_request_host_is_the_host_the_guest_sees(sandboxes):
    """`network={"mask_request_host": "localhost:${PORT}"}`: a server in the sandbox gets the mask as
    its Host, `${PORT}` being the port it serves, and the public name in X-Forwarded-Host; envd's
    port keeps its Host (the SDK's own calls work), and so does a pause and a resume."""
    sbx = sandboxes.create({"case": "mask-request-host"}, network={"mask_request_host": "localhost:${PORT}"})
    sbx.files.write("/tmp/host_echo.py", HOST_ECHO)
    sbx.commands.run("python3 /tmp/host_echo.py", background=True)
    url = f"https://{sbx.get_host(8000)}/"
    tls = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    assert _get_when_up(url, tls).json() == {"host": "localhost:8000", "xfh": sbx.get_host(8000)}
    assert (sbx.get_info().network or {}).get("mask_request_host") == "localhost:${PORT}"
    assert sbx.pause() is True
    from e2b_code_interpreter import Sandbox
    resumed = Sandbox.connect(sbx.sandbox_id)
    assert _get_when_up(url, tls).json()["host"] == "localhost:8000"
    assert resumed.commands.run("echo envd").stdout.strip() == "envd"


TLS_SERVER = """
import http.server, json, ssl, sys, threading
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"port": self.server.server_address[1], "host": self.headers.get("Host")}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
tls.load_cert_chain("/tmp/tls/guest.pem", "/tmp/tls/guest.key")
def serve(port):
    srv = http.server.ThreadingHTTPServer(("0.0.0.0", port), H)
    srv.socket = tls.wrap_socket(srv.socket, server_side=True)
    srv.serve_forever()
threading.Thread(target=serve, args=(8444,), daemon=True).start()
serve(8443)
"""


def test_https_ports_reach_a_tls_server_in_the_sandbox(sandboxes, tmp_path):
    """`network={"https_ports": [8443]}`: a server in the sandbox that speaks HTTPS itself, with a
    self-signed certificate, answers through the sandbox's public URL on 8443; the same server on
    8444, not listed, gets the proxy's plain HTTP and the client a 502. A pause and a resume keep
    the setting."""
    from testkit.proxy import self_signed_cert

    cert, key = self_signed_cert(tmp_path)
    sbx = sandboxes.create({"case": "https-ports"}, network={"https_ports": [8443]})
    sbx.files.write("/tmp/tls/guest.pem", cert.read_text())
    sbx.files.write("/tmp/tls/guest.key", key.read_text())
    sbx.files.write("/tmp/tls_server.py", TLS_SERVER)
    sbx.commands.run("python3 /tmp/tls_server.py", background=True)
    tls = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    url = f"https://{sbx.get_host(8443)}/"
    assert _get_when_up(url, tls).json() == {"port": 8443, "host": sbx.get_host(8443)}
    assert (sbx.get_info().network or {}).get("https_ports") == [8443]
    # Up on 8444 too (the TLS hop would work), but not listed: the proxy speaks plain HTTP to it.
    probe = sbx.commands.run("python3 -c \"import socket; socket.create_connection(('127.0.0.1', 8444), 5)\"")
    assert probe.exit_code == 0
    r = httpx.get(f"https://{sbx.get_host(8444)}/", verify=tls, timeout=30)
    assert r.status_code == 502, r.text
    assert sbx.pause() is True
    from e2b_code_interpreter import Sandbox
    Sandbox.connect(sbx.sandbox_id)
    assert _get_when_up(url, tls).json()["port"] == 8443
