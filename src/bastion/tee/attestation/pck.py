"""PCK certificate chains: load them from a quote, walk them to a pinned root, read SGX fields.

Certificate profile: Intel, "SGX PCK Certificate and Certificate Revocation List Profile
Specification" (the SGX extension 1.2.840.113741.1.13.1 and its TCB, PCE-ID and FMSPC entries).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bastion.tee.attestation import der
from bastion.tee.attestation.errors import CertificateChainError, QuoteFormatError
from bastion.tee.attestation.quote import CERT_TYPE_PCK_CHAIN, Quote

MAX_CHAIN_CERTIFICATES = 8
SGX_EXTENSION_OID = x509.ObjectIdentifier("1.2.840.113741.1.13.1")
_SGX = SGX_EXTENSION_OID.dotted_string
_PPID, _TCB, _PCE_ID, _FMSPC, _SGX_TYPE = (f"{_SGX}.{n}" for n in range(1, 6))
_PCE_SVN, _CPU_SVN = f"{_TCB}.17", f"{_TCB}.18"
TCB_COMPONENT_COUNT = 16


@dataclass(frozen=True)
class PckInfo:
    """The platform facts Intel certified in a PCK certificate, used to pick a TCB level."""

    fmspc: bytes
    pce_id: bytes
    cpu_svn: bytes
    pce_svn: int
    tcb_components: tuple[int, ...]


def pck_chain_from_quote(quote: Quote) -> list[x509.Certificate]:
    """The PEM certificate chain embedded in the quote's certification data (type 5)."""
    if quote.certification_data_type != CERT_TYPE_PCK_CHAIN:
        raise QuoteFormatError(
            f"certification data type is {quote.certification_data_type}, but only type 5 "
            "(PEM PCK certificate chain) can be verified: configure the platform's quote "
            "provider library (PCCS) so that the quoting enclave embeds the PCK chain",
            reason="certification_data_type",
        )
    return load_pem_chain(quote.certification_data, "PCK certificate chain in the quote")


def load_pem_chain(pem: bytes, what: str) -> list[x509.Certificate]:
    """Parse concatenated PEM certificates (trailing NULs allowed, as quotes carry one)."""
    try:
        certificates = x509.load_pem_x509_certificates(pem.rstrip(b"\x00"))
    except (ValueError, x509.InvalidVersion) as exc:  # InvalidVersion is no ValueError
        raise QuoteFormatError(f"the {what} is not valid PEM: {exc}", reason="pck_chain") from exc
    if not 1 <= len(certificates) <= MAX_CHAIN_CERTIFICATES:
        raise QuoteFormatError(
            f"the {what} holds {len(certificates)} certificates; expected 1 to "
            f"{MAX_CHAIN_CERTIFICATES}",
            reason="pck_chain",
        )
    for certificate in certificates:
        _parse_fields(certificate, what)
    return certificates


def _parse_fields(certificate: x509.Certificate, what: str) -> None:
    """Decode now the fields verification reads: ``cryptography`` parses them lazily, so a
    malformed name or extension would otherwise surface later as a bare ValueError."""
    parts: list[tuple[str, Callable[[], object]]] = [
        ("names", lambda: (certificate.issuer, certificate.subject)),
        ("extensions", lambda: certificate.extensions),
        ("validity", lambda: (certificate.not_valid_before_utc, certificate.not_valid_after_utc)),
        ("public key", certificate.public_key),
    ]
    for part, read in parts:
        try:
            read()
        # TypeError: odd names; DuplicateExtension: an extension twice (not a ValueError)
        except (ValueError, TypeError, UnsupportedAlgorithm, x509.DuplicateExtension) as exc:
            raise CertificateChainError(
                f"a certificate in the {what} has malformed {part}: {exc}"
            ) from None


def verify_chain(
    chain: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    now: dt.datetime,
    what: str = "PCK certificate chain",
) -> tuple[x509.Certificate, x509.Certificate]:
    """Walk from the chain's leaf to one of `anchors`; return (leaf, anchor that signed it).

    Certificates in `chain` may come in any order and may include a copy of the root: that copy
    is never trusted, only the pinned anchors are.  Every certificate, anchors included, must be
    valid at `now`; every issuer must be a CA.
    """
    leaf = _find_leaf(chain, what)
    current = leaf
    for _ in range(len(chain) + 1):
        _check_validity(current, now, what)
        for anchor in anchors:
            if current.issuer == anchor.subject and _signed_by(current, anchor):
                _check_validity(anchor, now, what)
                _check_is_ca(anchor, what)
                return leaf, anchor
        issuer = next((c for c in chain if c.subject == current.issuer and c is not current), None)
        if issuer is None or issuer.subject == issuer.issuer:
            ends_at = _name(issuer) if issuer is not None else _issuer_name(current)
            pinned = ", ".join(repr(_name(a)) for a in anchors) or "(none)"
            raise CertificateChainError(
                f"the {what} ends at {ends_at!r}, which is not a pinned root ({pinned}); "
                "the evidence was not signed under a trusted root",
                reason="untrusted_root",
            )
        if not _signed_by(current, issuer):
            raise CertificateChainError(
                f"in the {what}, {_name(current)!r} is not validly signed by {_name(issuer)!r}"
            )
        _check_is_ca(issuer, what)
        current = issuer
    raise CertificateChainError(f"the {what} loops or is too long")


def sgx_pck_info(certificate: x509.Certificate) -> PckInfo:
    """Read FMSPC, PCE-ID, CPUSVN, PCESVN and the 16 TCB component SVNs from a PCK certificate."""
    try:
        extension = _extensions(certificate).get_extension_for_oid(SGX_EXTENSION_OID)
    except x509.ExtensionNotFound as exc:
        raise CertificateChainError(
            f"{_name(certificate)!r} has no SGX extension: not an Intel PCK certificate",
            reason="pck_extension",
        ) from exc
    value = extension.value
    raw = value.value if isinstance(value, x509.UnrecognizedExtension) else b""
    fields = _oid_map(der.read_single(raw, der.TAG_SEQUENCE).value)
    tcb = _oid_map(_expect(fields, _TCB, der.TAG_SEQUENCE).value)
    components = tuple(
        der.decode_integer(_expect(tcb, f"{_TCB}.{i}", der.TAG_INTEGER))
        for i in range(1, TCB_COMPONENT_COUNT + 1)
    )
    return PckInfo(
        fmspc=_octets(fields, _FMSPC, 6),
        pce_id=_octets(fields, _PCE_ID, 2),
        cpu_svn=_octets(tcb, _CPU_SVN, 16),
        pce_svn=der.decode_integer(_expect(tcb, _PCE_SVN, der.TAG_INTEGER)),
        tcb_components=components,
    )


def public_key_of(certificate: x509.Certificate, what: str) -> ec.EllipticCurvePublicKey:
    """The certificate's key, which SGX requires to be ECDSA P-256."""
    try:
        key = certificate.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CertificateChainError(
            f"the {what} key in {_name(certificate)!r} is malformed"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise CertificateChainError(
            f"the {what} key in {_name(certificate)!r} is not an ECDSA P-256 key"
        )
    return key


def common_name(certificate: x509.Certificate) -> str:
    """The certificate's CN (or its full subject when it has none), for messages."""
    return _name(certificate)


def _oid_map(content: bytes) -> dict[str, der.Tlv]:
    """SGX extension entries are SEQUENCE { OID, value }; index them by OID."""
    entries: dict[str, der.Tlv] = {}
    for item in der.read_all(content):
        if item.tag != der.TAG_SEQUENCE:
            raise der.DerError("SGX extension entry is not a SEQUENCE")
        parts = der.read_all(item.value)
        if len(parts) != 2:
            raise der.DerError("SGX extension entry is not an (OID, value) pair")
        entries[der.decode_oid(parts[0])] = parts[1]
    return entries


def _expect(entries: dict[str, der.Tlv], oid: str, tag: int) -> der.Tlv:
    item = entries.get(oid)
    if item is None or item.tag != tag:
        raise der.DerError(f"SGX extension lacks entry {oid} (tag {tag:#04x})")
    return item


def _octets(entries: dict[str, der.Tlv], oid: str, size: int) -> bytes:
    value = _expect(entries, oid, der.TAG_OCTET_STRING).value
    if len(value) != size:
        raise der.DerError(f"SGX extension entry {oid} is {len(value)} bytes, expected {size}")
    return value


def _find_leaf(chain: Sequence[x509.Certificate], what: str) -> x509.Certificate:
    leaves = [
        c
        for c in chain
        if not any(o is not c and o.issuer == c.subject and o.issuer != o.subject for o in chain)
    ]
    if len(leaves) != 1:
        raise CertificateChainError(f"cannot find a single leaf certificate in the {what}")
    return leaves[0]


def _signed_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def _check_validity(certificate: x509.Certificate, now: dt.datetime, what: str) -> None:
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        raise CertificateChainError(
            f"in the {what}, {_name(certificate)!r} is valid from "
            f"{certificate.not_valid_before_utc:%Y-%m-%d %H:%M} to "
            f"{certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC, not at {now:%Y-%m-%d %H:%M}",
            reason="certificate_expired",
        )


def _check_is_ca(certificate: x509.Certificate, what: str) -> None:
    try:
        constraints = _extensions(certificate).get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise CertificateChainError(
            f"in the {what}, {_name(certificate)!r} signs other certificates but is not a CA"
        )


def _extensions(certificate: x509.Certificate) -> x509.Extensions:
    try:
        return certificate.extensions
    except (ValueError, x509.DuplicateExtension) as exc:
        raise CertificateChainError(
            f"{_name(certificate)!r} has malformed extensions: {exc}", reason="certificate_format"
        ) from exc


def _name(certificate: x509.Certificate) -> str:
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else certificate.subject.rfc4514_string()
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _issuer_name(certificate: x509.Certificate) -> str:
    names = certificate.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else certificate.issuer.rfc4514_string()
    return value if isinstance(value, str) else value.decode("utf-8", "replace")
