"""The collaborator's side of attestation: verify the aggregator, then prove ourselves.

Runs before the first model download and again after every reconnect. If the
aggregator's evidence does not satisfy the plan's policy, the collaborator stops
before a single byte of model or update has moved.
"""

from __future__ import annotations

import logging
import secrets

from cryptography import x509

from bastion.errors import BastionError
from bastion.pki import Role, TLSFiles, load_certificate, verify_identity
from bastion.tee.attestation import NONCE_SIZE, AttestationError
from bastion.tee.attestation.evidence import evidence_kind
from bastion.tee.attestation.parties import AttestationParty
from bastion.transport.client import GrpcAggregatorClient
from bastion.transport.peer import presented_certificate

log = logging.getLogger("bastion.collaborator")


class AggregatorNotTrusted(AttestationError):
    """The aggregator's evidence or certificate failed verification."""


class AttestationRefused(BastionError):
    """The aggregator refused this collaborator's evidence."""


class MutualAttestation:
    """Callable run by the collaborator loop before it fetches a model."""

    def __init__(
        self, party: AttestationParty, client: GrpcAggregatorClient, target: str, tls: TLSFiles
    ) -> None:
        self._party = party
        self._client = client
        self._target = target
        self._tls = tls
        self._own = load_certificate(tls.cert)
        self._ca = load_certificate(tls.ca)

    def __call__(self) -> None:
        nonce = secrets.token_bytes(NONCE_SIZE)
        reply = self._client.attest_aggregator(nonce)
        claimed = self._check_certificate(reply.certificate)
        try:
            verified = self._party.verify(reply.kind, reply.quote, claimed, nonce)
        except AttestationError as exc:
            raise AggregatorNotTrusted(
                f"aggregator attestation failed, nothing was sent: {exc}"
            ) from None
        log.info(
            "aggregator attested: %s measurement %s%s",
            evidence_kind(verified),
            verified.mr_enclave.hex()[:16],
            " (SIMULATED)" if verified.simulated else "",
        )
        evidence = self._party.evidence(self._own, reply.nonce)
        accepted, reason = self._client.attest_collaborator(
            evidence.kind, evidence.quote, reply.nonce
        )
        if not accepted:
            raise AttestationRefused(f"the aggregator refused our attestation: {reason}")

    def _check_certificate(self, pem: bytes) -> x509.Certificate:
        try:
            claimed = x509.load_pem_x509_certificate(pem)
            verify_identity(claimed, self._ca, Role.AGGREGATOR)
        except (ValueError, BastionError) as exc:
            raise AggregatorNotTrusted(
                f"the aggregator's attestation certificate is not trusted: {exc}"
            ) from None
        presented = presented_certificate(self._target, self._tls)
        if presented != claimed:
            raise AggregatorNotTrusted(
                "the certificate in the aggregator's evidence is not the one its endpoint presents"
            )
        return claimed
