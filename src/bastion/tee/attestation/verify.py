"""Verify an SGX DCAP quote: signatures, key binding, PCK chain, collateral, policy, report data.

The checks follow Intel's DCAP Quote Verification Library (QVL) order of trust: first that the
quote comes from a genuine quoting enclave on a platform certified under the pinned root, then
that the enclave it describes is one the federation's policy accepts and is bound to this TLS
session.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from bastion.spec.attestation import AttestationPolicy
from bastion.tee.attestation.collateral import (
    CollateralProvider,
    PckCa,
    PcsCollateralProvider,
)
from bastion.tee.attestation.errors import (
    AttestationKeyNotBound,
    BindingError,
    CertificateChainError,
    CollateralError,
    PolicyViolation,
    QeIdentityMismatch,
    QeReportSignatureInvalid,
    QuoteFormatError,
    QuoteSignatureInvalid,
    ReportDataMismatch,
    SimulatedEvidenceRefused,
    TcbStatusRejected,
)
from bastion.tee.attestation.pck import (
    common_name,
    pck_chain_from_quote,
    public_key_of,
    sgx_pck_info,
    verify_chain,
)
from bastion.tee.attestation.quote import (
    INTEL_QE_ISV_PROD_ID,
    INTEL_QE_MRSIGNER,
    INTEL_QE_VENDOR_ID,
    REPORT_DATA_SIZE,
    Quote,
    parse_quote,
)
from bastion.tee.attestation.roots import intel_sgx_root_ca
from bastion.tee.attestation.signatures import public_key_from_raw, verify_raw
from bastion.tee.attestation.tcb import evaluate_collateral

logger = logging.getLogger(__name__)

TCB_NOT_CHECKED = "NotChecked"


@dataclass(frozen=True)
class VerifiedQuote:
    """An accepted quote: the enclave identity, whether it was simulated, and the TCB verdict.

    `tcb_checked` is False when the policy says `collateral: none` or the evidence is simulated;
    `tcb_status` is then ``"NotChecked"`` and `notes` says why.
    """

    quote: Quote
    mr_enclave: bytes
    mr_signer: bytes
    isv_prod_id: int
    isv_svn: int
    debug: bool
    simulated: bool
    tcb_checked: bool
    tcb_status: str
    qe_tcb_status: str
    advisory_ids: tuple[str, ...]
    notes: tuple[str, ...]


def verify_quote(
    quote_bytes: bytes,
    policy: AttestationPolicy,
    expected_report_data: bytes,
    trusted_root: x509.Certificate | None = None,
    now: dt.datetime | None = None,
    *,
    simulated_root: x509.Certificate | None = None,
    collateral_provider: CollateralProvider | None = None,
) -> VerifiedQuote:
    """Accept `quote_bytes` or raise the `AttestationError` subclass naming the failed check.

    `trusted_root` defaults to the embedded Intel SGX Root CA.  `simulated_root` is trusted too,
    but only when `policy.allow_simulated` is set; evidence under it is reported as simulated.
    `collateral_provider` defaults to fetching from `policy.pccs_url` when the policy asks for
    collateral.  `now` (UTC) is the time certificates and collateral must be valid at.
    """
    if len(expected_report_data) != REPORT_DATA_SIZE:
        raise BindingError(
            f"expected report data must be {REPORT_DATA_SIZE} bytes (see report_data_for), "
            f"got {len(expected_report_data)}"
        )
    if not policy.pins_sgx:  # a tdx/snp-only policy must never accept any SGX enclave
        raise PolicyViolation(
            "the attestation policy pins no enclave (no mrenclave, no mrsigner): refusing to "
            "accept any enclave at all",
            reason="policy_pins_nothing",
        )
    now = _utc(now)
    root = trusted_root if trusted_root is not None else intel_sgx_root_ca()
    quote = parse_quote(quote_bytes)
    if quote.header.qe_vendor_id != INTEL_QE_VENDOR_ID:
        raise QuoteFormatError(
            f"quote is from QE vendor {quote.header.qe_vendor_id.hex()}, not Intel's quoting "
            "enclave"
        )
    chain = pck_chain_from_quote(quote)
    leaf, anchor, simulated = _verify_pck_chain(chain, root, simulated_root, policy, now)
    tag = "SIMULATED attestation: " if simulated else "attestation: "
    _verify_qe_report(quote, leaf)
    attestation_key = _verify_key_binding(quote)
    if not verify_raw(attestation_key, quote.signature, quote.signed_bytes):
        raise QuoteSignatureInvalid(
            "the quote's enclave report signature does not verify with its attestation key: "
            "the quote was altered or forged"
        )
    notes: list[str] = []
    tcb_status = qe_status = TCB_NOT_CHECKED
    advisories: tuple[str, ...] = ()
    if simulated:
        notes.append("SIMULATED attestation: TCB status not checked (no Intel collateral)")
    elif policy.collateral == "none":
        notes.append("TCB status not checked: the policy sets `collateral: none`")
    else:
        provider = collateral_provider or PcsCollateralProvider(policy.pccs_url)
        tcb_status, qe_status, advisories = _check_tcb(
            quote, chain, leaf, anchor, provider, policy, now
        )
    _check_policy(quote, policy, tag)
    if not hmac.compare_digest(quote.report_body.report_data, expected_report_data):
        raise ReportDataMismatch(
            "the quote's report data does not match SHA-256(TLS public key || nonce): the "
            "quote was made for another TLS key or nonce (relayed or replayed evidence)"
        )
    body = quote.report_body
    for note in notes:
        logger.warning("%s", note)
    logger.log(
        logging.WARNING if simulated else logging.INFO,
        "%senclave accepted: mrenclave=%s mrsigner=%s isv_prod_id=%d isv_svn=%d tcb=%s",
        tag,
        body.mr_enclave.hex(),
        body.mr_signer.hex(),
        body.isv_prod_id,
        body.isv_svn,
        tcb_status,
    )
    return VerifiedQuote(
        quote=quote,
        mr_enclave=body.mr_enclave,
        mr_signer=body.mr_signer,
        isv_prod_id=body.isv_prod_id,
        isv_svn=body.isv_svn,
        debug=body.debug,
        simulated=simulated,
        tcb_checked=tcb_status != TCB_NOT_CHECKED,
        tcb_status=tcb_status,
        qe_tcb_status=qe_status,
        advisory_ids=advisories,
        notes=tuple(notes),
    )


def _verify_pck_chain(
    chain: Sequence[x509.Certificate],
    root: x509.Certificate,
    simulated_root: x509.Certificate | None,
    policy: AttestationPolicy,
    now: dt.datetime,
) -> tuple[x509.Certificate, x509.Certificate, bool]:
    anchors = [root] if simulated_root is None else [root, simulated_root]
    try:
        leaf, anchor = verify_chain(chain, anchors, now)
    except CertificateChainError as exc:
        if exc.reason == "untrusted_root" and any("SIMULATED" in common_name(c) for c in chain):
            raise SimulatedEvidenceRefused(
                "the peer sent SIMULATED attestation evidence (no SGX hardware), and this "
                "verifier was not given the simulated root CA: real SGX evidence is required. "
                "For a simulated federation set `allow_simulated: true` and pass the simulated "
                "root CA"
            ) from exc
        raise
    simulated = anchor is not root and anchor == simulated_root
    if simulated and not policy.allow_simulated:
        raise SimulatedEvidenceRefused(
            "the peer sent SIMULATED attestation evidence (no SGX hardware), and the policy "
            "does not set `allow_simulated: true`: real SGX evidence is required"
        )
    return leaf, anchor, simulated


def _verify_qe_report(quote: Quote, pck_leaf: x509.Certificate) -> None:
    pck_key = public_key_of(pck_leaf, "PCK certificate")
    if not verify_raw(pck_key, quote.qe_report_signature, quote.qe_report_bytes):
        raise QeReportSignatureInvalid(
            "the quoting enclave's report is not signed by the PCK certificate's key: the "
            "quote's certification data does not belong to this quote"
        )
    qe = quote.qe_report_body
    if qe.mr_signer != INTEL_QE_MRSIGNER or qe.isv_prod_id != INTEL_QE_ISV_PROD_ID:
        raise QeIdentityMismatch(
            f"the report signed by the PCK key is from enclave signer {qe.mr_signer.hex()} "
            f"product {qe.isv_prod_id}, not Intel's quoting enclave"
        )


def _verify_key_binding(quote: Quote) -> ec.EllipticCurvePublicKey:
    expected = hashlib.sha256(quote.attestation_public_key + quote.qe_auth_data).digest()
    report_data = quote.qe_report_body.report_data
    if not hmac.compare_digest(report_data[:32], expected) or any(report_data[32:]):
        raise AttestationKeyNotBound(
            "the QE report does not vouch for this attestation key (report data is not "
            "SHA-256(attestation key || QE auth data) followed by zeros)"
        )
    return public_key_from_raw(quote.attestation_public_key)


def _check_tcb(
    quote: Quote,
    chain: Sequence[x509.Certificate],
    leaf: x509.Certificate,
    anchor: x509.Certificate,
    provider: CollateralProvider,
    policy: AttestationPolicy,
    now: dt.datetime,
) -> tuple[str, str, tuple[str, ...]]:
    issuer = next((c for c in chain if c.subject == leaf.issuer and c is not leaf), anchor)
    issuer_name = common_name(issuer)
    pck_ca: PckCa
    if "Processor" in issuer_name:
        pck_ca = "processor"
    elif "Platform" in issuer_name:
        pck_ca = "platform"
    else:
        raise CollateralError(f"cannot tell the PCK CA type from issuer {issuer_name!r}")
    pck = sgx_pck_info(leaf)
    collateral = provider.fetch(pck.fmspc, pck_ca)
    result = evaluate_collateral(
        collateral,
        pck=pck,
        pck_leaf=leaf,
        pck_issuer=issuer,
        root=anchor,
        qe_report=quote.qe_report_body,
        now=now,
    )
    for what, status in (("platform", result.platform_status), ("QE", result.qe_status)):
        if status not in policy.allowed_tcb_statuses:
            raise TcbStatusRejected(
                f"the {what} TCB status is {status!r} (advisories: "
                f"{', '.join(result.advisory_ids) or 'none'}), and the policy accepts only "
                f"{policy.allowed_tcb_statuses}: update the platform or widen "
                "allowed_tcb_statuses"
            )
    return result.platform_status, result.qe_status, result.advisory_ids


def _check_policy(quote: Quote, policy: AttestationPolicy, tag: str) -> None:
    body = quote.report_body
    if body.debug and not policy.allow_debug:
        raise PolicyViolation(
            f"{tag}the enclave runs in DEBUG mode (its memory is readable by the host); "
            "the policy does not set `allow_debug: true`",
            reason="debug",
        )
    if policy.mrenclave and body.mr_enclave.hex() not in policy.mrenclave:
        raise PolicyViolation(
            f"{tag}MRENCLAVE {body.mr_enclave.hex()} is not in the policy's mrenclave list",
            reason="mrenclave",
        )
    if policy.mrsigner is not None:
        if body.mr_signer.hex() != policy.mrsigner:
            raise PolicyViolation(
                f"{tag}MRSIGNER {body.mr_signer.hex()} is not the policy's {policy.mrsigner}",
                reason="mrsigner",
            )
        if body.isv_prod_id != policy.isv_prod_id:
            raise PolicyViolation(
                f"{tag}ISV product id {body.isv_prod_id} is not the policy's {policy.isv_prod_id}",
                reason="isv_prod_id",
            )
    if body.isv_svn < policy.min_isv_svn:
        raise PolicyViolation(
            f"{tag}ISV SVN {body.isv_svn} is below the policy's minimum {policy.min_isv_svn}: "
            "the enclave build is outdated",
            reason="isv_svn",
        )


def _utc(now: dt.datetime | None) -> dt.datetime:
    if now is None:
        return dt.datetime.now(dt.timezone.utc)
    return now if now.tzinfo is not None else now.replace(tzinfo=dt.timezone.utc)
