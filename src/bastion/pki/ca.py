"""The federation's certificate authority: a self-signed ECDSA P-384 root.

The CA signs end-entity certificates only (``path_length=0``), so a compromised member
certificate can never mint others.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bastion.errors import PKIError
from bastion.pki.identity import check_validity
from bastion.pki.layout import PkiLayout
from bastion.pki.pem import (
    PRIVATE_MODE,
    PUBLIC_MODE,
    SigningKey,
    key_matches,
    load_certificate,
    load_private_key,
    private_key_pem,
)
from bastion.pki.store import reset_registry
from bastion.storage.atomic import atomic_write_bytes

CA_CURVE = ec.SECP384R1()
CLOCK_SKEW = timedelta(minutes=5)
"""Certificates start this long before they are made, so peers with slow clocks accept them."""


@dataclass(frozen=True)
class CertificateAuthority:
    """A loaded CA: its certificate and the key that signs with it."""

    cert: x509.Certificate
    key: SigningKey

    @property
    def hash_algorithm(self) -> hashes.SHA256 | hashes.SHA384:
        """SHA-384 for a P-384 key (matched strength), SHA-256 otherwise."""
        if isinstance(self.key, ec.EllipticCurvePrivateKey) and self.key.curve.key_size >= 384:
            return hashes.SHA384()
        return hashes.SHA256()


def init_ca(
    pki_dir: str | os.PathLike[str],
    common_name: str = "Bastion Federation CA",
    days: int = 3650,
    force: bool = False,
) -> Path:
    """Create ``ca.key`` (0600) and ``ca.crt`` in ``pki_dir``; returns the certificate's path.

    An existing CA is kept unless ``force``: replacing it voids every certificate it
    issued, so ``force`` also starts an empty ``issued.json``.
    """
    layout = PkiLayout.of(pki_dir)
    if not force and (layout.ca_cert.exists() or layout.ca_key.exists()):
        raise PKIError(
            f"a CA already exists in {layout.root}; replacing it invalidates every certificate "
            "it issued. Pass --force (force=True) if that is what you want"
        )
    if not 1 <= len(common_name) <= 64:
        raise PKIError(f"CA common name must be 1-64 characters, got {len(common_name)}")
    if days < 1:
        raise PKIError(f"CA validity must be at least 1 day, got {days}")
    layout.ensure()

    key = ec.generate_private_key(CA_CURVE)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    now = datetime.now(timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA384())
    )
    atomic_write_bytes(layout.ca_key, private_key_pem(key), PRIVATE_MODE)
    atomic_write_bytes(layout.ca_cert, cert.public_bytes(serialization.Encoding.PEM), PUBLIC_MODE)
    reset_registry(layout.root)
    return layout.ca_cert


def load_ca(pki_dir: str | os.PathLike[str]) -> CertificateAuthority:
    """The CA in ``pki_dir``, checked to be a usable, unexpired CA whose key matches."""
    layout = PkiLayout.of(pki_dir)
    hint = f": run `bastion pki init --pki-dir {layout.root}` on the CA machine"
    cert = load_certificate(layout.ca_cert, hint=hint)
    key = load_private_key(layout.ca_key, hint=hint)
    if not key_matches(key, cert):
        raise PKIError(f"CA key {layout.ca_key} does not belong to {layout.ca_cert}")
    check_validity(cert, f"CA certificate {layout.ca_cert}")
    return CertificateAuthority(cert=cert, key=key)
