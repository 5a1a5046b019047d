"""Making X.509 certificates: the one place Cube's CAs and leaves are built (``cryptography``).

Two CAs use it, for different audiences (docs/architecture.md, "Certificates"):
- the proxy's CA (services/proxy/tls.py), which SDK users trust through ``SSL_CERT_FILE``;
- the cluster CA (deploy/pki.py), which only Cube's own components trust, for mutual TLS.

Invariants:
- Keys are ECDSA P-256; files holding keys are written 0600 (``write_key``), atomically.
- Every CA is a path-length-0 CA with a name constraint: it can vouch only for the names its owner
  gave it, so a trust store that holds it trusts nothing else.
- A leaf is a server certificate, a client certificate, or both (extended key usage), never a CA.
- Nothing here imports at module load what the guest agent lacks: the guest never imports this.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cube_common.files import write_atomic

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# In a name constraint these exclude every IP address: the CA then vouches for names only.
ALL_IPS: tuple[IPNetwork, ...] = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    write_atomic(path, key_pem(key), 0o600)


@dataclass(frozen=True)
class Authority:
    """A CA's certificate and key, loaded."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def load(cls, cert_path: Path, key_path: Path) -> Authority:
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_path}: a {type(key).__name__}, not the ECDSA key Cube's CAs use")
        return cls(x509.load_pem_x509_certificate(cert_path.read_bytes()), key)

    def save(self, cert_path: Path, key_path: Path) -> None:
        write_key(key_path, self.key)
        write_atomic(cert_path, cert_pem(self.cert), 0o644)

    def name_constraints(self) -> x509.NameConstraints | None:
        try:
            return self.cert.extensions.get_extension_for_class(x509.NameConstraints).value
        except x509.ExtensionNotFound:
            return None

    def issue(self, common_name: str, *, days: int, dns: Sequence[str] = (), ips: Sequence[IPAddress] = (),
              uris: Sequence[str] = (), server: bool = False, client: bool = False
              ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        """A new key and a leaf certificate for it, signed by this CA."""
        if not (server or client):
            raise ValueError("a certificate is for a server, a client, or both")
        key = new_key()
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(i) for i in ips]
        names += [x509.UniformResourceIdentifier(u) for u in uris]
        if not names:
            raise ValueError("a certificate needs at least one subject alternative name")
        usages = [u for u, on in ((ExtendedKeyUsageOID.SERVER_AUTH, server),
                                  (ExtendedKeyUsageOID.CLIENT_AUTH, client)) if on]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now() - datetime.timedelta(hours=1))
            .not_valid_after(now() + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False,
                                         crl_sign=False, content_commitment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                           critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return key, cert


def make_authority(common_name: str, *, days: int, permitted: Sequence[x509.GeneralName],
                   excluded: Sequence[x509.GeneralName] = ()) -> Authority:
    """A new self-signed CA that may vouch only for ``permitted`` names (and none of ``excluded``)."""
    if not permitted:
        raise ValueError("a Cube CA is always name-constrained")
    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Cube"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now() - datetime.timedelta(hours=1))
        .not_valid_after(now() + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        # Critical, as RFC 5280 asks: a verifier that cannot enforce it must reject the chain.
        .add_extension(x509.NameConstraints(permitted_subtrees=list(permitted),
                                            excluded_subtrees=list(excluded) or None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(cert, key)


def sans(cert: x509.Certificate) -> x509.SubjectAlternativeName | None:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
