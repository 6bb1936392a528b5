"""Certificate signing requests: made where the key will live, so the key never travels.

A participant runs :func:`create_request`, sends the ``.csr`` to the CA operator, and
reads :func:`csr_fingerprint` to them over a second channel (phone, video call) so the
operator knows the request they sign is the one that was sent.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bastion.errors import PKIError
from bastion.pki.layout import PkiLayout
from bastion.pki.names import hosts_to_sans, validate_name
from bastion.pki.pem import (
    PRIVATE_MODE,
    PUBLIC_MODE,
    fingerprint,
    load_csr,
    private_key_pem,
)
from bastion.pki.roles import Role
from bastion.storage.atomic import atomic_write_bytes

MEMBER_CURVE = ec.SECP256R1()


def require_hosts_for(role: Role, hosts: Iterable[object], name: str) -> None:
    """An aggregator is a TLS server: clients check its host name, so it must have one."""
    if role is Role.AGGREGATOR and not list(hosts):
        raise PKIError(
            f"aggregator '{name}' needs at least one host name or IP address that "
            "collaborators will dial, e.g. `--host 127.0.0.1` or `--host agg.example.org`"
        )


def create_request(
    pki_dir: str | os.PathLike[str],
    name: str,
    role: Role | str,
    hosts: Iterable[str] = (),
    *,
    force: bool = False,
) -> Path:
    """Write ``<name>.key`` (0600) and ``<name>.csr`` into ``pki_dir``; returns the CSR path.

    The CSR's subject is CN=name, OU=role, and ``hosts`` become its SANs (IP addresses
    as IPAddress, others as DNSName). An existing key is kept unless ``force``.
    """
    validate_name(name)
    role = Role.parse(role)
    hosts = list(hosts)
    sans = hosts_to_sans(hosts)
    require_hosts_for(role, sans, name)
    layout = PkiLayout.of(pki_dir)
    if layout.key(name).exists() and not force:
        raise PKIError(
            f"private key {layout.key(name)} already exists; reuse its request "
            f"{layout.csr(name)}, or pass --force (force=True) to replace the key"
        )
    layout.ensure()

    key = ec.generate_private_key(MEMBER_CURVE)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, name),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role.value),
        ]
    )
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    csr = builder.sign(key, hashes.SHA256())
    atomic_write_bytes(layout.key(name), private_key_pem(key), PRIVATE_MODE)
    atomic_write_bytes(layout.csr(name), csr.public_bytes(serialization.Encoding.PEM), PUBLIC_MODE)
    return layout.csr(name)


def csr_fingerprint(csr: x509.CertificateSigningRequest | str | os.PathLike[str]) -> str:
    """SHA-256 of the request's DER encoding, as colon hex, for out-of-band comparison."""
    if not isinstance(csr, x509.CertificateSigningRequest):
        csr = load_csr(csr)
    return fingerprint(csr.public_bytes(serialization.Encoding.DER))
