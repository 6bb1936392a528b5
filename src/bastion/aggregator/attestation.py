"""The aggregator's attestation gate: it proves itself, and admits only attested collaborators.

A collaborator is admitted for its current certificate once its evidence, bound to
that certificate's key and to a nonce this aggregator issued (single-use, expiring),
satisfies the plan's policy. Until then it gets no model and may send no result.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from bastion.metrics.log import MetricsLog
from bastion.protocol import NotAttested
from bastion.tee.attestation import AttestationError, NonceRegistry
from bastion.tee.attestation.evidence import evidence_kind
from bastion.tee.attestation.parties import AttestationParty
from bastion.tee.attestation.providers import Evidence

log = logging.getLogger("bastion.aggregator")


@dataclass(frozen=True)
class Admission:
    fingerprint: str
    mr_enclave: str
    simulated: bool
    tcb_status: str
    at: float


def fingerprint_of(certificate: x509.Certificate) -> str:
    return certificate.fingerprint(hashes.SHA256()).hex()


class AttestationGate:
    def __init__(
        self,
        party: AttestationParty,
        own_certificate: x509.Certificate,
        metrics: MetricsLog,
        on_verdict: Callable[[str, dict[str, object]], None] | None = None,
    ) -> None:
        self._party = party
        self._on_verdict = on_verdict
        self._own = own_certificate
        self._metrics = metrics
        self._nonces = NonceRegistry(ttl_seconds=party.policy.nonce_ttl_seconds)
        self._admitted: dict[str, Admission] = {}
        self._lock = threading.Lock()
        self.certificate_pem = own_certificate.public_bytes(serialization.Encoding.PEM)

    def prove(self, collaborator: str, nonce: bytes) -> tuple[Evidence, bytes]:
        """Our evidence over the collaborator's nonce, and a nonce for its own evidence."""
        evidence = self._party.evidence(self._own, nonce)
        return evidence, self._nonces.issue(collaborator)

    def admit(
        self,
        collaborator: str,
        certificate: x509.Certificate,
        kind: str,
        quote: bytes,
        nonce: bytes,
    ) -> Admission:
        """Verify a collaborator's evidence; raises ``AttestationError`` and logs why if it fails."""
        evidence_sha256 = hashlib.sha256(quote).hexdigest()  # for the audit log
        try:
            self._nonces.consume(collaborator, nonce)
            verified = self._party.verify(kind, quote, certificate, nonce)
        except AttestationError as exc:
            log.warning("attestation of %s failed: %s", collaborator, exc)
            self._metrics.write(
                "attestation", collaborator=collaborator, accepted=False, reason=str(exc)
            )
            with self._lock:
                self._admitted.pop(collaborator, None)
            self._report(
                collaborator,
                {
                    "accepted": False,
                    "reason": str(exc),
                    "at": time.time(),
                    "evidence_sha256": evidence_sha256,
                },
            )
            raise
        admission = Admission(
            fingerprint_of(certificate),
            verified.mr_enclave.hex(),
            verified.simulated,
            verified.tcb_status,
            time.time(),
        )
        with self._lock:
            self._admitted[collaborator] = admission
        self._metrics.write(
            "attestation",
            collaborator=collaborator,
            accepted=True,
            evidence=evidence_kind(verified),
            mr_enclave=admission.mr_enclave,
            simulated=admission.simulated,
            tcb_status=admission.tcb_status,
        )
        log.info("%s attested%s", collaborator, " (SIMULATED)" if verified.simulated else "")
        self._report(
            collaborator,
            {
                "accepted": True,
                "evidence": evidence_kind(verified),
                "mr_enclave": admission.mr_enclave,
                "simulated": admission.simulated,
                "tcb_status": admission.tcb_status,
                "at": admission.at,
                "evidence_sha256": evidence_sha256,
            },
        )
        return admission

    def _report(self, collaborator: str, verdict: dict[str, object]) -> None:
        if self._on_verdict is not None:
            self._on_verdict(collaborator, verdict)

    def require(self, collaborator: str, certificate: x509.Certificate | None) -> None:
        """Refuse a collaborator that has not attested with the certificate it uses now."""
        with self._lock:
            admission = self._admitted.get(collaborator)
        if (
            admission is None
            or certificate is None
            or admission.fingerprint != fingerprint_of(certificate)
        ):
            raise NotAttested(
                f"{collaborator} has not proven its enclave; attest before fetching or sending"
            )

    def admitted(self) -> dict[str, Admission]:
        with self._lock:
            return dict(self._admitted)
