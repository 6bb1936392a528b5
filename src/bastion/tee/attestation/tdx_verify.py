"""Verify an Intel TDX quote (v4, v5): the same chain of trust as SGX DCAP, then the TD policy.

Order (Intel's Quote Verification Library): the PCK chain to the pinned Intel SGX Root CA; the
QE report signed by the PCK key and from Intel's TD quoting enclave; the attestation key bound
by the QE report's data; the quote signed by that key; with collateral, TCB, module and QE
levels; then the policy's `tdx` section; last, the report data binding.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
from dataclasses import dataclass

from cryptography import x509

from bastion.spec.attestation import AttestationPolicy
from bastion.spec.tdx_policy import TdxPolicy, allowed
from bastion.tee.attestation.collateral import CollateralProvider, PckCa
from bastion.tee.attestation.errors import (
    AttestationError,
    AttestationKeyNotBound,
    BindingError,
    CollateralError,
    PolicyViolation,
    QeIdentityMismatch,
    QeReportSignatureInvalid,
    QuoteFormatError,
    QuoteSignatureInvalid,
    ReportDataMismatch,
    TcbStatusRejected,
)
from bastion.tee.attestation.pck import (
    common_name,
    load_pem_chain,
    public_key_of,
    sgx_pck_info,
)
from bastion.tee.attestation.quote import (
    CERT_TYPE_PCK_CHAIN,
    INTEL_QE_VENDOR_ID,
    REPORT_DATA_SIZE,
)
from bastion.tee.attestation.roots import intel_sgx_root_ca
from bastion.tee.attestation.signatures import public_key_from_raw, verify_raw
from bastion.tee.attestation.tdx import TdQuote, TdReportBody, parse_td_quote
from bastion.tee.attestation.tdx_tcb import TdxPcsCollateralProvider, evaluate_tdx_collateral
from bastion.tee.attestation.verify import TCB_NOT_CHECKED, _utc, _verify_pck_chain

logger = logging.getLogger(__name__)

#: Intel's TD quoting enclave (PCS "TD_QE" identity): its signer and product id (QE3 for SGX is 1).
INTEL_TD_QE_MRSIGNER = bytes.fromhex(
    "dc9e2a7c6f948f17474e34a7fc43ed030f7c1563f1babddf6340c82e0e54a8c5"
)
INTEL_TD_QE_ISV_PROD_ID = 2


@dataclass(frozen=True)
class VerifiedTdQuote:
    """An accepted TD quote: the TD's measurements, simulated or not, and the TCB verdict."""

    quote: TdQuote
    simulated: bool
    tcb_checked: bool
    tcb_status: str
    qe_tcb_status: str
    advisory_ids: tuple[str, ...]
    notes: tuple[str, ...]
    fmspc: bytes
    kind: str = "tdx"

    @property
    def td(self) -> TdReportBody:
        return self.quote.td_report

    @property
    def mr_enclave(self) -> bytes:
        """The TD's launch measurement (MRTD), in the field the federation's records use."""
        return self.td.mrtd

    @property
    def debug(self) -> bool:
        return self.td.debug

    def summary(self) -> str:
        return (
            f"TDX v{self.quote.version} mrtd={self.td.mrtd.hex()[:16]} "
            f"rtmr3={self.td.rtmr3.hex()[:16]} tcb={self.tcb_status}"
        )


def verify_td_quote(
    quote_bytes: bytes,
    policy: AttestationPolicy,
    expected_report_data: bytes,
    trusted_root: x509.Certificate | None = None,
    now: dt.datetime | None = None,
    *,
    simulated_root: x509.Certificate | None = None,
    collateral_provider: CollateralProvider | None = None,
) -> VerifiedTdQuote:
    """Accept a TD quote or raise the `AttestationError` subclass naming the failed check."""
    if len(expected_report_data) != REPORT_DATA_SIZE:
        raise BindingError(
            f"expected report data must be {REPORT_DATA_SIZE} bytes, got {len(expected_report_data)}"
        )
    tdx = policy.tdx
    if tdx is None:
        raise PolicyViolation(
            "the peer sent Intel TDX evidence, but the attestation policy has no `tdx` section: "
            "this federation does not accept TDX trust domains",
            reason="evidence_kind",
        )
    now = _utc(now)
    root = trusted_root if trusted_root is not None else intel_sgx_root_ca()
    quote = parse_td_quote(quote_bytes)
    if quote.header.qe_vendor_id != INTEL_QE_VENDOR_ID:
        raise QuoteFormatError(
            f"quote is from QE vendor {quote.header.qe_vendor_id.hex()}, not Intel's"
        )
    if quote.certification_data_type != CERT_TYPE_PCK_CHAIN:
        raise QuoteFormatError(
            f"the QE report certification data holds type {quote.certification_data_type}, "
            "not 5 (PEM PCK certificate chain)",
            reason="certification_data_type",
        )
    chain = load_pem_chain(quote.certification_data, "PCK certificate chain in the quote")
    leaf, anchor, simulated = _verify_pck_chain(chain, root, simulated_root, policy, now)
    tag = "SIMULATED attestation: " if simulated else "attestation: "
    if not verify_raw(
        public_key_of(leaf, "PCK certificate"), quote.qe_report_signature, quote.qe_report_bytes
    ):
        raise QeReportSignatureInvalid(
            "the TD quoting enclave's report is not signed by the PCK certificate's key: the "
            "quote's certification data does not belong to this quote"
        )
    qe = quote.qe_report_body
    if qe.mr_signer != INTEL_TD_QE_MRSIGNER or qe.isv_prod_id != INTEL_TD_QE_ISV_PROD_ID:
        raise QeIdentityMismatch(
            f"the report signed by the PCK key is from enclave signer {qe.mr_signer.hex()} "
            f"product {qe.isv_prod_id}, not Intel's TD quoting enclave"
        )
    expected_binding = hashlib.sha256(quote.attestation_public_key + quote.qe_auth_data).digest()
    if not hmac.compare_digest(qe.report_data[:32], expected_binding) or any(qe.report_data[32:]):
        raise AttestationKeyNotBound(
            "the TD QE report does not vouch for this attestation key (report data is not "
            "SHA-256(attestation key || QE auth data) followed by zeros)"
        )
    attestation_key = public_key_from_raw(quote.attestation_public_key)
    if not verify_raw(attestation_key, quote.signature, quote.signed_bytes):
        raise QuoteSignatureInvalid(
            "the TD quote's signature does not verify with its attestation key: the quote was "
            "altered or forged"
        )
    notes: list[str] = []
    fmspc = b""
    tcb_status = qe_status = TCB_NOT_CHECKED
    advisories: tuple[str, ...] = ()
    if simulated:
        notes.append("SIMULATED attestation: TDX TCB status not checked (no Intel collateral)")
    elif policy.collateral == "none":
        notes.append("TDX TCB status not checked: the policy sets `collateral: none`")
    else:
        issuer = next((c for c in chain if c.subject == leaf.issuer and c is not leaf), anchor)
        name = common_name(issuer)
        pck_ca: PckCa = "platform" if "Platform" in name else "processor"
        if "Platform" not in name and "Processor" not in name:
            raise CollateralError(f"cannot tell the PCK CA type from issuer {name!r}")
        pck = sgx_pck_info(leaf)
        fmspc = pck.fmspc
        provider = collateral_provider or TdxPcsCollateralProvider(policy.pccs_url)
        result = evaluate_tdx_collateral(
            provider.fetch(pck.fmspc, pck_ca),
            pck=pck,
            pck_leaf=leaf,
            pck_issuer=issuer,
            root=anchor,
            td_report=quote.td_report,
            qe_report=qe,
            now=now,
        )
        for what, status in (("TDX platform", result.platform_status), ("TD QE", result.qe_status)):
            if status == "Revoked" or status not in tdx.allowed_tcb_statuses:
                raise TcbStatusRejected(
                    f"the {what} TCB status is {status!r} (advisories: "
                    f"{', '.join(result.advisory_ids) or 'none'}), and the tdx policy accepts "
                    f"only {tdx.allowed_tcb_statuses}"
                )
        tcb_status, qe_status, advisories = (
            result.platform_status,
            result.qe_status,
            result.advisory_ids,
        )
    check_td_policy(quote.td_report, tdx, tag)
    if not hmac.compare_digest(quote.td_report.report_data, expected_report_data):
        raise ReportDataMismatch(
            "the TD quote's report data is not the hash of this TLS key, nonce and workspace: "
            "the quote was made for another connection (relayed or replayed evidence)"
        )
    for note in notes:
        logger.warning("%s", note)
    verified = VerifiedTdQuote(
        quote=quote,
        simulated=simulated,
        tcb_checked=tcb_status != TCB_NOT_CHECKED,
        tcb_status=tcb_status,
        qe_tcb_status=qe_status,
        advisory_ids=advisories,
        notes=tuple(notes),
        fmspc=fmspc or _fmspc_if_any(leaf),
    )
    logger.log(
        logging.WARNING if simulated else logging.INFO, "%sTD accepted: %s", tag, verified.summary()
    )
    return verified


def _fmspc_if_any(leaf: x509.Certificate) -> bytes:
    """The PCK certificate's FMSPC for reports, or empty (simulated PCKs carry none)."""
    try:
        return sgx_pck_info(leaf).fmspc
    except AttestationError:
        return b""


def check_td_policy(td: TdReportBody, policy: TdxPolicy, tag: str = "") -> None:
    """Refuse a TD whose debug bit, attributes or measurements the `tdx` policy does not allow."""
    if td.debug and not policy.allow_debug:
        raise PolicyViolation(
            f"{tag}the TD runs in DEBUG mode (TD_ATTRIBUTES.DEBUG: the host can read and change "
            "it); the tdx policy does not set `allow_debug: true`",
            reason="debug",
        )
    if policy.td_attributes is not None and not policy.td_attributes.accepts(td.td_attributes):
        raise PolicyViolation(
            f"{tag}TD_ATTRIBUTES {td.td_attributes:#018x} do not match the policy's "
            f"{policy.td_attributes.value} under mask {policy.td_attributes.mask}",
            reason="td_attributes",
        )
    if policy.xfam is not None and not policy.xfam.accepts(td.xfam):
        raise PolicyViolation(
            f"{tag}XFAM {td.xfam:#018x} does not match the policy's {policy.xfam.value} under "
            f"mask {policy.xfam.mask}",
            reason="xfam",
        )
    for name in (
        "mrseam",
        "mrsignerseam",
        "mrtd",
        "rtmr0",
        "rtmr1",
        "rtmr2",
        "rtmr3",
        "mrconfigid",
        "mrowner",
        "mrownerconfig",
    ):
        actual: bytes = getattr(td, name)
        if not allowed(getattr(policy, name), actual):
            raise PolicyViolation(
                f"{tag}{name.upper()} {actual.hex()} is not in the tdx policy's {name} list",
                reason="rtmr" if name.startswith("rtmr") else name,
            )
    if td.mrservicetd is not None and not allowed(policy.mrservicetd, td.mrservicetd):
        raise PolicyViolation(
            f"{tag}the TD is bound to service TD {td.mrservicetd.hex()[:16]}… (MRSERVICETD), which "
            "may export its state; the tdx policy's mrservicetd does not list it",
            reason="mrservicetd",
        )
