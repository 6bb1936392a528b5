"""Remote attestation: SGX DCAP, Intel TDX and AMD SEV-SNP evidence bound to a TLS key, and its
verification (`verify_evidence` detects the kind from the bytes).

Typical flow (the verifier side issues the nonce, the attesting side quotes)::

    nonce = registry.issue(peer)                                  # verifier
    evidence = provider.quote(report_data_for(tls_public_key_der(my_cert), nonce))
    registry.consume(peer, nonce)                                 # verifier, once
    verify_quote(evidence.quote, policy, report_data_for(tls_public_key_der(peer_cert), nonce))
"""

from bastion.spec.attestation import AttestationPolicy
from bastion.tee.attestation.binding import (
    NONCE_SIZE,
    NonceRegistry,
    report_data_for,
    tls_public_key_der,
)
from bastion.tee.attestation.collateral import (
    Collateral,
    CollateralProvider,
    PcsCollateralProvider,
)
from bastion.tee.attestation.errors import (
    AttestationError,
    AttestationKeyNotBound,
    BindingError,
    CertificateChainError,
    CollateralError,
    EvidenceUnavailable,
    NonceError,
    NonceExpired,
    NonceRegistryFull,
    NonceReplayed,
    NonceUnknown,
    PolicyViolation,
    QeIdentityMismatch,
    QeReportSignatureInvalid,
    QuoteFormatError,
    QuoteSignatureInvalid,
    ReportDataMismatch,
    SimulatedEvidenceRefused,
    TcbStatusRejected,
)
from bastion.tee.attestation.evidence import Binding, TrustAnchors, detect_format, verify_evidence
from bastion.tee.attestation.providers import (
    Evidence,
    EvidenceProvider,
    GramineDcapProvider,
    SimulatedProvider,
)
from bastion.tee.attestation.quote import (
    MAX_QUOTE_SIZE,
    Quote,
    QuoteHeader,
    ReportBody,
    parse_quote,
)
from bastion.tee.attestation.roots import INTEL_SGX_ROOT_CA_PEM, intel_sgx_root_ca
from bastion.tee.attestation.simulated import SimulatedHierarchy, build_simulated_hierarchy
from bastion.tee.attestation.snp_verify import VerifiedSnpReport, verify_snp_evidence
from bastion.tee.attestation.tdx_verify import VerifiedTdQuote, verify_td_quote
from bastion.tee.attestation.verify import TCB_NOT_CHECKED, VerifiedQuote, verify_quote

__all__ = [
    "INTEL_SGX_ROOT_CA_PEM",
    "MAX_QUOTE_SIZE",
    "NONCE_SIZE",
    "TCB_NOT_CHECKED",
    "AttestationError",
    "AttestationKeyNotBound",
    "AttestationPolicy",
    "Binding",
    "BindingError",
    "CertificateChainError",
    "Collateral",
    "CollateralError",
    "CollateralProvider",
    "Evidence",
    "EvidenceProvider",
    "EvidenceUnavailable",
    "GramineDcapProvider",
    "NonceError",
    "NonceExpired",
    "NonceRegistry",
    "NonceRegistryFull",
    "NonceReplayed",
    "NonceUnknown",
    "PcsCollateralProvider",
    "PolicyViolation",
    "QeIdentityMismatch",
    "QeReportSignatureInvalid",
    "Quote",
    "QuoteFormatError",
    "QuoteHeader",
    "QuoteSignatureInvalid",
    "ReportBody",
    "ReportDataMismatch",
    "SimulatedEvidenceRefused",
    "SimulatedHierarchy",
    "SimulatedProvider",
    "TcbStatusRejected",
    "TrustAnchors",
    "VerifiedQuote",
    "VerifiedSnpReport",
    "VerifiedTdQuote",
    "build_simulated_hierarchy",
    "detect_format",
    "intel_sgx_root_ca",
    "parse_quote",
    "report_data_for",
    "tls_public_key_der",
    "verify_evidence",
    "verify_quote",
    "verify_snp_evidence",
    "verify_td_quote",
]
