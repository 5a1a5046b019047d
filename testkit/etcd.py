"""A real etcd server (Debian's etcd-server) for tests and benchmarks, and its HTTP/JSON side.

One member on 127.0.0.1 only, with free client and peer ports and its own temporary data
directory (fsync off: the data is thrown away). `start()` returns once /health says true;
`destroy()` stops the process and removes the data directory.

With `pki` (a root made by `deploy.pki.Pki(root).node(...)`) etcd serves its clients as Cube's
node does: https only, presenting `<pki>/etcd`'s certificate, and requiring a client certificate
from the same CA (`--client-cert-auth`); `tls(role)` gives a client's material for `EtcdClient`.
The peer port stays plaintext: one member, on loopback, has no peers to protect.

`gateway()` is the one way tests reach etcd over HTTP (/health and the v3 JSON gateway): with TLS
material it presents that certificate and checks the server's name `etcd.cube.internal` whatever
address the URL names, as the gRPC clients do (cube_common/etcd.py).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from cube_common import mtls
from cube_common.mtls import Role, TlsFiles
from cube_common.procs import stop_process
from testkit.ports import free_port


def gateway_tls(tls: TlsFiles | None) -> tuple[Any, dict[str, str]]:
    """httpx's ``verify`` and the request ``extensions`` for etcd's gateway: with ``tls``, present
    that certificate, trust only its CA, and check etcd's role name. The certificate names the
    role, never an address (deploy/pki.py), so the URL's address is dialed and this name checked."""
    if tls is None:
        return True, {}
    return mtls.client_ssl_context(tls), {"sni_hostname": mtls.server_name(Role.ETCD)}


def gateway(url: str, path: str, body: Any = None, tls: TlsFiles | None = None, timeout: float = 5.0) -> Any:
    """GET (no ``body``) or POST ``body`` as JSON to ``url`` + ``path`` (etcd's ``/health``, its
    ``/v3/...`` gateway); the JSON answer. httpx errors (refused, handshake failed, HTTP status) go
    to the caller. ``url`` is https when ``tls`` is given."""
    verify, extensions = gateway_tls(tls)
    # trust_env off: no proxy from the environment between a test and its loopback etcd.
    with httpx.Client(verify=verify, timeout=timeout, trust_env=False) as client:
        r = client.request("GET" if body is None else "POST", f"{url}{path}", json=body, extensions=extensions)
        r.raise_for_status()
        return r.json()


@dataclass
class EtcdServer:
    binary: str = "etcd"
    data_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="cube-etcd-")))
    client_port: int = field(default_factory=free_port)
    peer_port: int = field(default_factory=free_port)
    pki: Path | None = None  # a deploy.pki root: serve clients with mutual TLS
    proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.pki else 'http'}://{self.endpoint}"

    def tls(self, role: Role = Role.OPERATOR) -> TlsFiles | None:
        """``role``'s client material from this server's PKI (None without one)."""
        # deploy.pki.node_dirs's layout; testkit does not import deploy (docs/architecture.md).
        return TlsFiles(self.pki / role.value) if self.pki else None

    def http(self, path: str, body: Any = None, timeout: float = 5.0) -> Any:
        """``gateway`` to this server, as the operator when it has a PKI."""
        return gateway(self.url, path, body, self.tls(), timeout)

    def _tls_flags(self) -> list[str]:
        if self.pki is None:
            return []
        own = TlsFiles(self.pki / Role.ETCD.value)
        own.read()  # a missing directory or unsafe key: say so here, not as "etcd did not start"
        return ["--client-cert-auth", "--trusted-ca-file", str(own.ca),
                "--cert-file", str(own.cert), "--key-file", str(own.key)]

    def start(self, timeout: float = 30.0) -> EtcdServer:
        flags = self._tls_flags()
        log = open(self.data_dir / "etcd.log", "wb")
        self.proc = subprocess.Popen(
            [self.binary, "--name", "test", "--data-dir", str(self.data_dir / "data"),
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", f"http://127.0.0.1:{self.peer_port}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_port}",
             "--initial-cluster", f"test=http://127.0.0.1:{self.peer_port}",
             "--unsafe-no-fsync", *flags],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "ETCD_UNSUPPORTED_ARCH": ""})
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.http("/health", timeout=1).get("health") == "true":
                    return self
            except (httpx.HTTPError, ValueError):
                pass  # not listening yet, or not healthy yet (503, or not JSON)
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"etcd did not start: {(self.data_dir / 'etcd.log').read_text()[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 10)
        self.proc = None

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
