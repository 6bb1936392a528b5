"""Turning a request into a certificate, at the CA.

The CA trusts nothing in a request but its public key, its name and its host names:
the role comes from the operator, and the subject and extensions are built afresh.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from bastion.errors import PKIError
from bastion.pki.ca import CLOCK_SKEW, CertificateAuthority, load_ca
from bastion.pki.identity import format_time
from bastion.pki.layout import PkiLayout
from bastion.pki.names import hosts_to_sans, san_to_host, validate_name
from bastion.pki.pem import PUBLIC_MODE, load_csr, normalize_fingerprint
from bastion.pki.requests import create_request, csr_fingerprint, require_hosts_for
from bastion.pki.roles import Role
from bastion.pki.store import IssuedCert, list_issued, record_issued
from bastion.storage.atomic import atomic_write_bytes

#: Curves both ``cryptography`` and gRPC's BoringSSL accept for TLS certificates.
ACCEPTED_CURVES = ("secp256r1", "secp384r1")
MIN_RSA_BITS = 2048


def _requested_name(csr: x509.CertificateSigningRequest, label: str) -> str:
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        raise PKIError(f"request {label} must have exactly one common name (CN), has {len(names)}")
    value = names[0].value
    try:
        return validate_name(value if isinstance(value, str) else value.decode())
    except PKIError as exc:
        raise PKIError(f"request {label}: {exc}") from None


def _check_requested_role(csr: x509.CertificateSigningRequest, role: Role, label: str) -> None:
    """A request may state a role (OU); if it does, it must be the one being granted."""
    units = [
        str(attr.value)
        for attr in csr.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    ]
    if not units or units == [role.value]:
        return
    raise PKIError(
        f"request {label} asks for role '{', '.join(units)}' but is being signed as "
        f"'{role.value}'; the requester must make a new request with `--role {role.value}`, "
        "or sign it with the role it asks for"
    )


def _check_public_key(csr: x509.CertificateSigningRequest, label: str) -> None:
    key = csr.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in ACCEPTED_CURVES:
        return
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= MIN_RSA_BITS:
        return
    raise PKIError(
        f"request {label} has a {type(key).__name__} key that is too weak or unsupported; "
        f"use ECDSA ({' or '.join(ACCEPTED_CURVES)}) or RSA of at least {MIN_RSA_BITS} bits"
    )


def _requested_sans(csr: x509.CertificateSigningRequest, label: str) -> list[x509.GeneralName]:
    """The request's SANs, re-validated: DNS names and IP addresses only."""
    try:
        sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    try:
        return hosts_to_sans(san_to_host(san) for san in sans)
    except PKIError as exc:
        raise PKIError(f"request {label}: {exc}") from None


def _check_name_free(pki_dir: Path, name: str, role: Role) -> None:
    """A name is an identity: it may be renewed, never handed to a second role."""
    now = datetime.now(timezone.utc)
    for entry in list_issued(pki_dir):
        if entry.name == name and entry.role is not role and entry.not_after > now:
            raise PKIError(
                f"'{name}' already holds a {entry.role.value} certificate (serial "
                f"{entry.serial_hex}, valid until {format_time(entry.not_after)}); a name "
                "has one role, so pick another name for this request"
            )


def _check_days(days: int) -> None:
    if days < 1:
        raise PKIError(f"validity must be at least 1 day, got {days}")


def _validity(
    ca: CertificateAuthority, days: int, not_before: datetime | None
) -> tuple[datetime, datetime]:
    _check_days(days)
    now = datetime.now(timezone.utc)
    if not_before is None:
        start, end = now - CLOCK_SKEW, now + timedelta(days=days)
    else:
        start = not_before if not_before.tzinfo else not_before.replace(tzinfo=timezone.utc)
        end = start + timedelta(days=days)
    if end > ca.cert.not_valid_after_utc:
        raise PKIError(
            f"a {days}-day certificate would outlive the CA, which expires on "
            f"{format_time(ca.cert.not_valid_after_utc)}; pass fewer --days or renew the CA"
        )
    return start, end


def _key_usage(public_key: object) -> x509.KeyUsage:
    """digitalSignature always; keyEncipherment only where it means something (RSA)."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def sign_request(
    pki_dir: str | os.PathLike[str],
    csr_path: str | os.PathLike[str],
    role: Role | str,
    days: int = 365,
    not_before: datetime | None = None,
    *,
    expected_fingerprint: str | None = None,
) -> IssuedCert:
    """Sign the request at ``csr_path`` as ``role``, write ``<name>.crt`` into ``pki_dir``.

    ``expected_fingerprint``, when given, must equal :func:`csr_fingerprint` of the
    request, as the requester read it out over another channel. ``not_before`` (default:
    now, less a few minutes of clock skew) and ``days`` set the validity window.
    """
    role = Role.parse(role)
    pki_dir = Path(pki_dir)
    ca = load_ca(pki_dir)
    csr = load_csr(csr_path)
    label = str(csr_path)
    if expected_fingerprint is not None:
        actual = csr_fingerprint(csr)
        if normalize_fingerprint(expected_fingerprint) != actual:
            raise PKIError(
                f"request {label} has fingerprint {actual}, not the expected "
                f"{normalize_fingerprint(expected_fingerprint)}: it is not the request the "
                "requester made. Do not sign it; ask them to send it again"
            )
    if not csr.is_signature_valid:
        raise PKIError(
            f"request {label} has an invalid signature: it was altered after it was made "
            "or is corrupt. Ask the requester for a new one"
        )
    name = _requested_name(csr, label)
    _check_requested_role(csr, role, label)
    _check_public_key(csr, label)
    sans = _requested_sans(csr, label)
    require_hosts_for(role, sans, name)
    _check_name_free(pki_dir, name, role)
    start, end = _validity(ca, days, not_before)

    issuer_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, name),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role.value),
                ]
            )
        )
        .issuer_name(ca.cert.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(csr.public_key()), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                sorted(role.extended_key_usages, key=lambda oid: oid.dotted_string)
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(csr.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca.key, ca.hash_algorithm)

    path = PkiLayout.of(pki_dir).cert(name)
    atomic_write_bytes(path, cert.public_bytes(serialization.Encoding.PEM), PUBLIC_MODE)
    entry = IssuedCert.of(cert, name, role, path)
    record_issued(pki_dir, entry)
    return entry


def issue(
    pki_dir: str | os.PathLike[str],
    name: str,
    role: Role | str,
    hosts: Iterable[str] = (),
    days: int = 365,
    not_before: datetime | None = None,
) -> IssuedCert:
    """Request and sign in one step, for when the CA and the key holder are one machine."""
    role = Role.parse(role)
    validate_name(name)
    _check_days(days)
    load_ca(pki_dir)  # fail before a key is generated if there is no usable CA
    csr_path = create_request(pki_dir, name, role, hosts)
    try:
        return sign_request(pki_dir, csr_path, role, days=days, not_before=not_before)
    except BaseException:
        # Leave nothing half-made, so the same command can simply be run again.
        layout = PkiLayout.of(pki_dir)
        layout.key(name).unlink(missing_ok=True)
        csr_path.unlink(missing_ok=True)
        raise
