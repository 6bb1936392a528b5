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
from bastion.tee.attestation.configfs_tsm import CvmKind, cvm_provider
from bastion.tee.attestation.cvm_binding import cvm_report_data_for, workspace_hash_of
from bastion.tee.attestation.evidence import (
    Binding,
    TrustAnchors,
    Verdict,
    describe,
    verify_evidence,
)
from bastion.tee.attestation.providers import (
    Evidence,
    EvidenceProvider,
    GramineDcapProvider,
    SimulatedProvider,
)
from bastion.tee.attestation.simulated import SimulatedHierarchy
from bastion.tee.attestation.simulated_cvm import (
    SIMULATED_MRTD,
    SIMULATED_SNP_MEASUREMENT,
    SimulatedSnpHierarchy,
    SimulatedSnpProvider,
    SimulatedTdxProvider,
)

log = logging.getLogger("bastion.attestation")

#: Development-only overrides of a simulated party's enclave identity (hex, 32 bytes).
SIMULATED_MRENCLAVE_ENV = "BASTION_SIMULATED_MRENCLAVE"
SIMULATED_MRSIGNER_ENV = "BASTION_SIMULATED_MRSIGNER"
SIMULATED_SIGNER_LABEL = b"bastion simulated enclave signer"
#: Development-only overrides of a simulated CVM's launch measurement (hex, 48 bytes).
SIMULATED_MRTD_ENV = "BASTION_SIMULATED_MRTD"
SIMULATED_SNP_MEASUREMENT_ENV = "BASTION_SIMULATED_SNP_MEASUREMENT"
CVM_PROVIDERS = ("tdx", "snp", "simulated-tdx", "simulated-snp")
PROVIDERS = ("sgx-dcap", "simulated", *CVM_PROVIDERS)
#: Site-local choice of evidence source: one signed plan serves a federation that mixes SGX, TDX
#: and SNP parties, so each host may say which hardware it has (the verifier never trusts it).
PROVIDER_ENV = "BASTION_ATTESTATION_PROVIDER"


def simulated_identity(plan_hash: str) -> tuple[str, str]:
    """The (MRENCLAVE, MRSIGNER) a simulated party claims: the plan's hash unless overridden."""
    mr_enclave = os.environ.get(SIMULATED_MRENCLAVE_ENV) or plan_hash
    mr_signer = (
        os.environ.get(SIMULATED_MRSIGNER_ENV) or hashlib.sha256(SIMULATED_SIGNER_LABEL).hexdigest()
    )
    return mr_enclave, mr_signer


@dataclass
class AttestationParty:
    """One party's evidence source and its verifier for peers' evidence (SGX, TDX or SNP)."""

    policy: AttestationPolicy
    provider: EvidenceProvider
    kind: str
    simulated_root: x509.Certificate | None
    workspace_hash: bytes = bytes(32)
    anchors: TrustAnchors | None = None

    def evidence(self, own_certificate: x509.Certificate, nonce: bytes) -> Evidence:
        """Evidence binding this party's TLS key to a peer's ``nonce`` (and, for a CVM, the plan)."""
        spki = tls_public_key_der(own_certificate)
        if self.kind in CVM_PROVIDERS:
            return self.provider.quote(cvm_report_data_for(spki, nonce, self.workspace_hash))
        return self.provider.quote(report_data_for(spki, nonce))

    def verify(
        self, kind: str, quote: bytes, peer_certificate: x509.Certificate, nonce: bytes
    ) -> Verdict:
        """Check a peer's evidence against the policy and its TLS key; an AttestationError if not."""
        binding = Binding(tls_public_key_der(peer_certificate), nonce, self.workspace_hash)
        # ``kind`` is the peer's own label, so it decides nothing: the evidence's own bytes say
        # what it is, and simulated roots are trusted exactly when the policy allows simulation.
        anchors = self.anchors or TrustAnchors(sgx_simulated_root=self.simulated_root)
        verified = verify_evidence(quote, self.policy, binding, anchors=anchors)
        label = "SIMULATED attestation" if verified.simulated else "attestation"
        log.info("%s verified: %s", label, describe(verified))
        return verified


def build_party(
    policy: AttestationPolicy,
    provider: str,
    simulated_dir: str | None,
    workspace: Path,
    plan_hash: str,
    workspace_measurement: str | None = None,
) -> AttestationParty:
    """The party described by a plan's ``attestation`` section, for the workspace at ``workspace``.

    Confidential-VM evidence binds ``workspace_measurement`` (the signed manifest's SHA-256,
    which both ends verified) when given, else the plan's hash.

    ``BASTION_ATTESTATION_PROVIDER`` in the environment replaces the plan's provider for this
    host only (e.g. ``snp`` at a site on AMD hardware in a federation whose plan says ``tdx``).
    """
    override = os.environ.get(PROVIDER_ENV)
    if override:
        if override not in PROVIDERS:
            raise BastionError(
                f"{PROVIDER_ENV} must be one of {', '.join(PROVIDERS)}, got {override!r}"
            )
        if override != provider:
            log.warning(
                "attestation provider %s (from %s; the plan says %s)",
                override,
                PROVIDER_ENV,
                provider,
            )
        provider = override
    if provider.startswith("simulated") and not simulated_dir:
        raise BastionError(f"attestation provider {provider!r} needs attestation.simulated_dir")
    root = None
    hierarchy = None
    snp_hierarchy = None
    if simulated_dir:
        directory = Path(simulated_dir)
        if not directory.is_absolute():
            directory = workspace / directory
        try:
            if SimulatedSnpHierarchy.present(directory):
                snp_hierarchy = SimulatedSnpHierarchy.load(directory)
            if provider != "simulated-snp" or (directory / "simulated-root-ca.pem").exists():
                hierarchy = SimulatedHierarchy.load(directory)
        except BastionError:
            raise
        except Exception as exc:
            raise BastionError(
                f"attestation.simulated_dir {directory}: cannot load the simulated keys: {exc}"
            ) from None
        if provider == "simulated-snp" and snp_hierarchy is None:
            raise BastionError(
                f"attestation.simulated_dir {directory} holds no simulated SEV-SNP keys: create "
                "them with `bastion tee simulated-keys --kind snp`"
            )
        if policy.allow_simulated and hierarchy is not None:
            root = hierarchy.root_certificate
    anchors = TrustAnchors(
        sgx_simulated_root=root,
        snp_simulated_root=(
            snp_hierarchy.root if snp_hierarchy is not None and policy.allow_simulated else None
        ),
    )
    workspace_hash = workspace_hash_of(workspace_measurement or plan_hash)

    def party(source: EvidenceProvider, kind: str) -> AttestationParty:
        return AttestationParty(policy, source, kind, root, workspace_hash, anchors)

    if provider == "simulated":
        assert hierarchy is not None  # the plan model requires simulated_dir
        mr_enclave, mr_signer = simulated_identity(plan_hash)
        log.warning(
            "SIMULATED attestation: this party claims mrenclave=%s without SGX hardware",
            mr_enclave[:16],
        )
        return party(
            SimulatedProvider(hierarchy, mr_enclave=mr_enclave, mr_signer=mr_signer), "simulated"
        )
    if provider == "simulated-tdx":
        assert hierarchy is not None
        mrtd = _override(SIMULATED_MRTD_ENV, SIMULATED_MRTD)
        log.warning("SIMULATED attestation: this party claims MRTD=%s without TDX", mrtd.hex()[:16])
        return party(SimulatedTdxProvider(hierarchy, mrtd=mrtd), provider)
    if provider == "simulated-snp":
        assert snp_hierarchy is not None
        measurement = _override(SIMULATED_SNP_MEASUREMENT_ENV, SIMULATED_SNP_MEASUREMENT)
        log.warning(
            "SIMULATED attestation: this party claims SNP measurement=%s without SEV-SNP",
            measurement.hex()[:16],
        )
        return party(SimulatedSnpProvider(snp_hierarchy, measurement=measurement), provider)
    if provider in ("tdx", "snp"):
        return party(_LazyCvmProvider("tdx" if provider == "tdx" else "snp"), provider)
    return party(GramineDcapProvider(), "sgx-dcap")


class _LazyCvmProvider:
    """Finds the CVM's evidence source when evidence is first needed, so a verifier-only use of
    the party (and its error message off-CVM) does not depend on the host."""

    def __init__(self, kind: CvmKind) -> None:
        self.kind = kind

    def quote(self, report_data: bytes) -> Evidence:
        return cvm_provider(self.kind).quote(report_data)


def _override(variable: str, default: bytes) -> bytes:
    value = os.environ.get(variable)
    if not value:
        return default
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raw = b""
    if len(raw) != len(default):
        raise BastionError(f"{variable} must be {2 * len(default)} hex characters")
    return raw
