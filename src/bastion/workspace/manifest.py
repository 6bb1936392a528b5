"""The workspace manifest: SHA-256 of every measured file and the plan's canonical hash.

The manifest is canonical JSON (sorted keys, two-space indent, ASCII, final newline) with
no timestamps or host names, so measuring the same files anywhere gives the same bytes.
Its SHA-256 is the *workspace measurement* that collaborators report to the aggregator.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from bastion.errors import BastionError
from bastion.plan import Plan, load_plan
from bastion.storage.atomic import atomic_write_bytes
from bastion.storage.checkpoints import INITIAL
from bastion.workspace.scope import (
    MANIFEST_FILE,
    WorkspaceScopeError,
    check_relative_path,
    is_excluded,
    runtime_dirs,
    walk_scope,
)

FORMAT = "bastion-workspace-manifest/1"
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
_CHUNK = 1 << 20
_HEX = frozenset("0123456789abcdef")


class ManifestFormatError(BastionError):
    """A manifest file is not one Bastion wrote."""


@dataclass(frozen=True)
class FileDigest:
    sha256: str
    size: int


@dataclass(frozen=True)
class WorkspaceManifest:
    """What was measured: the plan's hash, the excluded run-time directories, every file."""

    plan_sha256: str
    excluded: tuple[str, ...]
    files: dict[str, FileDigest]
    #: Files shipped inside a run-time folder (the initial model): signed, compared where
    #: they lie when present; written only when there are any (older manifests unchanged).
    shipped: dict[str, FileDigest] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        document: dict[str, Any] = {
            "format": FORMAT,
            "plan_sha256": self.plan_sha256,
            "excluded": list(self.excluded),
            "files": {
                path: {"sha256": digest.sha256, "size": digest.size}
                for path, digest in sorted(self.files.items())
            },
        }
        if self.shipped:
            document["shipped"] = {
                path: {"sha256": digest.sha256, "size": digest.size}
                for path, digest in sorted(self.shipped.items())
            }
        return (json.dumps(document, sort_keys=True, indent=2, ensure_ascii=True) + "\n").encode()

    @property
    def measurement(self) -> str:
        """SHA-256 of the canonical bytes: equal exactly when the manifests are equal."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @classmethod
    def parse(cls, raw: bytes, source: str = MANIFEST_FILE) -> WorkspaceManifest:
        """Read a manifest, refusing anything but the canonical form Bastion writes."""
        if len(raw) > MAX_MANIFEST_BYTES:
            raise ManifestFormatError(f"{source} is larger than {MAX_MANIFEST_BYTES} bytes")
        try:
            document = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ManifestFormatError(f"{source} is not JSON: {exc}") from None
        manifest = cls._from_document(document, source)
        if manifest.to_bytes() != raw:
            raise ManifestFormatError(
                f"{source} is not in canonical form (edited by hand?): run "
                "`bastion workspace measure` to write it again"
            )
        return manifest

    @classmethod
    def _from_document(cls, document: Any, source: str) -> WorkspaceManifest:
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise ManifestFormatError(f"{source} is not a {FORMAT} manifest")
        keys = {"format", "plan_sha256", "excluded", "files"}
        if set(document) not in (keys, keys | {"shipped"}):
            raise ManifestFormatError(
                f"{source} has keys {sorted(document)}; expected format, plan_sha256, "
                "excluded, files"
            )
        plan_sha256 = _hex_digest(document["plan_sha256"], f"{source}: plan_sha256")
        excluded = document["excluded"]
        if not isinstance(excluded, list) or not all(isinstance(e, str) for e in excluded):
            raise ManifestFormatError(f"{source}: 'excluded' must be a list of paths")
        try:
            for path in excluded:
                check_relative_path(path)
            files = _digests(document["files"], source, "files")
            shipped = _digests(document.get("shipped", {}), source, "shipped")
        except WorkspaceScopeError as exc:
            raise ManifestFormatError(f"{source}: {exc}") from None
        for path in shipped:
            if not is_excluded(path, excluded):
                raise ManifestFormatError(f"{source}: shipped {path!r} is not in a run-time folder")
        return cls(plan_sha256, tuple(excluded), files, shipped)


def _digests(entries: Any, source: str, key: str) -> dict[str, FileDigest]:
    if not isinstance(entries, dict):
        raise ManifestFormatError(f"{source}: {key!r} must map paths to digests")
    found: dict[str, FileDigest] = {}
    for path, entry in entries.items():
        check_relative_path(path)
        if not isinstance(entry, dict) or set(entry) != {"sha256", "size"}:
            raise ManifestFormatError(f"{source}: entry {path!r} needs sha256 and size")
        size = entry["size"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ManifestFormatError(f"{source}: entry {path!r} has a bad size")
        found[path] = FileDigest(_hex_digest(entry["sha256"], f"{source}: {path}"), size)
    return found


def _hex_digest(value: Any, where: str) -> str:
    if not isinstance(value, str) or len(value) != 64 or not set(value) <= _HEX:
        raise ManifestFormatError(f"{where} is not a lower-case hex SHA-256 digest")
    return value


def hash_file(path: Path) -> FileDigest:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return FileDigest(digest.hexdigest(), size)


def measure_workspace(workspace: Path) -> WorkspaceManifest:
    """Hash every file in the measured scope; refuse links, devices and keys in it."""
    workspace = Path(workspace)
    plan = load_plan(workspace)
    excluded = runtime_dirs(plan, workspace)
    files: dict[str, FileDigest] = {}
    for entry in walk_scope(workspace, excluded):
        if entry.kind != "file":
            fix = {
                "secret": "move it into the PKI directory or out of the workspace",
                "symlink": "replace it with the file itself",
                "special": "remove it",
            }[entry.kind]
            raise WorkspaceScopeError(
                f"{workspace / entry.path} is {entry.reason}; a measured workspace cannot hold "
                f"it: {fix}"
            )
        files[entry.path] = hash_file(workspace / entry.path)
    return WorkspaceManifest(
        plan.canonical_hash(), excluded, files, shipped_models(workspace, plan)
    )


def shipped_models(workspace: Path, plan: Plan) -> dict[str, FileDigest]:
    """The initial model ``plan initialize`` wrote: it lives in the (otherwise unmeasured)
    checkpoint folder but is served to every site as the round-1 model, so the signature
    covers it; later checkpoints are run-time state and are not measured."""
    path = PurePosixPath(plan.output.checkpoints.replace("\\", "/").strip("/")) / INITIAL
    file = workspace / path
    if file.is_symlink() or not file.is_file():
        return {}
    return {path.as_posix(): hash_file(file)}


def manifest_path(workspace: Path) -> Path:
    return Path(workspace) / MANIFEST_FILE


def write_manifest(workspace: Path, manifest: WorkspaceManifest) -> Path:
    path = manifest_path(workspace)
    atomic_write_bytes(path, manifest.to_bytes())
    return path


def read_manifest(workspace: Path) -> tuple[WorkspaceManifest, bytes]:
    """The manifest and its raw bytes (which the signature covers)."""
    path = manifest_path(workspace)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ManifestFormatError(
            f"{path} not found: the model owner runs `bastion workspace measure` and "
            "`bastion workspace sign` on the workspace"
        ) from None
    return WorkspaceManifest.parse(raw, str(path)), raw
