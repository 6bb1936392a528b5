"""Verify an AMD SEV-SNP attestation report: VCEK -> ASK -> ARK, the report signature, the
VCEK's TCB against REPORTED_TCB, then the policy's ``snp`` section and the report data binding.

Follows AMD's "SEV-SNP Firmware ABI Specification" (report, signature) and "Versioned Chip
Endorsement Key (VCEK) Certificate and KDS Interface Specification" (pub. 57230: the VCEK's
X.509 extensions 1.3.6.1.4.1.3704.1.* carry the TCB it was derived for and the chip's HWID;
ARK and ASK sign with RSASSA-PSS, SHA-384).
"""

from __future__ import annotations

import datetime as dt
import hmac
import logging
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from bastion.spec.attestation import AttestationPolicy
from bastion.spec.snp_policy import SnpPolicy
from bastion.tee.attestation import der
from bastion.tee.attestation.amd_roots import PRODUCTS, AmdProductRoot, amd_root
from bastion.tee.attestation.errors import (
    BindingError,
    CertificateChainError,
    PolicyViolation,
    QuoteFormatError,
    QuoteSignatureInvalid,
    ReportDataMismatch,
    SimulatedEvidenceRefused,
    TcbStatusRejected,
)
from bastion.tee.attestation.snp import (
    GUID_ARK,
    GUID_ASK,
    GUID_VCEK,
    GUID_VLEK,
    SIGNING_KEY_VCEK,
    SIGNING_KEY_VLEK,
    TURIN_FAMILY,
    SnpReport,
    parse_snp_report,
    split_snp_evidence,
)
from bastion.tee.attestation.verify import _utc

logger = logging.getLogger(__name__)

TCB_FROM_VCEK = "VcekMatchesReportedTcb"
_AMD = "1.3.6.1.4.1.3704.1"
_PRODUCT_NAME = f"{_AMD}.2"
_HWID = f"{_AMD}.4"
_SPL = {
    "bootloader": f"{_AMD}.3.1",
    "tee": f"{_AMD}.3.2",
    "snp": f"{_AMD}.3.3",
    "microcode": f"{_AMD}.3.8",
    "fmc": f"{_AMD}.3.9",
}
REPORT_DATA_SIZE = 64


@dataclass(frozen=True)
class VerifiedSnpReport:
    """An accepted SNP report: the guest's measurements, simulated or not, and the product."""

    report: SnpReport
    product: str
    simulated: bool
    tcb_status: str
    notes: tuple[str, ...]
    kind: str = "snp"

    @property
    def mr_enclave(self) -> bytes:
        """The guest's launch MEASUREMENT, in the field the federation's records use."""
        return self.report.measurement

    @property
    def debug(self) -> bool:
        return self.report.debug_allowed

    def summary(self) -> str:
        r = self.report
        return (
            f"SEV-SNP v{r.version} {self.product} measurement={r.measurement.hex()[:16]} "
            f"vmpl={r.vmpl} tcb={r.reported_tcb.as_dict()}"
        )


def verify_snp_evidence(
    evidence: bytes,
    policy: AttestationPolicy,
    expected_report_data: bytes,
    now: dt.datetime | None = None,
    *,
    vcek: x509.Certificate | None = None,
    trusted_roots: Sequence[AmdProductRoot] | None = None,
    simulated_root: AmdProductRoot | None = None,
    crl: x509.CertificateRevocationList | None = None,
) -> VerifiedSnpReport:
    """Accept SNP evidence (report, then its certificate table) or raise the failed check.

    `vcek` is used when the evidence carries no certificate table.  `trusted_roots` default to
    AMD's pinned Milan, Genoa and Turin roots; `simulated_root` is trusted only when the policy
    sets `allow_simulated`.  `crl`, if given, is AMD's CRL for the product (checked for the ASK
    and VCEK serials).
    """
    if len(expected_report_data) != REPORT_DATA_SIZE:
        raise BindingError(
            f"expected report data must be {REPORT_DATA_SIZE} bytes, got {len(expected_report_data)}"
        )
    snp = policy.snp
    if snp is None:
        raise PolicyViolation(
            "the peer sent AMD SEV-SNP evidence, but the attestation policy has no `snp` section: "
            "this federation does not accept SEV-SNP guests",
            reason="evidence_kind",
        )
    now = _utc(now)
    report_bytes, table = split_snp_evidence(bytes(evidence))
    report = parse_snp_report(report_bytes)
    if report.signing_key == SIGNING_KEY_VLEK or GUID_VLEK in table:
        raise CertificateChainError(
            "the report is signed with a VLEK (a cloud provider's key); Bastion verifies "
            "VCEK-signed reports only",
            reason="vlek_unsupported",
        )
    if report.signing_key != SIGNING_KEY_VCEK:
        raise QuoteFormatError(
            f"the report's SIGNING_KEY field is {report.signing_key}: it is not signed by a VCEK",
            reason="snp_report_format",
        )
    leaf = _load_vcek(table, vcek)
    roots = list(trusted_roots) if trusted_roots is not None else [amd_root(p) for p in PRODUCTS]
    if simulated_root is not None:
        roots.append(simulated_root)
    anchor = _verify_chain(leaf, table, roots, now)
    simulated = anchor is simulated_root
    if simulated and not policy.allow_simulated:
        raise SimulatedEvidenceRefused(
            "the peer sent SIMULATED SEV-SNP evidence (no AMD hardware), and the policy does not "
            "set `allow_simulated: true`"
        )
    tag = "SIMULATED attestation: " if simulated else "attestation: "
    if crl is not None:
        _check_crl(crl, anchor, (anchor.ask, leaf), now)
    if report.cpuid_family == TURIN_FAMILY and anchor.product != "Turin" and not simulated:
        raise CertificateChainError(
            f"the report comes from a Turin CPU but its VCEK chains to AMD's {anchor.product} root",
            reason="vcek_product",
        )
    _verify_signature(leaf, report)
    _check_vcek_tcb(leaf, report)
    check_snp_policy(report, snp, tag)
    if not hmac.compare_digest(report.report_data, expected_report_data):
        raise ReportDataMismatch(
            "the SNP report's REPORT_DATA is not the hash of this TLS key, nonce and workspace: "
            "the report was made for another connection (relayed or replayed evidence)"
        )
    notes = ("SIMULATED attestation: no AMD hardware",) if simulated else ()
    verified = VerifiedSnpReport(report, anchor.product, simulated, TCB_FROM_VCEK, notes)
    logger.log(
        logging.WARNING if simulated else logging.INFO,
        "%sSNP guest accepted: %s",
        tag,
        verified.summary(),
    )
    return verified


def _load_vcek(table: dict[uuid.UUID, bytes], vcek: x509.Certificate | None) -> x509.Certificate:
    blob = table.get(GUID_VCEK)
    if blob is None:
        if vcek is None:
            raise CertificateChainError(
                "the SNP evidence carries no VCEK certificate (no certificate table) and none was "
                "given: fetch it from AMD's KDS for this chip and TCB, or pass --vcek",
                reason="vcek_missing",
            )
        return vcek
    return _certificate(blob, "VCEK")


def _certificate(blob: bytes, what: str) -> x509.Certificate:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # AMD VCEKs may carry non-positive serials
            if blob.lstrip().startswith(b"-----BEGIN"):
                certificate = x509.load_pem_x509_certificate(blob)
            else:
                certificate = x509.load_der_x509_certificate(_der_without_padding(blob))
            certificate.extensions  # noqa: B018 - parse now, not lazily later
            certificate.public_key()
            (certificate.subject, certificate.issuer)  # noqa: B018
            (certificate.not_valid_before_utc, certificate.not_valid_after_utc)  # noqa: B018
    except (
        ValueError,
        TypeError,
        UnsupportedAlgorithm,
        x509.InvalidVersion,
        x509.DuplicateExtension,
    ) as exc:
        raise CertificateChainError(
            f"the {what} certificate in the SNP evidence is malformed: {exc}",
            reason="certificate_format",
        ) from None
    return certificate


def _der_without_padding(blob: bytes) -> bytes:
    """The DER certificate at the start of ``blob``: its own length says where it ends (a
    table entry may be zero-padded after it).  Never strip bytes: a DER signature may end in
    zero bytes."""
    if len(blob) < 2 or blob[0] != der.TAG_SEQUENCE:
        return blob
    first = blob[1]
    if first < 0x80:
        end = 2 + first
    else:
        count = first & 0x7F
        if not 1 <= count <= 4 or len(blob) < 2 + count:
            return blob
        end = 2 + count + int.from_bytes(blob[2 : 2 + count], "big")
    if end > len(blob) or any(blob[end:]):
        return blob  # truncated, or trailing data that is not padding: let the parser refuse it
    return blob[:end]


def _verify_chain(
    leaf: x509.Certificate,
    table: dict[uuid.UUID, bytes],
    roots: Sequence[AmdProductRoot],
    now: dt.datetime,
) -> AmdProductRoot:
    carried_ask = _certificate(table[GUID_ASK], "ASK") if GUID_ASK in table else None
    carried_ark = _certificate(table[GUID_ARK], "ARK") if GUID_ARK in table else None
    anchor = next((r for r in roots if _signed_by(leaf, r.ask)), None)
    if anchor is None:
        named = ", ".join(r.product for r in roots)
        raise CertificateChainError(
            f"the VCEK {_cn(leaf)!r} is not signed by a pinned AMD ASK ({named}): the evidence "
            "was not signed under AMD's root",
            reason="vcek_chain",
        )
    if carried_ask is not None and carried_ask != anchor.ask:
        raise CertificateChainError(
            f"the ASK in the evidence is not AMD's pinned {anchor.product} ASK",
            reason="ask_mismatch",
        )
    if carried_ark is not None and carried_ark != anchor.ark:
        raise CertificateChainError(
            f"the ARK in the evidence is not AMD's pinned {anchor.product} ARK",
            reason="ark_mismatch",
        )
    if not _signed_by(anchor.ask, anchor.ark) or not _signed_by(anchor.ark, anchor.ark):
        raise CertificateChainError(
            f"the {anchor.product} ASK is not signed by its ARK", reason="ask_mismatch"
        )
    for certificate in (leaf, anchor.ask, anchor.ark):
        if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
            raise CertificateChainError(
                f"{_cn(certificate)!r} is not valid at {now:%Y-%m-%d %H:%M} UTC",
                reason="certificate_expired",
            )
    product = _vcek_product(leaf)
    if product is not None and not product.startswith(anchor.product):
        raise CertificateChainError(
            f"the VCEK says product {product!r} but chains to the {anchor.product} root",
            reason="vcek_product",
        )
    return anchor


def _signed_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    if certificate.issuer != issuer.subject:
        return False
    try:
        certificate.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def _verify_signature(vcek: x509.Certificate, report: SnpReport) -> None:
    key = vcek.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise CertificateChainError(
            "the VCEK's key is not ECDSA P-384", reason="certificate_format"
        )
    r, s = report.signature_r, report.signature_s
    if not 0 < r < 2**384 or not 0 < s < 2**384:
        raise QuoteSignatureInvalid("the SNP report's signature is out of range")
    try:
        key.verify(encode_dss_signature(r, s), report.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise QuoteSignatureInvalid(
            "the SNP report's signature does not verify with the VCEK: the report was altered, "
            "or the VCEK belongs to another chip or TCB"
        ) from None


def _extension_bytes(certificate: x509.Certificate, oid: str) -> bytes | None:
    try:
        value = certificate.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid)).value
    except x509.ExtensionNotFound:
        return None
    return value.value if isinstance(value, x509.UnrecognizedExtension) else None


def _vcek_product(vcek: x509.Certificate) -> str | None:
    raw = _extension_bytes(vcek, _PRODUCT_NAME)
    if raw is None:
        return None
    try:
        item = der.read_single(raw, 0x16)  # IA5String
    except der.DerError:
        return None
    return item.value.decode("ascii", "replace")


def _check_vcek_tcb(vcek: x509.Certificate, report: SnpReport) -> None:
    tcb = report.reported_tcb.as_dict()
    components = ["bootloader", "tee", "snp", "microcode"] + (["fmc"] if report.is_turin else [])
    for name in components:
        raw = _extension_bytes(vcek, _SPL[name])
        if raw is None:
            raise CertificateChainError(
                f"the VCEK lacks its {name} SPL extension: not an AMD VCEK", reason="vcek_tcb"
            )
        try:
            value = der.decode_integer(der.read_single(raw, der.TAG_INTEGER))
        except der.DerError as exc:
            raise CertificateChainError(f"the VCEK's {name} SPL is malformed: {exc}") from None
        if value != tcb[name]:
            raise CertificateChainError(
                f"the VCEK was issued for {name} SPL {value}, but the report's REPORTED_TCB says "
                f"{tcb[name]}: the VCEK is for another TCB",
                reason="vcek_tcb",
            )
    if report.chip_id_masked:
        return
    hwid = _extension_bytes(vcek, _HWID)
    if hwid is not None and len(hwid) == 66 and hwid[:2] == b"\x04\x40":
        hwid = hwid[2:]
    # Milan and Genoa chip ids are 64 bytes; Turin's are 8, and the report's CHIP_ID then holds
    # those 8 bytes followed by zeros.
    if (
        hwid is None
        or len(hwid) not in (8, 64)
        or not hmac.compare_digest(hwid, report.chip_id[: len(hwid)])
        or any(report.chip_id[len(hwid) :])
    ):
        raise CertificateChainError(
            "the VCEK's HWID is not the report's CHIP_ID: the VCEK belongs to another chip",
            reason="vcek_chip_id",
        )


def _check_crl(
    crl: x509.CertificateRevocationList,
    anchor: AmdProductRoot,
    certificates: Sequence[x509.Certificate],
    now: dt.datetime,
) -> None:
    key = anchor.ark.public_key()
    valid = False
    if isinstance(key, rsa.RSAPublicKey) and crl.issuer == anchor.ark.subject:
        try:
            valid = crl.is_signature_valid(key)
        except (UnsupportedAlgorithm, ValueError, TypeError):
            valid = False
    if not valid:
        raise CertificateChainError(
            f"the CRL is not signed by AMD's {anchor.product} ARK", reason="crl"
        )
    next_update = crl.next_update_utc
    if next_update is None or not crl.last_update_utc <= now <= next_update:
        raise CertificateChainError("AMD's CRL is not current; refetch it", reason="crl")
    for certificate in certificates:
        if crl.get_revoked_certificate_by_serial_number(certificate.serial_number) is not None:
            raise CertificateChainError(
                f"{_cn(certificate)!r} is revoked by AMD's CRL", reason="certificate_revoked"
            )


def check_snp_policy(report: SnpReport, policy: SnpPolicy, tag: str = "") -> None:
    """Refuse a guest whose policy bits, VMPL, TCB or measurements the `snp` policy rejects."""
    if report.debug_allowed and not policy.allow_debug:
        raise PolicyViolation(
            f"{tag}the guest policy allows DEBUG (the hypervisor can read and change the guest); "
            "the snp policy does not set `allow_debug: true`",
            reason="debug",
        )
    if report.migration_agent_allowed and not policy.allow_migration_agent:
        raise PolicyViolation(
            f"{tag}the guest policy allows a migration agent; the snp policy does not set "
            "`allow_migration_agent: true`",
            reason="migration_agent",
        )
    if report.smt_allowed and not policy.allow_smt:
        raise PolicyViolation(
            f"{tag}the guest policy allows SMT; the snp policy sets `allow_smt: false`",
            reason="smt",
        )
    if report.vmpl not in policy.vmpl:
        raise PolicyViolation(
            f"{tag}the report was requested at VMPL {report.vmpl}; the snp policy allows "
            f"{policy.vmpl}",
            reason="vmpl",
        )
    tcb = report.reported_tcb.as_dict()
    minimum = policy.min_tcb.model_dump()
    for name, lowest in minimum.items():
        if tcb[name] < lowest:
            raise TcbStatusRejected(
                f"{tag}REPORTED_TCB {name} SPL {tcb[name]} is below the policy's minimum "
                f"{lowest}: update the platform's firmware",
                reason="min_tcb",
            )
    if report.guest_svn < policy.min_guest_svn:
        raise PolicyViolation(
            f"{tag}GUEST_SVN {report.guest_svn} is below the policy's {policy.min_guest_svn}",
            reason="guest_svn",
        )
    checks = (
        ("measurement", report.measurement, policy.measurement),
        ("host_data", report.host_data, policy.host_data),
        ("id_key_digest", report.id_key_digest, policy.id_key_digest),
        ("author_key_digest", report.author_key_digest, policy.author_key_digest),
    )
    for name, actual, pinned in checks:
        if pinned is not None and actual.hex() not in pinned:
            raise PolicyViolation(
                f"{tag}{name.upper()} {actual.hex()} is not in the snp policy's {name} list",
                reason=name,
            )


def _cn(certificate: x509.Certificate) -> str:
    from bastion.tee.attestation.pck import common_name

    return common_name(certificate)


__all__ = [
    "TCB_FROM_VCEK",
    "VerifiedSnpReport",
    "check_snp_policy",
    "verify_snp_evidence",
]
