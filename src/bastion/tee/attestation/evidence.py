"""One entry point for every evidence kind: detect SGX v3, TDX v4/v5 or SEV-SNP from the bytes
themselves (never from the peer's label), then run that kind's verifier under the plan's policy.

Detection: a DCAP quote starts with u16 version, u16 attestation key type (2) and u32 TEE type
(0 SGX, 0x81 TDX); an SNP report starts with a u32 version 2, 3 or 5, so its bytes 2..3 are zero
where a DCAP quote carries its key type.
"""

from __future__ import annotations

import datetime as dt
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from cryptography import x509

from bastion.spec.attestation import AttestationPolicy
from bastion.tee.attestation.amd_roots import AmdProductRoot
from bastion.tee.attestation.binding import report_data_for
from bastion.tee.attestation.collateral import CollateralProvider
from bastion.tee.attestation.cvm_binding import cvm_report_data_for
from bastion.tee.attestation.errors import PolicyViolation, QuoteFormatError
from bastion.tee.attestation.quote import ATT_KEY_TYPE_ECDSA_P256, TEE_TYPE_SGX
from bastion.tee.attestation.snp import looks_like_snp_report
from bastion.tee.attestation.snp_verify import VerifiedSnpReport, verify_snp_evidence
from bastion.tee.attestation.tdx import TEE_TYPE_TDX
from bastion.tee.attestation.tdx_verify import VerifiedTdQuote, verify_td_quote
from bastion.tee.attestation.verify import VerifiedQuote, verify_quote

EvidenceFormat = Literal["sgx", "tdx", "snp"]
Verdict = VerifiedQuote | VerifiedTdQuote | VerifiedSnpReport
MAX_EVIDENCE_SIZE = 128 * 1024


@dataclass(frozen=True)
class Binding:
    """What the evidence must be bound to; each kind derives its own report data from it."""

    tls_public_key_spki: bytes
    nonce: bytes
    workspace_hash: bytes

    def report_data(self, kind: EvidenceFormat) -> bytes:
        if kind == "sgx":
            return report_data_for(self.tls_public_key_spki, self.nonce)
        return cvm_report_data_for(self.tls_public_key_spki, self.nonce, self.workspace_hash)


@dataclass(frozen=True)
class TrustAnchors:
    """Roots beyond the pinned vendor ones: simulated roots (used only if the policy allows)
    and, for tests, replacements of the pinned Intel and AMD roots."""

    sgx_simulated_root: x509.Certificate | None = None
    snp_simulated_root: AmdProductRoot | None = None
    intel_root: x509.Certificate | None = None
    amd_roots: Sequence[AmdProductRoot] | None = field(default=None)


def detect_format(data: bytes) -> EvidenceFormat:
    """Which kind of evidence ``data`` is, from its first bytes; a format error if none."""
    if len(data) < 8:
        raise QuoteFormatError(
            f"evidence is {len(data)} bytes: too short to be an SGX or TDX quote or an SNP report",
            reason="quote_truncated",
        )
    version, key_type, tee_type = struct.unpack_from("<HHI", data)
    if key_type == ATT_KEY_TYPE_ECDSA_P256 and tee_type == TEE_TYPE_TDX and version in (4, 5):
        return "tdx"
    if key_type == ATT_KEY_TYPE_ECDSA_P256 and tee_type == TEE_TYPE_SGX and version == 3:
        return "sgx"
    if key_type == ATT_KEY_TYPE_ECDSA_P256 and tee_type == TEE_TYPE_SGX and version in (4, 5):
        raise QuoteFormatError(
            f"SGX quote version {version} is not supported: SGX evidence must be a DCAP v3 quote"
        )
    if looks_like_snp_report(data):
        return "snp"
    if struct.unpack_from("<I", data)[0] in (2, 3, 5):
        raise QuoteFormatError(
            f"evidence is {len(data)} bytes: an SEV-SNP report is 1184",
            reason="snp_report_truncated",
        )
    raise QuoteFormatError(
        "evidence is neither an SGX DCAP v3 quote, a TDX v4/v5 quote nor an SEV-SNP report "
        f"(first bytes {data[:8].hex()})"
    )


def verify_evidence(
    data: bytes,
    policy: AttestationPolicy,
    expected: Binding | bytes,
    *,
    now: dt.datetime | None = None,
    anchors: TrustAnchors | None = None,
    collateral_provider: CollateralProvider | None = None,
    vcek: x509.Certificate | None = None,
) -> Verdict:
    """Verify SGX, TDX or SNP evidence under ``policy``; raises the `AttestationError` naming
    the failed check.  ``expected`` is the binding, or the exact 64 report-data bytes."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise QuoteFormatError(f"evidence must be bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) > MAX_EVIDENCE_SIZE:
        raise QuoteFormatError(
            f"evidence is {len(data)} bytes, over the {MAX_EVIDENCE_SIZE}-byte limit",
            reason="quote_oversized",
        )
    anchors = anchors or TrustAnchors()
    kind = detect_format(data)
    report_data = expected.report_data(kind) if isinstance(expected, Binding) else expected
    simulated_sgx = anchors.sgx_simulated_root if policy.allow_simulated else None
    if kind == "sgx":
        if not policy.pins_sgx:
            raise PolicyViolation(
                "the peer sent SGX evidence, but the attestation policy pins no SGX enclave "
                "(no mrenclave, no mrsigner): this federation does not accept SGX enclaves",
                reason="evidence_kind",
            )
        return verify_quote(
            data,
            policy,
            report_data,
            anchors.intel_root,
            now,
            simulated_root=simulated_sgx,
            collateral_provider=collateral_provider,
        )
    if kind == "tdx":
        return verify_td_quote(
            data,
            policy,
            report_data,
            anchors.intel_root,
            now,
            simulated_root=simulated_sgx,
            collateral_provider=collateral_provider,
        )
    return verify_snp_evidence(
        data,
        policy,
        report_data,
        now,
        vcek=vcek,
        trusted_roots=anchors.amd_roots,
        simulated_root=anchors.snp_simulated_root if policy.allow_simulated else None,
    )


def evidence_kind(verdict: Verdict) -> str:
    """``sgx``, ``tdx`` or ``snp``, for metrics and status."""
    return getattr(verdict, "kind", "sgx")


def describe(verdict: Verdict) -> str:
    """One line naming the accepted identity, for logs."""
    if isinstance(verdict, VerifiedQuote):
        return (
            f"SGX mrenclave={verdict.mr_enclave.hex()[:16]} mrsigner={verdict.mr_signer.hex()[:16]}"
            f" svn={verdict.isv_svn} tcb={verdict.tcb_status}"
        )
    return verdict.summary()
