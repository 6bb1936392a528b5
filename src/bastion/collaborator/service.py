"""Running one collaborator of a workspace: plan → data shard → runner → loop."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from pathlib import Path

from bastion.collaborator.attestation import MutualAttestation
from bastion.collaborator.factory import build_collaborator
from bastion.collaborator.loop import Collaborator, TaskCrashed, no_attestation
from bastion.collaborator.secure_update import SecureAggregation
from bastion.data.site import SiteData
from bastion.errors import BastionError, PKIError, PlanError
from bastion.pki import Role, tls_files_for
from bastion.pki.layout import TLSFiles
from bastion.pki.revocation import CrlWatch, crl_path
from bastion.plan import Plan, load_plan
from bastion.privacy.dp.site_ledger import SiteLedger
from bastion.privacy.secagg.identity import identity_from_tls
from bastion.spec.network import parse_address
from bastion.tee.attestation.parties import build_party
from bastion.transport.client import AggregatorUnavailable, GrpcAggregatorClient
from bastion.transport.identity import INSECURE_WARNING
from bastion.transport.peer_check import check_aggregator, server_certificate
from bastion.workspace.bytecode import ignore_workspace_bytecode
from bastion.workspace.tasks import build_runner, load_shard
from bastion.workspace.verify import verify_workspace

log = logging.getLogger("bastion.collaborator")


def aggregator_check(target: str, pki: Path, files: TLSFiles, plan: Plan) -> Callable[[], None]:
    """Shake hands with ``target`` and require the aggregator the signed plan names."""
    address = parse_address(target, plan.network.port, "the aggregator")
    ca = (pki / "ca.crt").read_bytes()
    crl = CrlWatch(crl_path(pki), pki / "ca.crt")

    def check() -> None:
        certificate = server_certificate(address, ca, files.cert, files.key)
        check_aggregator(certificate, plan.network.aggregator_name, target, crl)

    return check


def run_collaborator(
    workspace: Path,
    name: str,
    aggregator: str | None = None,
    insecure: bool = False,
    allow_unsigned_workspace: bool = False,
    site_data: SiteData | None = None,
    pki_dir: Path | None = None,
    own_process: bool = False,
) -> Collaborator:
    """Join the federation as ``name`` and work until the aggregator says it is done.

    The workspace is verified against its signed manifest before any of its code (task
    runner, data loader) is imported; ``allow_unsigned_workspace`` is for development only.
    ``site_data`` maps the plan's dataset to this site's own files (never sent anywhere).
    A task that raises is reported to the aggregator; its traceback goes to this site's
    ``logs/NAME-errors.log`` and the collaborator stops with one line naming that file.
    ``own_process``: this process exists to run the collaborator (the CLI, a job process),
    so what start-up built is frozen out of the garbage collector's sight (``gc.freeze``):
    full collections, in rounds and at exit, no longer walk it.
    """
    workspace = Path(workspace)
    plan = load_plan(workspace)
    if name not in plan.collaborator_names():
        raise PlanError(
            f"{name!r} is not on the plan's roster: {', '.join(plan.collaborator_names())}"
        )
    target = (
        parse_address(aggregator, plan.network.port, "--aggregator")
        if aggregator
        else plan.network.target
    ).target
    pki = Path(pki_dir) if pki_dir is not None else workspace / plan.network.pki_dir
    if insecure:
        log.warning(INSECURE_WARNING)
        tls = None
    else:
        files = tls_files_for(pki, name)
        identity = files.check()
        if identity.role is not Role.COLLABORATOR or identity.name != name:
            raise PKIError(f"{files.cert} belongs to {identity}, not to collaborator {name!r}")
        tls = files.read()
    verified = verify_workspace(
        workspace, plan, pki / "ca.crt", allow_unsigned=allow_unsigned_workspace
    )
    ignore_workspace_bytecode(workspace)
    shard = load_shard(plan, name, workspace, site_data or SiteData())
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
        chunking=plan.network.chunking,
        max_model_bytes=plan.network.max_update_bytes,
        tls=tls,
        insecure_name=name if insecure else None,
        workspace_measurement=verified.measurement,
        check_server=None if insecure else aggregator_check(target, pki, files, plan),
        plan_tasks={task.name: task for task in plan.tasks},
        tls_files=None if insecure else files,
        receipts_dir=workspace / plan.output.logs / "receipts" / name,
    )
    attest: Callable[[], None] = no_attestation
    if plan.attestation is not None:
        if insecure:
            raise PlanError("attestation binds evidence to TLS keys; it cannot run with --insecure")
        spec = plan.attestation
        party = build_party(
            spec.policy,
            spec.provider,
            spec.simulated_dir,
            workspace,
            plan.canonical_hash(),
            verified.measurement,
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
            heartbeat=True,
        )
        if own_process:  # start-up's objects live as long as the process
            gc.collect()
            gc.freeze()
        collaborator.run()
    except TaskCrashed as crash:
        where = _record_crash(workspace / plan.output.logs / f"{name}-errors.log", crash)
        raise BastionError(f"{crash}; the traceback is in {where}") from None
    finally:
        client.close()
    return collaborator


def _record_crash(path: Path, crash: TaskCrashed) -> Path:
    """Append the task's traceback to the site's error log (it stays at the site)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    with path.open("a", encoding="utf-8") as handle:
        handle.write(f"--- {stamp} {crash}\n{crash.details}\n")
    return path
