"""The cluster CA and every component's certificate: the one command behind Cube's mutual TLS.

    python -m deploy.pki node                      # CA if missing, then this node's certificates
    python -m deploy.pki issue cubelet --instance node2 --out ./node2-cubelet
    python -m deploy.pki show $CUBE_STATE_DIR/pki/operator

``make up`` runs ``node`` (through the supervisor) on every start; it keeps what is still good. On
another machine, ``issue`` makes one component's directory from the same CA, to copy there (or to
put in a Kubernetes Secret: the directory is a TLS Secret's layout, cube_common/mtls.py).

Layout under ``<state_dir>/pki/`` (every directory 0700, every key 0600):
  ca/ca.crt, ca/ca.key        the cluster CA
  <role>/tls.crt, tls.key, ca.crt   one per component of this node: etcd, master, cubelet, vs,
                                    proxy, envoy, api, and operator (what cubemastercli presents)

Invariants:
- The cluster CA is never handed to SDK users (they trust the proxy's CA, services/proxy/tls.py).
  It is name-constrained all the same: DNS names under ``cube.internal`` and ``localhost``, and no
  IP address at all.
- A certificate names exactly one role and instance (``spiffe://cube.internal/<role>/<instance>``);
  a server's also carries ``<role>.cube.internal`` and ``localhost``. Clients check the role's
  name whatever address they dial, so no certificate names an address (which also spares us
  BoringSSL's missing support for IP name constraints, and re-issuing when a node moves).
- ``node`` is idempotent: a directory whose certificate is from this CA, for the same names, with
  more than 30 days left, is kept as it is.
"""

from __future__ import annotations

import datetime
import os
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from cube_common import certs
from cube_common.files import write_atomic
from cube_common.mtls import CA_FILE, TRUST_DOMAIN, Identity, Role, TlsError, TlsFiles, server_name
from cube_common.settings import Settings, SettingsError, setting, shared

CA_DAYS = 3650
LEAF_DAYS = 365
RENEW_BEFORE = datetime.timedelta(days=30)

# What each role's certificate is for. Servers are also clients (the master calls cubelets, the
# cubelet calls CubeVS and etcd, etcd's own gateway calls etcd).
SERVERS = frozenset({Role.ETCD, Role.MASTER, Role.CUBELET, Role.VS, Role.PROXY})
NODE_ROLES = (Role.ETCD, Role.MASTER, Role.CUBELET, Role.VS, Role.PROXY, Role.ENVOY, Role.API, Role.OPERATOR)


@dataclass(frozen=True)
class PkiSettings(Settings):
    ENV_PREFIX: ClassVar[str] = "CUBE_PKI_"
    PROG: ClassVar[str] = "python -m deploy.pki"
    DESCRIPTION: ClassVar[str] = "Cube's cluster CA and component certificates (mutual TLS)"

    state_dir: Path = shared.state_dir()
    node_id: str = shared.node_id()
    dir: Path | None = setting(None, "where the CA and the components' directories are (default: "
                               "<state_dir>/pki)")

    @property
    def root(self) -> Path:
        return self.dir or self.state_dir / "pki"


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


class Pki:
    """The cluster CA in ``root`` and the directories it issues."""

    def __init__(self, root: Path):
        self.root = root
        self.ca_dir = root / "ca"

    @property
    def ca_cert(self) -> Path:
        return self.ca_dir / "ca.crt"

    def ensure_ca(self) -> certs.Authority:
        """The CA, made now if there is none."""
        key_path = self.ca_dir / "ca.key"
        if self.ca_cert.exists() and key_path.exists():
            return certs.Authority.load(self.ca_cert, key_path)
        _private_dir(self.ca_dir)
        ca = certs.make_authority(
            f"Cube cluster CA ({socket.gethostname()[:40]})", days=CA_DAYS,
            permitted=[x509.DNSName(TRUST_DOMAIN), x509.DNSName("localhost")],
            excluded=[x509.IPAddress(n) for n in certs.ALL_IPS])
        ca.save(self.ca_cert, key_path)
        return ca

    def issue(self, ca: certs.Authority, identity: Identity, out: Path, force: bool = False) -> bool:
        """Write ``identity``'s directory at ``out``; False when what is there is still good."""
        server = identity.role in SERVERS
        dns = [server_name(identity.role), "localhost"] if server else []
        if not force and _current(out, ca, identity, dns):
            return False
        key, cert = ca.issue(str(identity), days=LEAF_DAYS, dns=dns, uris=[identity.uri],
                             server=server, client=True)
        _private_dir(out)
        certs.write_key(out / "tls.key", key)
        write_atomic(out / "tls.crt", certs.cert_pem(cert), 0o644)
        write_atomic(out / CA_FILE, certs.cert_pem(ca.cert), 0o644)
        return True

    def node(self, node_id: str) -> dict[Role, Path]:
        """The CA and every certificate of a node named ``node_id``; the directory of each role."""
        _private_dir(self.root)
        ca = self.ensure_ca()
        dirs = node_dirs(self.root)
        for role, path in dirs.items():
            self.issue(ca, Identity(role, node_id), path)
        return dirs


def node_dirs(root: Path) -> dict[Role, Path]:
    """Where ``Pki(root).node`` puts each role's directory."""
    return {role: root / role.value for role in NODE_ROLES}


def _current(out: Path, ca: certs.Authority, identity: Identity, dns: list[str]) -> bool:
    tls = TlsFiles(out)
    try:
        _ca, chain, _key = tls.read()
        leaf = x509.load_pem_x509_certificates(chain)[0]
        leaf.verify_directly_issued_by(ca.cert)
        if tls.identity() != identity or (out / CA_FILE).read_bytes() != certs.cert_pem(ca.cert):
            return False
    except (TlsError, OSError, ValueError, TypeError, InvalidSignature):
        return False
    sans = certs.sans(leaf)
    return (sans is not None and set(sans.get_values_for_type(x509.DNSName)) == set(dns)
            and leaf.not_valid_after_utc - certs.now() > RENEW_BEFORE)


def main(argv: Sequence[str] | None = None) -> int:
    ap = PkiSettings.parser()
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("node", help="the CA if missing, then every certificate this node's components use")
    issue = sub.add_parser("issue", help="one component's directory, for another machine or a Secret")
    issue.add_argument("role", choices=[r.value for r in Role])
    issue.add_argument("--instance", required=True, help="which one (a node name, a user name)")
    issue.add_argument("--out", required=True, type=Path, help="the directory to write")
    show = sub.add_parser("show", help="whose certificate a directory holds, and until when")
    show.add_argument("path", type=Path)
    args = ap.parse_args(argv)
    try:
        settings = PkiSettings.from_namespace(args)
        pki = Pki(settings.root)
        if args.command == "node":
            dirs = pki.node(settings.node_id)
            print(f"cluster CA: {pki.ca_cert}")
            for role, path in dirs.items():
                print(f"{role.value:9} {path}")
        elif args.command == "issue":
            ca = pki.ensure_ca()
            pki.issue(ca, Identity(Role(args.role), args.instance), args.out, force=True)
            print(f"{args.role}/{args.instance}: {args.out}")
        else:
            tls = TlsFiles(args.path)
            leaf = x509.load_pem_x509_certificates(tls.read()[1])[0]
            print(f"{tls.identity()} valid until {leaf.not_valid_after_utc:%Y-%m-%d} "
                  f"(issuer: {leaf.issuer.rfc4514_string()})")
    except (SettingsError, TlsError, OSError, ValueError) as e:
        print(f"deploy.pki: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
