"""Attestation failures: each names the check that failed so an operator can act on it."""

from __future__ import annotations

from bastion.errors import BastionError


class AttestationError(BastionError):
    """A peer's attestation evidence was not accepted; `reason` is a stable machine code."""

    reason = "attestation"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class QuoteFormatError(AttestationError):
    """The quote bytes do not follow the SGX DCAP v3 ECDSA-P256 layout."""

    reason = "quote_format"


class QuoteSignatureInvalid(AttestationError):
    """The enclave report is not signed by the quote's attestation key."""

    reason = "quote_signature"


class QeReportSignatureInvalid(AttestationError):
    """The quoting enclave's report is not signed by the PCK certificate's key."""

    reason = "qe_report_signature"


class AttestationKeyNotBound(AttestationError):
    """The attestation key is not the one the quoting enclave vouched for."""

    reason = "attestation_key_binding"


class QeIdentityMismatch(AttestationError):
    """The report signed by the PCK key is not from Intel's quoting enclave."""

    reason = "qe_identity"


class CertificateChainError(AttestationError):
    """The PCK (or collateral signing) chain does not lead to the pinned root."""

    reason = "certificate_chain"


class SimulatedEvidenceRefused(AttestationError):
    """Evidence from the simulated key hierarchy, but the policy wants real hardware."""

    reason = "simulated_refused"


class PolicyViolation(AttestationError):
    """The enclave is genuine but not one the federation's policy accepts."""

    reason = "policy"


class ReportDataMismatch(AttestationError):
    """The quote is not bound to this TLS key and nonce (a relayed or replayed quote)."""

    reason = "report_data"


class CollateralError(AttestationError):
    """TCB info, QE identity or CRLs could not be fetched, parsed or trusted."""

    reason = "collateral"


class TcbStatusRejected(AttestationError):
    """The platform or quoting enclave TCB level is not one the policy accepts."""

    reason = "tcb_status"


class NonceError(AttestationError):
    """Base of nonce failures: the quote's freshness cannot be established."""

    reason = "nonce"


class NonceUnknown(NonceError):
    """The nonce was never issued to this peer (or was forgotten long ago)."""

    reason = "nonce_unknown"


class NonceReplayed(NonceError):
    """The nonce was already used once: a replayed attestation."""

    reason = "nonce_replayed"


class NonceExpired(NonceError):
    """The nonce outlived its time to live before the peer used it."""

    reason = "nonce_expired"


class NonceRegistryFull(NonceError):
    """Too many nonces are outstanding; refusing to grow without bound."""

    reason = "nonce_registry_full"


class EvidenceUnavailable(AttestationError):
    """This process cannot produce attestation evidence (no enclave, no DCAP)."""

    reason = "evidence_unavailable"


class BindingError(AttestationError):
    """The TLS public key or nonce given for report data is malformed."""

    reason = "binding"
