"""A local cache of parsed arrays as ``.npy`` files, safe for many processes at once.

Each cache entry is a folder of ``.npy`` files. It is written under a temporary name and
renamed into place in one step, so a reader sees either no entry or a whole one: several
collaborators that start together may all parse, but none reads a half-written file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from bastion.storage.atomic import atomic_writer, fsync_directory

log = logging.getLogger(__name__)


def cache_root() -> Path:
    """``$BASTION_CACHE_DIR``, else ``$XDG_CACHE_HOME/bastion``, else ``~/.cache/bastion``."""
    explicit = os.environ.get("BASTION_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "bastion"
    return Path.home() / ".cache" / "bastion"


def source_key(path: Path) -> str:
    """A short key that changes whenever the file at ``path`` is moved, resized or rewritten."""
    stat = path.stat()
    identity = f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}"
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def read_entry(entry: Path, names: Iterable[str]) -> dict[str, np.ndarray] | None:
    """The arrays of a cache entry, or None when it is absent or unreadable (then removed)."""
    arrays: dict[str, np.ndarray] = {}
    for name in names:
        try:
            arrays[name] = np.load(entry / f"{name}.npy", allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError) as exc:
            log.warning("discarding unreadable cache file %s: %s", entry / f"{name}.npy", exc)
            discard_entry(entry)
            return None
    return arrays


def write_entry(entry: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Publish ``arrays`` as the entry ``entry`` in one atomic rename; the first writer wins."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".tmp", dir=entry.parent))
    try:
        for name, array in arrays.items():
            with atomic_writer(staging / f"{name}.npy") as handle:
                np.save(handle, array, allow_pickle=False)
        try:
            os.rename(staging, entry)
        except OSError:
            if not entry.is_dir():
                raise
            # Another process published the same entry first; theirs is as good as ours.
            shutil.rmtree(staging, ignore_errors=True)
            return
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_directory(entry.parent)


def discard_entry(entry: Path) -> None:
    """Remove a damaged or outdated entry; a reader that loses the race just parses again."""
    shutil.rmtree(entry, ignore_errors=True)


def prune_siblings(entry: Path, prefix: str) -> None:
    """Remove the entries beside ``entry`` whose names start with ``prefix``: outdated versions."""
    for sibling in entry.parent.glob(f"{prefix}*"):
        if sibling != entry and sibling.is_dir():
            discard_entry(sibling)
