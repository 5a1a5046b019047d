"""Processes for the proxy tests and benchmark: CubeProxy itself and stand-in guest servers.

`Proxy` runs `python -m services.proxy` listening on 127.0.0.1 and [::1] only, with free ports and
its own temporary state directory, against an etcd the caller gives it; `Upstream` runs
`testkit.upstream` on a loopback address. Every process is started here and stopped by its
owner (fixtures use try/finally), by pid; `Proxy.destroy()` also removes the state directory.

Given `pki` (a `deploy.pki.Pki(root).node(...)` root), the proxy runs with internal mutual TLS:
its own directory `<pki>/proxy` (ADS server, master and etcd clients, so the etcd must serve the
same PKI: `testkit.etcd.EtcdServer(pki=...)`) and Envoy's `<pki>/envoy`.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf import json_format

from cube_common.mtls import Role
from cube_common.procs import stop_process
from sdk.gen.cube.v1 import route_pb2
from testkit import REPO
from testkit.ports import free_port, wait_port

ENV = dict(os.environ, PYTHONPATH=str(REPO), GRPC_ENABLE_FORK_SUPPORT="false")


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate and its key (PEM files in ``directory``) for a name no client would
    check, as a sandbox's own HTTPS server has."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "guest.invalid")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("192.0.2.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "guest.pem", directory / "guest.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


@dataclass
class Upstream:
    host: str
    port: int = field(default_factory=lambda: 0)
    proc: subprocess.Popen | None = None
    tls: tuple[Path, Path] | None = None  # (certificate, key), PEM: serve HTTPS

    def start(self) -> Upstream:
        if not self.port:
            self.port = free_port(self.host)
        cmd = [sys.executable, "-m", "testkit.upstream", self.host, str(self.port)]
        if self.tls is not None:
            cmd += [str(self.tls[0]), str(self.tls[1])]
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.host, self.port, proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 5)
        self.proc = None


@dataclass
class Proxy:
    etcd_endpoint: str
    prefix: str
    node_id: str = "node-a"
    proxy_id: str = ""
    state_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="cube-proxy-test-")))
    https_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    resumer_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    master: str = ""  # auto-resume off unless a test gives it a master to ask
    # cube-api for api.<domain>/volumecontent/...; off (404) unless a test gives it a stand-in, so a
    # test never reaches an API that happens to run on this machine's default port.
    api_upstream: str = ""
    pki: Path | None = None  # internal mutual TLS from this deploy.pki root (see the docstring)
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    log_path: Path = field(init=False)  # <state_dir>/proxy.log

    def __post_init__(self) -> None:
        self.proxy_id = self.proxy_id or self.node_id
        self.log_path = self.state_dir / "proxy.log"

    @property
    def ca(self) -> str:
        return str(self.state_dir / "tls" / "ca.pem")

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def ads_socket(self) -> Path:
        return self.state_dir / "proxy" / self.proxy_id / "ads.sock"

    @property
    def envoy_pid_file(self) -> Path:
        return self.state_dir / "proxy" / self.proxy_id / "envoy.pid"

    def envoy_pid(self) -> int:
        return int(self.envoy_pid_file.read_text())

    def start(self, timeout: float = 30.0) -> Proxy:
        cmd = [sys.executable, "-m", "services.proxy", "--domain", "cube.localhost",
               "--https", f"127.0.0.1:{self.https_port},[::1]:{self.https_port}",
               "--http", f"127.0.0.1:{self.http_port}", "--admin", f"127.0.0.1:{self.admin_port}",
               "--etcd", self.etcd_endpoint, "--etcd-prefix", self.prefix, "--node-id", self.node_id,
               "--proxy-id", self.proxy_id, "--state-dir", str(self.state_dir), "--lease-ttl", "5",
               "--concurrency", "2", "--access-log", "all", "--resumer", f"127.0.0.1:{self.resumer_port}",
               "--master", self.master, "--api-upstream", self.api_upstream,
               "--metrics-listen", f"127.0.0.1:{self.metrics_port}", *self.extra]
        if self.pki is not None:
            # deploy.pki.node_dirs's layout; testkit does not import deploy (docs/architecture.md).
            cmd += ["--mtls-dir", str(self.pki / Role.PROXY.value),
                    "--envoy-mtls-dir", str(self.pki / Role.ENVOY.value)]
        out = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=out, stderr=out)
        out.close()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Envoy up, initialised (first xDS answered) and listening."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"cube-proxy exited during startup:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/ready", timeout=1) as r:
                    if r.status == 200:
                        wait_port("127.0.0.1", self.http_port, 5)
                        wait_port("127.0.0.1", self.https_port, 5)
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"cube-proxy not ready in {timeout}s:\n{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-n:])
        except OSError:
            return ""

    def log_records(self) -> list[dict]:
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def kill9(self) -> int:
        """SIGKILL the Python process; returns the Envoy pid it had (which must die with it)."""
        if self.proc is None:
            raise RuntimeError("cube-proxy is not running")
        envoy = self.envoy_pid()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        return envoy

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 15)
        self.proc = None

    @contextlib.contextmanager
    def running(self) -> Iterator[Proxy]:
        """Started for the block, destroyed after; its log is printed when it died early."""
        try:
            yield self.start()
        finally:
            if self.proc is not None and self.proc.poll() is not None:
                print(f"\ncube-proxy exited early; log:\n{self.log_tail()}")
            self.destroy()

    def destroy(self) -> None:
        """Stop and remove the state dir (set CUBE_KEEP_TEST_STATE=1 to keep logs and TLS files)."""
        self.stop()
        if not os.environ.get("CUBE_KEEP_TEST_STATE"):
            shutil.rmtree(self.state_dir, ignore_errors=True)


def route_json(sandbox_id: str, host: str = "", state: route_pb2.RouteState = route_pb2.ROUTE_STATE_RUNNING,
               token: str = "", node_id: str = "", node_proxy_address: str = "", source: str = "",
               mask: str = "", https_ports: tuple[int, ...] = ()) -> bytes:
    msg = route_pb2.SandboxRoute(sandbox_id=sandbox_id, host_address=host, state=state,
                                 traffic_access_token=token, node_id=node_id,
                                 node_proxy_address=node_proxy_address, proxy_source_address=source,
                                 mask_request_host=mask, https_ports=https_ports)
    return json_format.MessageToJson(msg).encode()
