"""Workspace trusted files pinned to the signed manifest's hashes.

Gramine takes a trusted file's ``sha256`` from the manifest when one is given instead of
hashing the file at signing time (Gramine docs, "Manifest syntax", Trusted files). Pinning
the workspace manifest's hashes makes MRENCLAVE commit to exactly the files the model
owner signed, even if the build host's copy changed after verification; the build is
refused up front when it has. The manifest and its signature are trusted files too (the
enclave verifies them again at start), hashed by ``gramine-sgx-sign``. The result is
handed to ``bastion.tee.gramine.ManifestOptions.pinned_workspace``.
"""

from __future__ import annotations

from pathlib import Path

from bastion.tee.gramine import PinnedWorkspace
from bastion.workspace.compare import require_unchanged
from bastion.workspace.manifest import read_manifest
from bastion.workspace.scope import MANIFEST_FILE, SIGNATURE_FILE


def pin_workspace(workspace: Path) -> PinnedWorkspace:
    """Read the manifest and check every file against it before pinning its hashes."""
    workspace = Path(workspace).resolve()
    manifest, _ = read_manifest(workspace)
    require_unchanged(
        workspace,
        manifest,
        "its manifest",
        "Refusing to pin changed files into the enclave; re-export the signed workspace",
    )
    pinned = tuple(
        (workspace / path, digest.sha256) for path, digest in sorted(manifest.files.items())
    )
    extra = tuple(workspace / name for name in (MANIFEST_FILE, SIGNATURE_FILE))
    return PinnedWorkspace(pinned, tuple(p for p in extra if p.is_file()), manifest.measurement)


def has_manifest(workspace: Path) -> bool:
    """Whether the workspace is measured (signed or not), so its files can be pinned."""
    return (Path(workspace) / MANIFEST_FILE).is_file()
