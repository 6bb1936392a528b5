"""Which workspace files an enclave may trust: code and plan yes; keys, certificates,
hidden files, caches and separately mounted directories no."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

SECRET_SUFFIXES = frozenset(
    {".key", ".pem", ".crt", ".cer", ".der", ".p12", ".pfx", ".csr", ".jks", ".p8", ".pk8"}
)
SECRET_DIR_NAMES = frozenset({"pki", "secrets", "certs"})


@dataclass(frozen=True)
class WorkspaceFiles:
    """The workspace files to trust, and those left out with the reason why."""

    trusted: tuple[Path, ...]
    excluded: tuple[tuple[Path, str], ...]
    #: Keys, certificates and key directories among ``excluded``.
    secrets: tuple[Path, ...]


def is_secret_file(path: Path) -> str | None:
    """Why ``path`` looks like a key or certificate, or None: such files are never baked in."""
    if path.suffix.lower() in SECRET_SUFFIXES:
        return f"{path.suffix} file (key or certificate)"
    if _is_plaintext_pem(path):
        return "PEM content (key or certificate)"
    return None


def first_plaintext(directory: Path) -> Path | None:
    """A plaintext PEM, JSON or safetensors file under ``directory``, if any.

    Gramine's encrypted files start with a binary header, so any of these means the
    directory was not sealed and an encrypted mount over it would fail to open it.
    """
    if not directory.is_dir():
        return None
    for root, _, files in os.walk(directory):
        for name in sorted(files):
            path = Path(root) / name
            if _is_plaintext_pem(path) or _is_plaintext_json_or_safetensors(path):
                return path
    return None


def _is_plaintext_pem(path: Path) -> bool:
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with path.open("rb") as handle:
            return b"-----BEGIN " in handle.read(4096)
    except OSError:
        return False


def _is_plaintext_json_or_safetensors(path: Path) -> bool:
    """JSON starts with ``{``; safetensors with an 8-byte header length, then ``{``."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with path.open("rb") as handle:
            head = handle.read(9)
    except OSError:
        return False
    return head[:1] == b"{" or head[8:9] == b"{"


def select_workspace_files(workspace: Path, *, skip: Iterable[Path] = ()) -> WorkspaceFiles:
    """Walk the workspace: code and plan are trusted; secrets, hidden files, caches and the
    separately mounted directories in ``skip`` are left out."""
    workspace = Path(workspace).resolve()
    skipped = {Path(p).resolve() for p in skip}
    trusted: list[Path] = []
    excluded: list[tuple[Path, str]] = []
    secrets: list[Path] = []
    for root, dirs, files in os.walk(workspace):
        here = Path(root)
        for name in sorted(dirs):
            sub = here / name
            if name.lower() in SECRET_DIR_NAMES:
                secrets.append(sub)
                excluded.append((sub, "key or certificate directory"))
                dirs.remove(name)
            elif reason := _excluded_dir_reason(sub, skipped):
                excluded.append((sub, reason))
                dirs.remove(name)
        dirs.sort()
        for name in sorted(files):
            path = here / name
            if secret := is_secret_file(path):
                secrets.append(path)
                excluded.append((path, secret))
            elif name.startswith("."):
                excluded.append((path, "hidden file"))
            elif path.is_symlink():
                excluded.append((path, "symlink (its target would be trusted unseen)"))
            elif not path.is_file():
                excluded.append((path, "not a regular file"))
            else:
                trusted.append(path)
    return WorkspaceFiles(tuple(trusted), tuple(excluded), tuple(secrets))


def _excluded_dir_reason(directory: Path, skipped: set[Path]) -> str | None:
    if directory.resolve() in skipped:
        return "mounted separately"
    if directory.name.startswith("."):
        return "hidden directory"
    if directory.name == "__pycache__":
        return "bytecode cache"
    if directory.is_symlink():
        return "symlink (its target would be trusted unseen)"
    return None
