"""Measuring, signing and verifying a workspace: what runs before any task code is imported.

A collaborator and the aggregator call :func:`verify_workspace` at start: the manifest
must be signed by a model owner of the federation's CA, match the plan, and match every
file on disk. Only an operator's explicit development switch skips the signature, and
then the workspace is still measured so the aggregator can compare it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from bastion.errors import BastionError
from bastion.pki import Identity, Role, identity_of, verify_identity
from bastion.plan import Plan, load_plan
from bastion.storage.atomic import atomic_write_bytes
from bastion.workspace.compare import require_unchanged
from bastion.workspace.manifest import (
    WorkspaceManifest,
    measure_workspace,
    read_manifest,
    write_manifest,
)
from bastion.workspace.signature import (
    load_signing_identity,
    sign_bytes,
    signature_path,
    verify_signature,
)

log = logging.getLogger("bastion.workspace")

UNSIGNED_WARNING = (
    "DEVELOPMENT MODE (--allow-unsigned-workspace): this workspace's code is NOT checked "
    "against a manifest signed by the model owner; it could be anyone's code. Never run it "
    "on real data."
)
ALLOW_UNSIGNED_ENV = "BASTION_ALLOW_UNSIGNED_WORKSPACE"


class WorkspaceNotSigned(BastionError):
    """The workspace has no manifest or no valid signature, and development mode is off."""


@dataclass(frozen=True)
class VerifiedWorkspace:
    """The measurement to report to the aggregator, and who signed it (None: unsigned)."""

    measurement: str
    manifest: WorkspaceManifest
    signer: Identity | None


def default_ca_cert(workspace: Path, plan: Plan) -> Path:
    return Path(workspace) / plan.network.pki_dir / "ca.crt"


def measure(workspace: Path) -> tuple[Path, WorkspaceManifest]:
    """``bastion workspace measure``: write the manifest of the workspace as it is now."""
    manifest = measure_workspace(workspace)
    return write_manifest(workspace, manifest), manifest


def sign(
    workspace: Path, key: Path, cert: Path, ca_cert: Path | None = None
) -> tuple[Path, Identity]:
    """``bastion workspace sign``: sign the current manifest as the model owner.

    Refuses a manifest that no longer matches the files, and (with ``ca_cert``, by default
    the plan's ``pki_dir/ca.crt`` when present) a certificate the federation did not issue.
    """
    workspace = Path(workspace)
    manifest, raw = read_manifest(workspace)
    require_unchanged(
        workspace,
        manifest,
        "its manifest",
        "Run `bastion workspace measure` again, check the changes, then sign",
    )
    signing_key, certificate = load_signing_identity(key, cert)
    plan = load_plan(workspace)
    if manifest.plan_sha256 != plan.canonical_hash():
        raise BastionError(
            "the manifest was made for another plan: run `bastion workspace measure`"
        )
    ca = ca_cert or default_ca_cert(workspace, plan)
    if ca_cert is not None or ca.is_file():
        verify_identity(certificate, ca, Role.MODEL_OWNER)
    signed = sign_bytes(raw, signing_key, certificate)
    path = signature_path(workspace)
    atomic_write_bytes(path, signed.to_bytes())
    return path, identity_of(certificate)


def verify_workspace(
    workspace: Path,
    plan: Plan,
    ca_cert: Path | None = None,
    *,
    allow_unsigned: bool = False,
) -> VerifiedWorkspace:
    """Check signature, plan and every file; return the measurement. Imports no task code."""
    workspace = Path(workspace)
    if allow_unsigned:
        log.warning(UNSIGNED_WARNING)
        manifest = measure_workspace(workspace)
        return VerifiedWorkspace(manifest.measurement, manifest, None)
    ca = ca_cert or default_ca_cert(workspace, plan)
    try:
        manifest, raw = read_manifest(workspace)
    except BastionError as exc:
        raise WorkspaceNotSigned(f"{exc}{_DEV_HINT}") from None
    signer = verify_signature(raw, signature_path(workspace), ca)
    if manifest.plan_sha256 != plan.canonical_hash():
        raise WorkspaceNotSigned(
            f"the signed manifest of {workspace} was made for another plan (plan hash "
            f"{manifest.plan_sha256[:12]}…, this plan.yaml {plan.canonical_hash()[:12]}…): "
            "get the model owner's signed workspace again"
        )
    require_unchanged(workspace, manifest, f"the manifest signed by {signer}")
    log.info(
        "workspace verified: %d files match the manifest signed by %s (measurement %s)",
        len(manifest.files),
        signer,
        manifest.measurement[:16],
    )
    return VerifiedWorkspace(manifest.measurement, manifest, signer)


_DEV_HINT = (
    " (for development only, an operator may pass --allow-unsigned-workspace to run unsigned code)"
)
