"""Shared fixtures: a fresh CA per test, and makers of certificates and requests built
outside Bastion's own code paths (as a third-party tool or an attacker would)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bastion.pki import init_ca, load_ca

ForgeCert = Callable[..., x509.Certificate]
WriteCsr = Callable[..., Path]
Subject = Callable[..., list[x509.NameAttribute]]


@pytest.fixture()
def pki_dir(tmp_path: Path) -> Path:
    """A PKI directory with a CA in it."""
    directory = tmp_path / "pki"
    init_ca(directory)
    return directory


@pytest.fixture()
def subject() -> Subject:
    """subject(cn, ou=None) -> name attributes."""

    def make(cn: str, ou: str | None = None) -> list[x509.NameAttribute]:
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if ou is not None:
            attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou))
        return attrs

    return make


@pytest.fixture()
def forge_cert(pki_dir: Path) -> ForgeCert:
    """Sign an arbitrary certificate with the real CA key, bypassing Bastion's checks."""
    ca = load_ca(pki_dir)

    def make(
        attrs: list[x509.NameAttribute],
        ekus: Sequence[x509.ObjectIdentifier] | None = (ExtendedKeyUsageOID.CLIENT_AUTH,),
        ca_flag: bool = False,
    ) -> x509.Certificate:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(timezone.utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attrs))
            .issuer_name(ca.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=1))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca_flag, path_length=None), critical=True)
        )
        if ekus is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage(list(ekus)), critical=False)
        return builder.sign(ca.key, hashes.SHA384())

    return make


@pytest.fixture()
def write_csr() -> WriteCsr:
    """write_csr(path, attrs, sans=None, key=None) -> path of a CSR made without Bastion."""

    def make(
        path: Path,
        attrs: list[x509.NameAttribute],
        sans: list[x509.GeneralName] | None = None,
        key: CertificateIssuerPrivateKeyTypes | None = None,
    ) -> Path:
        key = key or ec.generate_private_key(ec.SECP256R1())
        builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attrs))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        csr = builder.sign(key, hashes.SHA256())
        path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
        return path

    return make
