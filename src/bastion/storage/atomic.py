"""The one atomic file write: a crash at any instant leaves either the old file or the new one.

Temp file in the same directory, write, flush, fsync, ``os.replace``, then fsync the
directory so the rename itself is durable. Every file Bastion must never leave half
written (checkpoints, keys, manifests, ledgers, port files) goes through here.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from bastion import faults


@contextmanager
def atomic_writer(path: Path | str, mode: int | None = None) -> Iterator[BinaryIO]:
    """Yield a binary handle whose content replaces ``path`` whole when the block ends.

    ``mode`` sets the file's permissions before any byte is written (0o600 for private
    keys); without it the file gets the usual ``0o666 & ~umask``. If the block raises,
    ``path`` is left as it was and the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if os.name == "posix":
            os.fchmod(fd, mode if mode is not None else _default_mode())
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            faults.point("atomic.before_fsync", path.name)
            os.fsync(handle.fileno())
        faults.point("atomic.before_rename", path.name)
        os.replace(tmp, path)
        faults.point("atomic.after_rename", path.name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if os.name == "posix":  # a directory cannot be opened for fsync on Windows
        fsync_directory(path.parent)


def atomic_write_bytes(path: Path | str, data: bytes, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` atomically (see ``atomic_writer``)."""
    with atomic_writer(path, mode) as handle:
        handle.write(data)


def atomic_write_text(path: Path | str, text: str, mode: int | None = None) -> None:
    """Write ``text`` as UTF-8 to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"), mode)


def discard_temporaries(path: Path | str) -> list[Path]:
    """Remove the temporary files a crash left behind while ``path`` was being written.

    ``atomic_writer`` removes its temp file when the block raises, but a process killed
    between the write and the rename cannot: without this, every such crash leaves a
    whole-model ``.<name>.*.tmp`` in the directory for good. Call it only where one
    writer owns the directory (the aggregator under its lock, at startup).
    """
    path = Path(path)
    stale = sorted(path.parent.glob(f".{path.name}.*.tmp")) if path.parent.is_dir() else []
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def fsync_directory(directory: Path | str) -> None:
    """Make a rename in ``directory`` durable: the directory entry itself must reach the disk."""
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _default_mode() -> int:
    """``0o666`` less the process umask: what ``open()`` would have given a new file.

    Linux reports the umask in ``/proc/self/status``; elsewhere it is read by setting it
    and putting it back (a brief window another thread could observe).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask
