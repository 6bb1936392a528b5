"""Each streaming upload's own copy of its values, from which a refused upload's folds are
read back and subtracted (``aggregator.streaming``): in memory for small models, in an
unlinked spill file on disk for larger ones, and in both cases kept for the next uploads.

In memory up to ``IN_MEMORY_UP_TO_BYTES`` per upload. A spill file costs a system call, the
file system's bookkeeping and a page-cache copy per chunk whatever the model's size; a
buffer costs a ``memcpy``. With a 1M-float32 model and 10 collaborators, three alternated
pairs of runs on a 2-core VM took 0.238-0.273 s a round with the copies in memory against
0.262-0.330 s in kept files (``benchmarks/scale.py overhead``). Above the limit the buffers
would add the uploads streaming at once, times the model, to the aggregator's resident
memory, which ``aggregator.streaming`` keeps O(model); so they go to disk, where the page
cache is the kernel's to reclaim.

A store (buffer or file) is borrowed at an upload's first write, inside its upload slot,
not when its stream opens: ten sites uploading at once used to open ten spill files, eight
of them new every round, and each new file made the kernel find fresh page-cache pages for
every byte. On a virtual machine that reports free memory to its host, a page that has been
free for a couple of seconds is backed again on first touch: measured on a 2-core VM,
writing a new spill filled at about 0.4 GB/s, a third of a 1 GiB round's aggregator CPU.
A kept store's pages stay resident, and the next upload overwrites them at memory speed.
With 10M float32 and 10 sites, the uploads took 0.73-0.92 s a round against 0.84-1.14 s.

What is kept is bounded: at most ``keep`` idle stores (the uploads that stream at once),
each as large as the largest upload it held. Files are unlinked, so their disk space comes
back when the aggregator closes them or exits.
"""

from __future__ import annotations

import os
import tempfile
import threading
from typing import IO, Protocol

from bastion.errors import ProtocolError

#: Per upload: a 4M-float32 model (16 MiB) keeps its uploads' copies in memory.
IN_MEMORY_UP_TO_BYTES = 16 * 1024 * 1024


class Store(Protocol):
    """Where a copy's bytes live: written and read by position."""

    @property
    def closed(self) -> bool: ...

    def holds(self, nbytes: int) -> bool:
        """Whether an upload of ``nbytes`` fits (a file grows as needed)."""
        ...

    def write_at(self, offset: int, data: memoryview) -> None: ...

    def read_at(self, offset: int, nbytes: int) -> bytes | memoryview: ...

    def close(self) -> None:
        """Release what the store holds (disk space or memory)."""
        ...


class FileStore:
    """A store in an unlinked temporary file (not ``algorithms.spill.SpillFile``, the
    robust rules' per-round file of whole updates)."""

    def __init__(self, directory: str | None = None) -> None:
        self._file: IO[bytes] = tempfile.TemporaryFile(  # noqa: SIM115 - open across uploads
            prefix="bastion-upload-", dir=directory
        )

    @property
    def closed(self) -> bool:
        return self._file.closed

    def fileno(self) -> int:
        return self._file.fileno()

    def holds(self, nbytes: int) -> bool:
        return True

    def write_at(self, offset: int, data: memoryview) -> None:
        os.pwrite(self._file.fileno(), data, offset)

    def read_at(self, offset: int, nbytes: int) -> bytes:
        return os.pread(self._file.fileno(), nbytes, offset)

    def close(self) -> None:
        self._file.close()


class MemoryStore:
    """A store in one buffer of ``capacity`` bytes."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._buffer: bytearray | None = bytearray(capacity)

    @property
    def closed(self) -> bool:
        return self._buffer is None

    def holds(self, nbytes: int) -> bool:
        return self.capacity >= nbytes

    def write_at(self, offset: int, data: memoryview) -> None:
        view = memoryview(data).cast("B")
        if self._buffer is None:
            raise ValueError("the buffer is closed")
        if offset < 0 or offset + view.nbytes > self.capacity:
            raise ProtocolError(
                f"an upload's values run past the model's {self.capacity} bytes "
                f"(at offset {offset}, {view.nbytes} more)"
            )
        memoryview(self._buffer)[offset : offset + view.nbytes] = view

    def read_at(self, offset: int, nbytes: int) -> memoryview:
        if self._buffer is None or offset < 0 or offset + nbytes > self.capacity:
            raise ValueError(f"nothing can be read at {offset}..{offset + nbytes}")
        return memoryview(self._buffer)[offset : offset + nbytes]

    def close(self) -> None:
        self._buffer = None


class UploadCopy:
    """One upload's copy of at most ``nbytes``. Its store is borrowed from the pool at the
    first write, inside the upload's slot: an upload still waiting for a slot holds
    nothing, so no more stores are in use than uploads stream at once, and the kept ones
    cover them round after round."""

    def __init__(self, pool: UploadCopies, nbytes: int) -> None:
        self._pool = pool
        self.nbytes = nbytes
        self.store: Store | None = None
        self.closed = False

    def write_at(self, offset: int, data: memoryview) -> None:
        """Write ``data`` at ``offset``: appends, or a chunk rewritten in place."""
        if self.closed:
            raise ValueError("this upload's copy is closed")
        if self.store is None:
            self.store = self._pool.borrow(self.nbytes)
        self.store.write_at(offset, data)

    def read_at(self, offset: int, nbytes: int) -> bytes | memoryview:
        """``nbytes`` from ``offset``: only ever what this upload wrote there."""
        if self.store is None or self.closed:
            raise ValueError(f"nothing was written at {offset}..{offset + nbytes}")
        return self.store.read_at(offset, nbytes)

    def close(self) -> None:
        """Done: the store goes back to the pool (once: two uploads never share one)."""
        if not self.closed:
            self.closed = True
            store, self.store = self.store, None
            if store is not None:
                self._pool.give_back(store)


class UploadCopies:
    """The uploads' copies, and a small pool of the stores behind them."""

    def __init__(
        self,
        keep: int = 2,
        directory: str | None = None,
        in_memory_up_to: int = IN_MEMORY_UP_TO_BYTES,
    ) -> None:
        if keep < 0:
            raise ValueError(f"keep must be 0 or more, got {keep}")
        self._keep = keep
        self._directory = directory
        self._in_memory_up_to = in_memory_up_to
        self._idle: list[Store] = []
        self._lock = threading.Lock()
        self._closed = False

    def take(self, nbytes: int) -> UploadCopy:
        """A copy for an upload of at most ``nbytes`` of values; it holds nothing yet."""
        return UploadCopy(self, nbytes)

    def borrow(self, nbytes: int) -> Store:
        """An idle store that fits ``nbytes``, or a new one. Its old content is stale beyond
        what the new upload writes, and an upload reads back only what it wrote."""
        in_memory = nbytes <= self._in_memory_up_to
        with self._lock:
            for index, store in enumerate(self._idle):
                if in_memory == isinstance(store, MemoryStore) and store.holds(nbytes):
                    return self._idle.pop(index)
        if in_memory:
            return MemoryStore(nbytes)
        return FileStore(self._directory)

    def give_back(self, store: Store) -> None:
        """Keep ``store`` for a later upload, or close it when enough are idle already."""
        with self._lock:
            if not self._closed and len(self._idle) < self._keep and not store.closed:
                self._idle.append(store)
                return
        store.close()

    def close(self) -> None:
        """Close the idle stores (their space comes back); later ones are closed on return."""
        with self._lock:
            idle, self._idle, self._closed = self._idle, [], True
        for store in idle:
            store.close()

    @property
    def idle(self) -> int:
        """How many stores wait for an upload."""
        with self._lock:
            return len(self._idle)
