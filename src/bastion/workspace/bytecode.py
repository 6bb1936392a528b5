"""A workspace's modules run from their verified source, never from cached bytecode.

A workspace is measured without its ``__pycache__`` (bytecode is a build product), so a
``.pyc`` planted there would run instead of the code the model owner signed. Modules under
a workspace are therefore compiled from source when imported, and no bytecode is written
there. Every other module (the site's installed packages, Bastion itself) keeps its
ordinary bytecode cache: a process-wide private ``sys.pycache_prefix``, which this
replaces, recompiled PyTorch and every other package from source at each start, about
6 CPU-seconds for a PyTorch collaborator.
"""

from __future__ import annotations

import sys
from importlib.machinery import (
    EXTENSION_SUFFIXES,
    SOURCE_SUFFIXES,
    ExtensionFileLoader,
    FileFinder,
    SourceFileLoader,
)
from pathlib import Path
from types import CodeType


class SourceOnlyLoader(SourceFileLoader):
    """Compiles a module from its source file; reads and writes no bytecode."""

    def get_code(self, fullname: str) -> CodeType:
        path = self.get_filename(fullname)
        return self.source_to_code(self.get_data(path), path)


class _WorkspaceFinders:
    """A ``sys.path_hooks`` entry: a source-only finder for a path inside a workspace root,
    ``ImportError`` (the next hook's turn) for any other path."""

    def __init__(self) -> None:
        self.roots: set[Path] = set()

    def covers(self, entry: str) -> bool:
        path = Path(entry or ".").resolve()
        return any(path.is_relative_to(root) for root in self.roots)

    def __call__(self, entry: str) -> FileFinder:
        if not self.covers(entry):
            raise ImportError(f"{entry!r} is not inside a workspace")
        return FileFinder(
            entry,
            (ExtensionFileLoader, EXTENSION_SUFFIXES),
            (SourceOnlyLoader, SOURCE_SUFFIXES),
        )


_FINDERS = _WorkspaceFinders()


def ignore_workspace_bytecode(workspace: Path) -> None:
    """From now on, import every module under ``workspace`` from its source (call it after
    the workspace is verified, before its task code is imported)."""
    _FINDERS.roots.add(Path(workspace).resolve())
    if _FINDERS not in sys.path_hooks:
        sys.path_hooks.insert(0, _FINDERS)
    for entry in [e for e in sys.path_importer_cache if _FINDERS.covers(e)]:
        del sys.path_importer_cache[entry]  # finders made before the hook may read bytecode
