"""OCI registries on this machine for the image-layer tests, the template tests and the template
benchmark.

`Registry` runs Debian's `docker-registry` (distribution 2.8) with filesystem storage on 127.0.0.1
(or another local address the caller names, such as a test cluster's bridge) and a free port:
anonymous, htpasswd basic auth, or token auth from a `TokenServer` (the bearer token service of the
Docker registry auth spec, made here, on 127.0.0.1). Its access log tells a test which requests a
pull made. The caller owns the work and storage directories; `stop()` ends the process and
`TokenServer.stop()` closes its listening socket.
"""
from __future__ import annotations

import base64
import datetime
import json
import re
import subprocess
import threading
import time
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from cube_common.procs import stop_process
from testkit.ports import free_port

_ACCESS_RE = re.compile(r'"(GET|HEAD|PUT|POST|PATCH|DELETE) (\S+) HTTP/[\d.]+" (\d{3})')


# -- registry -------------------------------------------------------------------------------------

class Registry:
    """Debian's docker-registry (distribution 2.8) with filesystem storage, on 127.0.0.1."""

    def __init__(self, workdir: Path, storage: Path, auth: dict | None = None, *, address: str = "127.0.0.1",
                 port: int | None = None) -> None:
        self.workdir = workdir
        self.storage = storage
        self.auth = auth
        self.port = port or free_port()
        self.host = f"{address}:{self.port}"
        self.log_path = workdir / "registry.log"
        self._proc: subprocess.Popen | None = None

    def start(self) -> Registry:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "version": 0.1,
            "log": {"level": "info", "accesslog": {"disabled": False}},
            "storage": {"filesystem": {"rootdirectory": str(self.storage)},
                        "delete": {"enabled": True}},
            "http": {"addr": self.host, "secret": "cube-test-secret"},
        }
        if self.auth:
            config["auth"] = self.auth
        cfg = self.workdir / "config.yml"
        cfg.write_text(json.dumps(config))  # JSON is YAML
        log = open(self.log_path, "ab")
        self._proc = subprocess.Popen(["docker-registry", "serve", str(cfg)], stdout=log,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {self.log_path.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1)
                return self
            except urllib.error.HTTPError:
                return self  # 401: up, wants auth
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("docker-registry did not start")

    def stop(self) -> None:
        if self._proc is not None:
            stop_process(self._proc, 5)

    def mark(self) -> int:
        return self.log_path.stat().st_size

    def requests_since(self, mark: int) -> list[tuple[str, str, int]]:
        time.sleep(0.05)  # the access log is written after the response
        with open(self.log_path, "rb") as f:
            f.seek(mark)
            text = f.read().decode(errors="replace")
        return [(m.group(1), m.group(2), int(m.group(3))) for m in _ACCESS_RE.finditer(text)]

    def blob_path(self, digest: str) -> Path:
        hex_ = digest.split(":", 1)[1]
        return self.storage / "docker/registry/v2/blobs/sha256" / hex_[:2] / hex_ / "data"


# -- bearer token service -------------------------------------------------------------------------

def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """The token service of the Docker registry auth spec: GET /token?service=..&scope=..
    with optional basic credentials, answering {"token", "access_token", "expires_in"} with an
    RS256 JWT whose x5c header carries a certificate the registry trusts (rootcertbundle).

    Policy: valid credentials get pull+push on what they ask; bad credentials get 401;
    anonymous callers get pull only on repositories under `public/` (elsewhere an empty grant,
    which the registry answers with 401 insufficient_scope, as Docker Hub does)."""

    service = "cube-test-registry"
    issuer = "cube-test-token-issuer"

    def __init__(self, workdir: Path, users: dict[str, str]) -> None:
        self.users = users
        self.requests: list[tuple[str | None, list[str]]] = []
        self.port = free_port()
        self.realm = f"http://127.0.0.1:{self.port}/token"
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cube-test-token-signer")])
        now = datetime.datetime.now(datetime.UTC)
        self._cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                      .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
                      .not_valid_before(now - datetime.timedelta(hours=1))
                      .not_valid_after(now + datetime.timedelta(days=1))
                      .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                      .sign(self._key, hashes.SHA256()))
        self.cert_path = workdir / "token-signer.pem"
        workdir.mkdir(parents=True, exist_ok=True)
        self.cert_path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        self._server: ThreadingHTTPServer | None = None

    def registry_auth(self) -> dict:
        return {"token": {"realm": self.realm, "service": self.service, "issuer": self.issuer,
                          "rootcertbundle": str(self.cert_path)}}

    def make_token(self, subject: str, access: list[dict]) -> str:
        header = {"typ": "JWT", "alg": "RS256",
                  "x5c": [base64.b64encode(self._cert.public_bytes(serialization.Encoding.DER)).decode()]}
        now = int(time.time())
        claims = {"iss": self.issuer, "sub": subject, "aud": self.service, "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": uuid.uuid4().hex, "access": access}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        sig = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(sig)}"

    def start(self) -> TokenServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                url = urlparse(self.path)
                if url.path != "/token":
                    self.send_error(404)
                    return
                q = parse_qs(url.query)
                scopes = q.get("scope", [])
                user = None
                header = self.headers.get("Authorization", "")
                if header.startswith("Basic "):
                    user, _, password = base64.b64decode(header[6:]).decode().partition(":")
                    if server.users.get(user) != password:
                        server.requests.append((user, scopes))
                        self._json(401, {"details": "incorrect username or password"})
                        return
                server.requests.append((user, scopes))
                access = []
                for scope in scopes:
                    kind, _, rest = scope.partition(":")
                    name, _, actions = rest.rpartition(":")
                    wanted = actions.split(",")
                    if user is None:
                        granted = ["pull"] if name.startswith("public/") and "pull" in wanted else []
                    else:
                        granted = [a for a in wanted if a in ("pull", "push")]
                    access.append({"type": kind, "name": name, "actions": granted})
                token = server.make_token(user or "", access)
                self._json(200, {"token": token, "access_token": token, "expires_in": 300})

            def _json(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
