"""The proxy's TLS material: a CA generated per state dir and domain, and a certificate for
`*.<domain>` and `<domain>` signed by it.

Files (under `<state_dir>/tls/`):
  ca.pem    the CA certificate: what clients trust (`SSL_CERT_FILE=<state_dir>/tls/ca.pem`)
  ca.key    the CA key (0600), kept to re-issue the server certificate
  cert.pem  the server certificate chain (leaf, then the CA)
  key.pem   the server key (0600)

Clients are told to trust this CA, so it may vouch for nothing but the proxy domain: it carries a
critical name constraint permitting DNS names under `<domain>` only and excluding every IP address.
Its key leaking lets nobody impersonate another site to those clients.

The CA is kept as long as its constraint permits the domain (clients were told to trust it); a
new domain needs a new CA, made at the same path, which clients re-read. A CA from before name
constraints is replaced once. The server certificate is re-issued when the CA or the domain
changes or it has less than 30 days left. Generation holds an flock so proxies sharing a state dir
do not race, and files are written atomically.
"""

from __future__ import annotations

import datetime
import fcntl
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from cube_common import certs
from cube_common.files import write_atomic

log = logging.getLogger("cube.proxy.tls")

CA_DAYS = 3650
LEAF_DAYS = 397  # what browsers accept for a server certificate
RENEW_BEFORE = datetime.timedelta(days=30)


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    ca_key: Path
    cert: Path
    key: Path


def _ca_is_current(files: TlsFiles, domain: str) -> bool:
    if not (files.ca_cert.exists() and files.ca_key.exists()):
        return False
    try:
        constraints = certs.Authority.load(files.ca_cert, files.ca_key).name_constraints()
    except ValueError:
        return False
    permitted = constraints.permitted_subtrees if constraints else None
    return permitted == [x509.DNSName(domain)]


def _make_ca(files: TlsFiles, domain: str) -> None:
    ca = certs.make_authority(f"Cube proxy CA for {domain} ({socket.gethostname()})", days=CA_DAYS,
                              permitted=[x509.DNSName(domain)],
                              excluded=[x509.IPAddress(n) for n in certs.ALL_IPS])
    ca.save(files.ca_cert, files.ca_key)
    log.info("generated a new CA", extra={"path": str(files.ca_cert), "domain": domain})


def _names(domain: str) -> list[str]:
    return [f"*.{domain}", domain]


def _leaf_is_current(files: TlsFiles, domain: str, ca: x509.Certificate) -> bool:
    if not (files.cert.exists() and files.key.exists()):
        return False
    try:
        leaf = x509.load_pem_x509_certificates(files.cert.read_bytes())[0]
        leaf.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    sans = certs.sans(leaf)
    return (
        sans is not None
        and set(sans.get_values_for_type(x509.DNSName)) == set(_names(domain))
        and leaf.not_valid_after_utc - certs.now() > RENEW_BEFORE
    )


def _make_leaf(files: TlsFiles, domain: str) -> None:
    ca = certs.Authority.load(files.ca_cert, files.ca_key)
    key, cert = ca.issue(f"*.{domain}", days=LEAF_DAYS, dns=_names(domain), server=True)
    certs.write_key(files.key, key)
    write_atomic(files.cert, certs.cert_pem(cert) + certs.cert_pem(ca.cert), 0o644)
    log.info("issued the server certificate", extra={"domain": domain, "path": str(files.cert)})


def ensure_certificates(tls_dir: Path, domain: str) -> TlsFiles:
    """Create what is missing or stale; return the paths. Safe to call on every start."""
    tls_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(tls_dir, 0o755)
    files = TlsFiles(tls_dir / "ca.pem", tls_dir / "ca.key", tls_dir / "cert.pem", tls_dir / "key.pem")
    with open(tls_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _ca_is_current(files, domain):
            _make_ca(files, domain)
        ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
        if not _leaf_is_current(files, domain, ca):
            _make_leaf(files, domain)
    return files
