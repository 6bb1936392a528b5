"""Which files a workspace measurement covers; one definition for the manifest, the
signature check, export and the Gramine trusted files.

Covered: every regular file under the workspace root, except

* the plan's run-time directories, wherever they lie inside the workspace:
  ``network.pki_dir`` (keys and certificates), ``output.checkpoints`` and ``output.logs``;
* ``__pycache__`` directories (Bastion imports a workspace's modules from their source,
  so bytecode there is never read: ``bastion.workspace.bytecode``);
* hidden files and directories (a name starting with ``.``: ``.git``, ``.venv``, editor and
  tool caches), which Python cannot import as modules;
* the manifest and its signature at the root (``workspace.manifest.json``/``.sig``).

Inside that scope a symbolic link, a device, FIFO or socket, or a file that looks like a
private key or certificate is never measured: :func:`walk_scope` reports it so that
measuring refuses and verifying names it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from bastion.errors import BastionError
from bastion.plan import Plan
from bastion.tee.workspace_files import is_secret_file

MANIFEST_FILE = "workspace.manifest.json"
SIGNATURE_FILE = "workspace.manifest.sig"
ROOT_EXCLUDED_FILES = frozenset({MANIFEST_FILE, SIGNATURE_FILE})
BYTECODE_DIR = "__pycache__"

EntryKind = Literal["file", "symlink", "special", "secret"]


class WorkspaceScopeError(BastionError):
    """The workspace holds something a measurement cannot cover safely."""


@dataclass(frozen=True)
class ScopeEntry:
    """One path inside the measured scope, relative to the workspace, in POSIX form."""

    path: str
    kind: EntryKind
    #: Why a non-file entry cannot be measured.
    reason: str = ""


def runtime_dirs(plan: Plan, workspace: Path) -> tuple[str, ...]:
    """The plan's PKI, checkpoint and log directories inside ``workspace``, as POSIX paths.

    A directory outside the workspace needs no exclusion; one that is the workspace itself
    (``.``) would exclude everything and is refused.
    """
    root = Path(workspace).resolve()
    keys = {
        "network.pki_dir": plan.network.pki_dir,
        "output.checkpoints": plan.output.checkpoints,
        "output.logs": plan.output.logs,
    }
    found: set[str] = set()
    for key, value in keys.items():
        target = (root / value).resolve()
        if target == root:
            raise WorkspaceScopeError(
                f"plan key '{key}' is {value!r}, the workspace itself: it must name a "
                "sub-directory (e.g. 'pki', 'save', 'logs') so that code and plan stay measured"
            )
        if target.is_relative_to(root):
            found.add(target.relative_to(root).as_posix())
    return tuple(sorted(found))


def check_relative_path(path: str) -> str:
    """A manifest path must be relative, POSIX, normalized and free of ``..``."""
    pure = PurePosixPath(path)
    if (
        not path
        or "\\" in path
        or "\0" in path
        or pure.is_absolute()
        or any(part in ("", ".", "..") for part in path.split("/"))
    ):
        raise WorkspaceScopeError(
            f"{path!r} is not a plain relative path (no '..', no leading '/', '/' separators)"
        )
    return path


def is_excluded(path: str, excluded_dirs: Iterable[str]) -> bool:
    """Whether a relative path falls outside the measured scope."""
    parts = path.split("/")
    if len(parts) == 1 and path in ROOT_EXCLUDED_FILES:
        return True
    if any(part.startswith(".") or part == BYTECODE_DIR for part in parts):
        return True
    return any(path == d or path.startswith(d + "/") for d in excluded_dirs)


def walk_scope(workspace: Path, excluded_dirs: Iterable[str]) -> Iterator[ScopeEntry]:
    """Every entry in the measured scope, sorted by path, without following links."""
    root = Path(workspace)
    excluded = tuple(excluded_dirs)
    entries: list[ScopeEntry] = []
    for directory, dirs, files in os.walk(root):
        here = Path(directory)
        base = here.relative_to(root).as_posix()
        prefix = "" if base == "." else base + "/"
        for name in list(dirs):
            rel = prefix + _decoded(name, here)
            if is_excluded(rel, excluded):
                dirs.remove(name)
            elif (here / name).is_symlink():
                dirs.remove(name)
                entries.append(ScopeEntry(rel, "symlink", "a symbolic link to a directory"))
        for name in files:
            rel = prefix + _decoded(name, here)
            if not is_excluded(rel, excluded):
                entries.append(_classify(here / name, rel))
    yield from sorted(entries, key=lambda entry: entry.path)


def _decoded(name: str, here: Path) -> str:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise WorkspaceScopeError(
            f"{here / name!r} has a file name that is not valid UTF-8: rename it"
        ) from None
    return name


def _classify(path: Path, rel: str) -> ScopeEntry:
    if path.is_symlink():
        return ScopeEntry(rel, "symlink", "a symbolic link (its target would be unmeasured)")
    if not path.is_file():
        return ScopeEntry(rel, "special", "not a regular file (device, FIFO or socket)")
    secret = is_secret_file(path)
    if secret:
        return ScopeEntry(rel, "secret", f"a private key or certificate ({secret})")
    return ScopeEntry(rel, "file")
