"""The one atomic file write: a crash at any instant leaves either the old file or the new one.

Temp file in the same directory, write, flush, fsync, ``os.replace``, then fsync the
directory so the rename itself is durable. Every file Bastion must never leave half
written (checkpoints, keys, manifests, ledgers, port files) goes through here.

A file rewritten every round (the last checkpoint) can ask to ``reuse`` the file it
replaces: the old version is kept as ``.<name>.spare`` and the next write overwrites it
in place. Its pages are still in the page cache, and overwriting resident pages is far
cheaper than filling new ones: a 1 GiB checkpoint took 0.12-0.2 s instead of 2-3.2 s on
a VM whose host reclaims freed memory. The price is a second file of that size on disk.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from bastion import faults


@contextmanager
def atomic_writer(
    path: Path | str, mode: int | None = None, *, reuse: bool = False
) -> Iterator[BinaryIO]:
    """Yield a binary handle whose content replaces ``path`` whole when the block ends.

    ``mode`` sets the file's permissions before any byte is written (0o600 for private
    keys); without it the file gets the usual ``0o666 & ~umask``. If the block raises,
    ``path`` is left as it was and the temporary file is removed. With ``reuse`` (POSIX)
    the write goes into the spare kept from the last one, and the version it replaces
    becomes the next spare.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    reuse = reuse and os.name == "posix"
    fd, tmp = _reused_temporary(path) if reuse else (None, "")
    if fd is None:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if os.name == "posix":
            os.fchmod(fd, mode if mode is not None else _default_mode())
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            handle.truncate()  # a reused spare may be longer than what was written
            faults.point("atomic.before_fsync", path.name)
            os.fsync(handle.fileno())
        faults.point("atomic.before_rename", path.name)
        kept = _keep_replaced(path) if reuse else None
        os.replace(tmp, path)
        faults.point("atomic.after_rename", path.name)
        if kept is not None:
            with contextlib.suppress(OSError):  # the new version is in place whatever happens
                os.replace(kept, spare_path(path))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if os.name == "posix":  # a directory cannot be opened for fsync on Windows
        fsync_directory(path.parent)


def spare_path(path: Path) -> Path:
    """Where ``atomic_writer(..., reuse=True)`` keeps the version of ``path`` it replaced."""
    return path.parent / f".{path.name}.spare"


def _reused_temporary(path: Path) -> tuple[int | None, str]:
    """The spare, renamed to a temporary name and opened for overwriting in place; no fd
    where there is none, or where it is not a plain file of ours alone: a spare that is a
    link, or that has another name (a hard link someone keeps), is never written into."""
    tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        os.rename(spare_path(path), tmp)
    except OSError:
        return None, ""
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_NOFOLLOW)
    except OSError:
        Path(tmp).unlink(missing_ok=True)
        return None, ""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1 or info.st_uid != os.getuid():
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        return None, ""
    return fd, tmp


def _keep_replaced(path: Path) -> str | None:
    """A second name for the version of ``path`` about to be replaced (it becomes the
    spare once the new version is in place); None if there is none to keep."""
    kept = str(path.parent / f".{path.name}.spare.tmp")
    Path(kept).unlink(missing_ok=True)
    try:
        os.link(path, kept, follow_symlinks=False)
    except OSError:
        return None  # no old version, or a filesystem without hard links
    return kept


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
