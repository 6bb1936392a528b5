"""Running one collaborator of a workspace: plan → data shard → runner → loop."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from bastion.collaborator.attestation import MutualAttestation
from bastion.collaborator.factory import build_collaborator
from bastion.collaborator.loop import Collaborator, no_attestation
from bastion.collaborator.secure_update import SecureAggregation
from bastion.errors import PKIError, PlanError
from bastion.pki import Role, tls_files_for
from bastion.plan import load_plan
from bastion.privacy.dp.site_ledger import SiteLedger
from bastion.privacy.secagg.identity import identity_from_tls
from bastion.tee.attestation.parties import build_party
from bastion.transport.client import AggregatorUnavailable, GrpcAggregatorClient
from bastion.transport.identity import INSECURE_WARNING
from bastion.workspace.tasks import build_runner, load_shard
from bastion.workspace.verify import ignore_workspace_bytecode, verify_workspace

log = logging.getLogger("bastion.collaborator")


def run_collaborator(
    workspace: Path,
    name: str,
    aggregator: str | None = None,
    insecure: bool = False,
    allow_unsigned_workspace: bool = False,
) -> Collaborator:
    """Join the federation as ``name`` and work until the aggregator says it is done.

    The workspace is verified against its signed manifest before any of its code (task
    runner, data loader) is imported; ``allow_unsigned_workspace`` is for development only.
    """
    workspace = Path(workspace)
    plan = load_plan(workspace)
    if name not in plan.collaborator_names():
        raise PlanError(
            f"{name!r} is not on the plan's roster: {', '.join(plan.collaborator_names())}"
        )
    target = aggregator or f"{plan.network.host}:{plan.network.port}"
    if insecure:
        log.warning(INSECURE_WARNING)
        tls = None
    else:
        files = tls_files_for(workspace / plan.network.pki_dir, name)
        identity = files.check()
        if identity.role is not Role.COLLABORATOR or identity.name != name:
            raise PKIError(f"{files.cert} belongs to {identity}, not to collaborator {name!r}")
        tls = files.read()
    verified = verify_workspace(workspace, plan, allow_unsigned=allow_unsigned_workspace)
    ignore_workspace_bytecode()
    shard = load_shard(plan, name, workspace)
    runner = build_runner(plan, workspace)
    # Local DP: the collaborator continues from what this site's records already spent.
    ledger = SiteLedger.for_workspace(workspace, plan, name)
    log.info(
        "%s: %d training and %d validation examples; aggregator %s",
        name,
        shard.train_count,
        shard.valid_count,
        target,
    )
    client = GrpcAggregatorClient(
        target,
        plan.canonical_hash(),
        chunk_bytes=plan.network.chunk_bytes,
        max_model_bytes=plan.network.max_update_bytes,
        tls=tls,
        insecure_name=name if insecure else None,
        workspace_measurement=verified.measurement,
    )
    attest: Callable[[], None] = no_attestation
    if plan.attestation is not None:
        if insecure:
            raise PlanError("attestation binds evidence to TLS keys; it cannot run with --insecure")
        spec = plan.attestation
        party = build_party(
            spec.policy, spec.provider, spec.simulated_dir, workspace, plan.canonical_hash()
        )
        attest = MutualAttestation(party, client, target, files)
    secure = None
    if plan.uses_secure_aggregation:
        if insecure:
            raise PlanError(
                "secure aggregation signs each collaborator's keys with its certificate's key; "
                "it cannot run with --insecure"
            )
        secure = SecureAggregation(plan, identity_from_tls(files))
    try:
        collaborator = build_collaborator(
            plan,
            name,
            client,
            runner,
            shard,
            retryable=(AggregatorUnavailable,),
            attest=attest,
            secure=secure,
            ledger=ledger,
        )
        collaborator.run()
    finally:
        client.close()
    return collaborator
