"""The streaming intake's spill files, kept open from one upload to the next.

Every upload writes its chunks to a spill file, from which a refused upload's folds are
read back and subtracted (``aggregator.streaming``). A new file per upload makes the
kernel find fresh page-cache pages for every byte of every update, and drop them when the
file closes. On a virtual machine that reports free memory to its host, a page that has
been free for a couple of seconds is backed again on first touch: measured on a 2-core VM,
writing a new spill filled at about 0.4 GB/s, a third of a 1 GiB round's aggregator CPU.
A kept file's pages stay cached, and the next upload overwrites them at memory speed.

What a file keeps is bounded: at most ``keep`` idle files (the uploads that stream at
once), each as large as the largest upload it held; they are unlinked, so the disk space
comes back when the aggregator closes them or exits. The page cache they hold is the
kernel's to reclaim (written back first), not the aggregator's resident memory.
"""

from __future__ import annotations

import tempfile
import threading
from typing import IO


class SpillFiles:
    """A small pool of unlinked temporary files for uploads to spill into."""

    def __init__(self, keep: int = 2, directory: str | None = None) -> None:
        if keep < 0:
            raise ValueError(f"keep must be 0 or more, got {keep}")
        self._keep = keep
        self._directory = directory
        self._idle: list[IO[bytes]] = []
        self._lock = threading.Lock()
        self._closed = False

    def take(self) -> IO[bytes]:
        """An idle file, or a new one; its old content is stale beyond what the new upload
        writes, and an upload reads back only what it wrote."""
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return tempfile.TemporaryFile(prefix="bastion-upload-", dir=self._directory)

    def give_back(self, spill: IO[bytes]) -> None:
        """Keep ``spill`` for a later upload, or close it when enough are idle already."""
        with self._lock:
            if not self._closed and len(self._idle) < self._keep and not spill.closed:
                self._idle.append(spill)
                return
        spill.close()

    def close(self) -> None:
        """Close the idle files (their disk space comes back); later ones are closed on return."""
        with self._lock:
            idle, self._idle, self._closed = self._idle, [], True
        for spill in idle:
            spill.close()

    @property
    def idle(self) -> int:
        """How many files wait for an upload."""
        with self._lock:
            return len(self._idle)
