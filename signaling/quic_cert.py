"""The QUIC listener's TLS certificate: generated and rotated, or configured.

Browsers accept a WebTransport server without a CA-signed certificate when the page
pins the certificate's SHA-256 in ``serverCertificateHashes``; Chromium then requires an
ECDSA certificate valid for at most 14 days. So by default Ferry generates a
self-signed ECDSA P-256 certificate valid for :data:`GENERATED_VALIDITY` (13 days, under
the limit with a margin for clock skew) and replaces it :data:`ROTATE_BEFORE` (2 days)
before it expires; pages fetch the current hash from ``/api/webtransport`` each time they
connect. Production sets ``quic_cert_file``/``quic_key_file`` (a CA-signed certificate:
no pinning needed, no rotation here).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

GENERATED_VALIDITY = datetime.timedelta(days=13)
ROTATE_BEFORE = datetime.timedelta(days=2)
# Backdated a little so a client whose clock is slightly behind accepts it.
BACKDATE = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class CertificateInfo:
    """One certificate with its key; ``sha256`` is the DER hash pages pin."""

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey | object
    generated: bool

    @property
    def sha256(self) -> bytes:
        return hashlib.sha256(self.certificate.public_bytes(serialization.Encoding.DER)).digest()

    @property
    def not_after(self) -> datetime.datetime:
        return self.certificate.not_valid_after_utc

    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)


def generate(names: list[str], now: datetime.datetime) -> CertificateInfo:
    """A self-signed ECDSA P-256 certificate for ``names`` (host names or IP addresses)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ferry")])
    alt: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name.strip("[]"))))
        except ValueError:
            alt.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now - BACKDATE + GENERATED_VALIDITY)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateInfo(cert, key, generated=True)


def load(cert_file: str, key_file: str) -> CertificateInfo:
    """A configured certificate (first of the PEM chain) and its private key."""
    with open(cert_file, "rb") as f:
        certs = x509.load_pem_x509_certificates(f.read())
    with open(key_file, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    return CertificateInfo(certs[0], key, generated=False)


class CertificateStore:
    """The certificate new QUIC connections get; :meth:`rotate_if_due` renews a generated one."""

    def __init__(
        self, names: list[str], now: datetime.datetime, cert_file: str | None = None, key_file: str | None = None
    ) -> None:
        self.names = names
        if cert_file and key_file:
            self.current = load(cert_file, key_file)
        else:
            self.current = generate(names, now)

    def rotate_if_due(self, now: datetime.datetime) -> bool:
        """Replace a generated certificate ROTATE_BEFORE its expiry; True when replaced."""
        if not self.current.generated or now < self.current.not_after - ROTATE_BEFORE:
            return False
        self.current = generate(self.names, now)
        return True
