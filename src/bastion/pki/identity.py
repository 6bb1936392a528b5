"""Who a certificate says its holder is, and whether to believe it.

The aggregator names a collaborator by the CN of its verified client certificate and
never by anything the client sends, so these checks are the federation's access control.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID

from bastion.errors import PKIError
from bastion.pki.names import validate_name
from bastion.pki.pem import load_certificate
from bastion.pki.roles import Role, role_accepts_usages, role_for_usages

CertificateLike = x509.Certificate | str | os.PathLike[str]
"""A certificate object, or the path of a PEM file holding one."""


@dataclass(frozen=True)
class Identity:
    """A federation member as its certificate names it."""

    name: str
    role: Role

    def __str__(self) -> str:
        return f"{self.name} ({self.role.value})"


def format_time(moment: datetime) -> str:
    """A UTC timestamp as messages and tables print it."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _resolve(cert: CertificateLike, label: str | None = None) -> tuple[x509.Certificate, str]:
    """The certificate and how to name it in a message: its file, else its subject."""
    if isinstance(cert, x509.Certificate):
        return cert, label or f"certificate '{cert.subject.rfc4514_string()}'"
    return load_certificate(cert), label or str(Path(cert))


def _single_attribute(cert: x509.Certificate, oid: x509.ObjectIdentifier, label: str) -> str:
    attributes = cert.subject.get_attributes_for_oid(oid)
    what = "common name (CN)" if oid == NameOID.COMMON_NAME else "organizational unit (OU)"
    if len(attributes) != 1:
        count = "no" if not attributes else str(len(attributes))
        raise PKIError(f"{label} has {count} {what}; a Bastion certificate has exactly one")
    value = attributes[0].value
    return value if isinstance(value, str) else value.decode()


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def check_validity(cert: x509.Certificate, label: str, at: datetime | None = None) -> None:
    """Refuse a certificate outside its validity window, saying when it was valid."""
    now = at or datetime.now(timezone.utc)
    if now < cert.not_valid_before_utc:
        raise PKIError(
            f"{label} is not valid yet: valid from {format_time(cert.not_valid_before_utc)} "
            "(check this machine's clock)"
        )
    if now > cert.not_valid_after_utc:
        raise PKIError(
            f"{label} expired on {format_time(cert.not_valid_after_utc)}; "
            "issue a new one with `bastion pki sign` or `bastion pki issue`"
        )


def verify_issued_by(
    cert: CertificateLike,
    ca_cert: CertificateLike,
    *,
    at: datetime | None = None,
    ca_label: str | None = None,
) -> None:
    """Check ``cert`` is signed by ``ca_cert`` and both are valid at ``at`` (default: now)."""
    cert, label = _resolve(cert)
    ca_cert, ca_name = _resolve(ca_cert, ca_label)
    if not _is_ca(ca_cert):
        raise PKIError(f"{ca_name} is not a CA certificate (BasicConstraints ca=False or absent)")
    check_validity(ca_cert, f"CA certificate {ca_name}", at)
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise PKIError(
            f"{label} is not signed by this CA ({ca_name}, "
            f"'{ca_cert.subject.rfc4514_string()}'); it names issuer "
            f"'{cert.issuer.rfc4514_string()}'. Use the certificate issued by this "
            "federation's CA"
        ) from None
    check_validity(cert, label, at)


def identity_of(cert: CertificateLike) -> Identity:
    """The name (CN) and role (OU, cross-checked with the extended key usage) of ``cert``.

    This reads; it does not verify the signature: call :func:`verify_issued_by` first,
    or use :func:`verify_identity`, unless TLS has already verified the chain.
    """
    cert, label = _resolve(cert)
    if _is_ca(cert):
        raise PKIError(f"{label} is a CA certificate, not a federation member's")
    raw_name = _single_attribute(cert, NameOID.COMMON_NAME, label)
    try:
        name = validate_name(raw_name)
    except PKIError as exc:
        raise PKIError(f"{label}: {exc}") from None
    role_text = _single_attribute(cert, NameOID.ORGANIZATIONAL_UNIT_NAME, label)
    try:
        role = Role.parse(role_text)
    except PKIError as exc:
        raise PKIError(f"{label}: its OU is not a Bastion role: {exc}") from None
    try:
        usages = frozenset(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        raise PKIError(
            f"{label} has no extended key usage, so its role cannot be checked"
        ) from None
    if not role_accepts_usages(role, usages):
        other = role_for_usages(usages)
        allows = f"that of the {other.value} role" if other else "a set no Bastion role has"
        raise PKIError(
            f"{label} says role '{role.value}' in its OU but its extended key usage is "
            f"{allows}; it was not issued by Bastion, refuse it"
        )
    return Identity(name=name, role=role)


def verify_identity(
    cert: CertificateLike,
    ca_cert: CertificateLike,
    roles: Iterable[Role | str] | Role | str | None = None,
    *,
    at: datetime | None = None,
) -> Identity:
    """Verify ``cert`` against the CA, read its identity, and require one of ``roles``."""
    label = _resolve(cert)[1]
    verify_issued_by(cert, ca_cert, at=at)
    identity = identity_of(cert)
    if roles is None:
        allowed = None
    elif isinstance(roles, str):
        allowed = {Role.parse(roles)}
    else:
        allowed = {Role.parse(role) for role in roles}
    if allowed is not None and identity.role not in allowed:
        wanted = " or ".join(sorted(role.value for role in allowed))
        raise PKIError(
            f"{label} belongs to {identity}, but a {wanted} certificate is required here"
        )
    return identity


def subject_alternative_names(cert: x509.Certificate | x509.CertificateSigningRequest) -> list[str]:
    """The DNS names and IP addresses a certificate or request lists as SANs."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(san.value) for san in sans]
