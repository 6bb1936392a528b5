"""Comparing a workspace on disk with its manifest, file by file, in path order."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bastion.errors import BastionError
from bastion.workspace.manifest import WorkspaceManifest, hash_file
from bastion.workspace.scope import walk_scope

ChangeKind = Literal["differs", "added", "missing"]


class WorkspaceTampered(BastionError):
    """A workspace file differs from, is added to, or is missing from the signed manifest."""


@dataclass(frozen=True)
class Change:
    path: str
    kind: ChangeKind
    detail: str

    def describe(self) -> str:
        return f"{self.path} {self.detail}"


def changes(workspace: Path, manifest: WorkspaceManifest) -> list[Change]:
    """Every difference between the files in scope and the manifest, sorted by path."""
    workspace = Path(workspace)
    found: list[Change] = []
    seen: set[str] = set()
    for entry in walk_scope(workspace, manifest.excluded):
        seen.add(entry.path)
        expected = manifest.files.get(entry.path)
        if entry.kind != "file":
            kind: ChangeKind = "differs" if expected else "added"
            found.append(Change(entry.path, kind, f"is {entry.reason}"))
        elif expected is None:
            found.append(Change(entry.path, "added", "was added (it is not in the manifest)"))
        else:
            actual = hash_file(workspace / entry.path)
            if actual != expected:
                found.append(
                    Change(
                        entry.path,
                        "differs",
                        f"differs (sha256 {actual.sha256[:16]}…, {actual.size} bytes here; "
                        f"{expected.sha256[:16]}…, {expected.size} bytes in the manifest)",
                    )
                )
    for path in manifest.files:
        if path not in seen:
            found.append(Change(path, "missing", "is missing"))
    # A file shipped in a run-time folder (the initial model) is compared where it lies;
    # a site that received the workspace without it needs none (the aggregator serves it).
    for path, expected in manifest.shipped.items():
        file = workspace / path
        if not file.exists() and not file.is_symlink():
            continue
        if file.is_symlink() or not file.is_file():
            found.append(Change(path, "differs", "is not a regular file"))
            continue
        actual = hash_file(file)
        if actual != expected:
            found.append(
                Change(
                    path,
                    "differs",
                    f"differs (sha256 {actual.sha256[:16]}…, {actual.size} bytes here; "
                    f"{expected.sha256[:16]}…, {expected.size} bytes in the manifest)",
                )
            )
    return sorted(found, key=lambda change: change.path)


RUN_FIX = (
    "Refusing to run its code; get the model owner's signed workspace again "
    "(`bastion workspace import`) or ask them to measure and sign this one"
)


def require_unchanged(
    workspace: Path, manifest: WorkspaceManifest, what: str, fix: str = RUN_FIX
) -> None:
    """Raise naming the first changed file (in path order) and how many more there are."""
    found = changes(workspace, manifest)
    if not found:
        return
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    raise WorkspaceTampered(
        f"workspace {workspace} does not match {what}: {found[0].describe()}{more}. {fix}"
    )
