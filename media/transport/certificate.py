"""The server's DTLS certificate: one self-signed ECDSA P-256 key pair shared by every transport.

WebRTC authenticates DTLS peers by the certificate fingerprint carried in SDP, not by a CA
chain, so a self-signed certificate is all we need. P-256 ECDSA is what browsers generate
and what every WebRTC stack accepts.
"""

from __future__ import annotations

import datetime
import secrets

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# SDP `a=fingerprint` algorithm names (RFC 8122) we can compute, strongest last.
FINGERPRINT_ALGORITHMS: dict[str, hashes.HashAlgorithm] = {
    "sha-256": hashes.SHA256(),
    "sha-384": hashes.SHA384(),
    "sha-512": hashes.SHA512(),
}


def certificate_fingerprint(cert: x509.Certificate, algorithm: str = "sha-256") -> str:
    """Fingerprint of `cert` in SDP form ("AB:CD:..."); `algorithm` as in RFC 8122."""
    try:
        digest = FINGERPRINT_ALGORITHMS[algorithm.lower()]
    except KeyError:
        raise ValueError(
            f"unsupported fingerprint algorithm {algorithm!r}; "
            f"allowed: {', '.join(FINGERPRINT_ALGORITHMS)}"
        ) from None
    return ":".join(f"{b:02X}" for b in cert.fingerprint(digest))


class Certificate:
    """A private key and its self-signed X.509 certificate, usable by `DtlsSession`."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self.private_key = private_key
        self.x509 = cert
        self._fingerprints: dict[str, str] = {}

    @classmethod
    def generate(cls, *, valid_days: int = 30, now: datetime.datetime | None = None) -> Certificate:
        """New P-256 key and certificate; `now` only exists so tests can pin the validity window."""
        key = ec.generate_private_key(ec.SECP256R1())
        # A random CN keeps certificates of different server runs distinguishable in captures.
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, secrets.token_hex(16))])
        start = now or datetime.datetime.now(tz=datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            # Backdate a day so peers with a skewed clock still accept it.
            .not_valid_before(start - datetime.timedelta(days=1))
            .not_valid_after(start + datetime.timedelta(days=valid_days))
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @classmethod
    def from_pem(cls, cert_pem: bytes, key_pem: bytes) -> Certificate:
        """Load a persisted certificate, so fingerprints survive a restart."""
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("certificate key must be an EC private key")
        return cls(key, x509.load_pem_x509_certificate(cert_pem))

    def to_pem(self) -> tuple[bytes, bytes]:
        """(certificate PEM, unencrypted PKCS#8 key PEM)."""
        key_pem = self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return self.x509.public_bytes(serialization.Encoding.PEM), key_pem

    @property
    def expires(self) -> datetime.datetime:
        """After this instant peers may reject the certificate; rotate before it."""
        return self.x509.not_valid_after_utc

    def fingerprint(self, algorithm: str = "sha-256") -> str:
        """SDP fingerprint ("AB:CD:..."), cached because every SDP answer carries it."""
        algorithm = algorithm.lower()
        value = self._fingerprints.get(algorithm)
        if value is None:
            value = certificate_fingerprint(self.x509, algorithm)
            self._fingerprints[algorithm] = value
        return value

    def fingerprints(self) -> list[tuple[str, str]]:
        """(algorithm, value) for every algorithm we support, sha-256 first."""
        return [(alg, self.fingerprint(alg)) for alg in FINGERPRINT_ALGORITHMS]

    def __repr__(self) -> str:
        return f"Certificate(sha-256 {self.fingerprint()})"
