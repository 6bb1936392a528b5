"""What a federation party needs to attest and to verify, built from the plan's section.

Both roles use this: the aggregator proves itself to collaborators and verifies them;
a collaborator verifies the aggregator before any model or update moves, then proves
itself. Simulated evidence exists for development only and every use of it is logged
as SIMULATED.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from bastion.errors import BastionError
from bastion.spec.attestation import AttestationPolicy
from bastion.tee.attestation.binding import report_data_for, tls_public_key_der
from bastion.tee.attestation.providers import (
    Evidence,
    EvidenceProvider,
    GramineDcapProvider,
    SimulatedProvider,
)
from bastion.tee.attestation.simulated import SimulatedHierarchy
from bastion.tee.attestation.verify import VerifiedQuote, verify_quote

log = logging.getLogger("bastion.attestation")

#: Development-only overrides of a simulated party's enclave identity (hex, 32 bytes).
SIMULATED_MRENCLAVE_ENV = "BASTION_SIMULATED_MRENCLAVE"
SIMULATED_MRSIGNER_ENV = "BASTION_SIMULATED_MRSIGNER"
SIMULATED_SIGNER_LABEL = b"bastion simulated enclave signer"


def simulated_identity(plan_hash: str) -> tuple[str, str]:
    """The (MRENCLAVE, MRSIGNER) a simulated party claims: the plan's hash unless overridden."""
    mr_enclave = os.environ.get(SIMULATED_MRENCLAVE_ENV) or plan_hash
    mr_signer = (
        os.environ.get(SIMULATED_MRSIGNER_ENV) or hashlib.sha256(SIMULATED_SIGNER_LABEL).hexdigest()
    )
    return mr_enclave, mr_signer


@dataclass
class AttestationParty:
    """One party's evidence source and its verifier for peers' evidence."""

    policy: AttestationPolicy
    provider: EvidenceProvider
    kind: str
    simulated_root: x509.Certificate | None

    def evidence(self, own_certificate: x509.Certificate, nonce: bytes) -> Evidence:
        """Evidence binding this party's TLS key to a peer's ``nonce``."""
        return self.provider.quote(report_data_for(tls_public_key_der(own_certificate), nonce))

    def verify(
        self, kind: str, quote: bytes, peer_certificate: x509.Certificate, nonce: bytes
    ) -> VerifiedQuote:
        """Check a peer's evidence against the policy and its TLS key; an AttestationError if not."""
        expected = report_data_for(tls_public_key_der(peer_certificate), nonce)
        # ``kind`` is the peer's own label, so it decides nothing: the simulated root is
        # trusted exactly when the policy allows simulation (build_party sets it only then).
        verified = verify_quote(quote, self.policy, expected, simulated_root=self.simulated_root)
        label = "SIMULATED attestation" if verified.simulated else "attestation"
        log.info(
            "%s verified: mrenclave=%s mrsigner=%s svn=%d tcb=%s",
            label,
            verified.mr_enclave.hex()[:16],
            verified.mr_signer.hex()[:16],
            verified.isv_svn,
            verified.tcb_status,
        )
        return verified


def build_party(
    policy: AttestationPolicy,
    provider: str,
    simulated_dir: str | None,
    workspace: Path,
    plan_hash: str,
) -> AttestationParty:
    """The party described by a plan's ``attestation`` section, for the workspace at ``workspace``."""
    root = None
    hierarchy = None
    if simulated_dir:
        directory = Path(simulated_dir)
        if not directory.is_absolute():
            directory = workspace / directory
        try:
            hierarchy = SimulatedHierarchy.load(directory)
        except BastionError:
            raise
        except Exception as exc:
            raise BastionError(
                f"attestation.simulated_dir {directory}: cannot load the simulated keys: {exc}"
            ) from None
        if policy.allow_simulated:
            root = hierarchy.root_certificate
    if provider == "simulated":
        assert hierarchy is not None  # the plan model requires simulated_dir
        mr_enclave, mr_signer = simulated_identity(plan_hash)
        log.warning(
            "SIMULATED attestation: this party claims mrenclave=%s without SGX hardware",
            mr_enclave[:16],
        )
        source: EvidenceProvider = SimulatedProvider(
            hierarchy, mr_enclave=mr_enclave, mr_signer=mr_signer
        )
        return AttestationParty(policy, source, "simulated", root)
    return AttestationParty(policy, GramineDcapProvider(), "sgx-dcap", root)
