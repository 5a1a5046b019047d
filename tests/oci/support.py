"""Test harness for the image layer: real `docker-registry` instances on loopback (anonymous,
htpasswd basic auth, token auth with a bearer token service made here), an OCI layout writer,
and tree comparison helpers."""
from __future__ import annotations

import base64
import datetime
import gzip
import hashlib
import io
import json
import os
import re
import stat
import subprocess
import tarfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from tests.support.ports import free_port

_ACCESS_RE = re.compile(r'"(GET|HEAD|PUT|POST|PATCH|DELETE) (\S+) HTTP/[\d.]+" (\d{3})')


def run(*argv: str, timeout: float = 120) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    return r.stdout


# -- registry -------------------------------------------------------------------------------------

class Registry:
    """Debian's docker-registry (distribution 2.8) with filesystem storage, on 127.0.0.1."""

    def __init__(self, workdir: Path, storage: Path, auth: dict | None = None) -> None:
        self.workdir = workdir
        self.storage = storage
        self.auth = auth
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.log_path = workdir / "registry.log"
        self._proc: subprocess.Popen | None = None

    def start(self) -> "Registry":
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
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

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
        now = datetime.datetime.now(datetime.timezone.utc)
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

    def start(self) -> "TokenServer":
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


# -- OCI layouts made by hand ------------------------------------------------------------------------

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"


class LayoutWriter:
    """Writes blobs, manifests and indexes into an OCI image layout (creating it if needed),
    for images umoci cannot express (other architectures, indexes, broken ones)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        (path / "blobs/sha256").mkdir(parents=True, exist_ok=True)
        if not (path / "oci-layout").exists():
            (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        if not (path / "index.json").exists():
            (path / "index.json").write_text('{"schemaVersion":2,"manifests":[]}')

    def blob(self, data: bytes, media_type: str, **extra) -> dict:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        (self.path / "blobs/sha256" / digest[7:]).write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data), **extra}

    def image(self, layers: list[bytes], *, arch: str = "amd64", config: dict | None = None,
              compress: bool = True, diff_ids: list[str] | None = None) -> dict:
        """A manifest for `layers` (uncompressed tars), returning its descriptor."""
        descs = []
        for tar in layers:
            blob = gzip.compress(tar, mtime=0) if compress else tar
            descs.append(self.blob(blob, LAYER_GZIP if compress else LAYER_TAR))
        cfg = {"architecture": arch, "os": "linux", "config": config or {},
               "rootfs": {"type": "layers", "diff_ids": diff_ids if diff_ids is not None else
                          ["sha256:" + hashlib.sha256(t).hexdigest() for t in layers]}}
        config_desc = self.blob(json.dumps(cfg).encode(), OCI_CONFIG)
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_desc,
                    "layers": descs}
        return self.blob(json.dumps(manifest).encode(), OCI_MANIFEST)

    def index(self, entries: list[tuple[dict, str]]) -> dict:
        """An index over (manifest descriptor, "os/arch") pairs."""
        manifests = []
        for desc, platform in entries:
            os_, arch = platform.split("/")
            manifests.append({**desc, "platform": {"os": os_, "architecture": arch}})
        doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        return self.blob(json.dumps(doc).encode(), OCI_INDEX)

    def manifest_of(self, tag: str) -> dict:
        for m in json.loads((self.path / "index.json").read_text())["manifests"]:
            if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
                return {k: m[k] for k in ("mediaType", "digest", "size")}
        raise KeyError(tag)

    def tag(self, desc: dict, name: str) -> None:
        index = json.loads((self.path / "index.json").read_text())
        index["manifests"] = [m for m in index["manifests"] if m.get("annotations", {}).get(
            "org.opencontainers.image.ref.name") != name]
        index["manifests"].append({**desc, "annotations": {"org.opencontainers.image.ref.name": name}})
        (self.path / "index.json").write_text(json.dumps(index))


@dataclass
class Entry:
    """A tar entry to build test layers with."""

    name: str
    type: bytes = tarfile.REGTYPE
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, bytes] | None = None


def make_tar(entries: list[Entry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type = e.type
            info.mode = e.mode
            info.uid, info.gid = e.uid, e.gid
            info.mtime = 1_700_000_000
            info.linkname = e.linkname
            info.devmajor, info.devminor = e.devmajor, e.devminor
            if e.xattrs:
                info.pax_headers = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape")
                                    for k, v in e.xattrs.items()}
            if e.type == tarfile.REGTYPE:
                info.size = len(e.data)
                tf.addfile(info, io.BytesIO(e.data))
            else:
                tf.addfile(info)
    return buf.getvalue()


# -- comparing trees --------------------------------------------------------------------------------

def snapshot_tree(root: Path) -> dict[str, tuple]:
    """path -> (type, mode, uid, gid, size-or-target-or-rdev, content hash, xattrs, inode group)."""
    out: dict[str, tuple] = {}
    inodes: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            kind = stat.S_IFMT(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                what = os.readlink(p)
                xattrs = {}
            else:
                xattrs = {k: os.getxattr(p, k, follow_symlinks=False)
                          for k in os.listxattr(p, follow_symlinks=False)}
                if stat.S_ISREG(st.st_mode):
                    what = hashlib.sha256(Path(p).read_bytes()).hexdigest()
                elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                    what = (os.major(st.st_rdev), os.minor(st.st_rdev))
                else:
                    what = None
            link_group = None
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                link_group = inodes.setdefault(st.st_ino, rel)
            out[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, what,
                        tuple(sorted(xattrs.items())), link_group)
    return out
