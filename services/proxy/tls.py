"""The proxy's TLS material: a CA generated once per state dir and a certificate for
`*.<domain>` and `<domain>` signed by it.

Files (under `<state_dir>/tls/`):
  ca.pem    the CA certificate: what clients trust (`SSL_CERT_FILE=<state_dir>/tls/ca.pem`)
  ca.key    the CA key (0600), kept to re-issue the server certificate
  cert.pem  the server certificate chain (leaf, then the CA)
  key.pem   the server key (0600)

The CA is never replaced once made (clients were told to trust it). The server certificate is
re-issued when the domain changes or it has less than 30 days left. Generation holds an flock
so proxies sharing a state dir do not race, and files are written atomically.
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
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

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


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _make_ca(files: TlsFiles) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Cube"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"Cube local CA ({socket.gethostname()})"),
    ])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(hours=1))
        .not_valid_after(_now() + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    write_atomic(files.ca_key, _key_pem(key), 0o600)
    write_atomic(files.ca_cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    log.info("generated a new CA", extra={"path": str(files.ca_cert)})


def _names(domain: str) -> list[x509.GeneralName]:
    return [x509.DNSName(f"*.{domain}"), x509.DNSName(domain)]


def _leaf_is_current(files: TlsFiles, domain: str, ca: x509.Certificate) -> bool:
    if not (files.cert.exists() and files.key.exists()):
        return False
    try:
        leaf = x509.load_pem_x509_certificates(files.cert.read_bytes())[0]
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    return (
        leaf.issuer == ca.subject
        and set(sans.get_values_for_type(x509.DNSName)) == {f"*.{domain}", domain}
        and leaf.not_valid_after_utc - _now() > RENEW_BEFORE
    )


def _make_leaf(files: TlsFiles, domain: str) -> None:
    ca_key = serialization.load_pem_private_key(files.ca_key.read_bytes(), None)
    if not isinstance(ca_key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, dsa.DSAPrivateKey,
                               ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        raise TypeError(f"{files.ca_key}: a {type(ca_key).__name__} cannot sign certificates")
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"*.{domain}")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(hours=1))
        .not_valid_after(_now() + datetime.timedelta(days=LEAF_DAYS))
        .add_extension(x509.SubjectAlternativeName(_names(domain)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False,
                                     crl_sign=False, content_commitment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False),
                       critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    chain = cert.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM)
    write_atomic(files.key, _key_pem(key), 0o600)
    write_atomic(files.cert, chain, 0o644)
    log.info("issued the server certificate", extra={"domain": domain, "path": str(files.cert)})


def ensure_certificates(tls_dir: Path, domain: str) -> TlsFiles:
    """Create what is missing or stale; return the paths. Safe to call on every start."""
    tls_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(tls_dir, 0o755)
    files = TlsFiles(tls_dir / "ca.pem", tls_dir / "ca.key", tls_dir / "cert.pem", tls_dir / "key.pem")
    with open(tls_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (files.ca_cert.exists() and files.ca_key.exists()):
            _make_ca(files)
        ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
        if not _leaf_is_current(files, domain, ca):
            _make_leaf(files, domain)
    return files


