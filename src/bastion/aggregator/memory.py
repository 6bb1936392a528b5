"""Keeping the aggregator's resident memory proportional to the model.

Chunks of a few MiB are allocated and freed by many gRPC threads. glibc raises its
mmap threshold dynamically after such frees, after which the chunks come from
per-thread arenas that never shrink: memory grows with the number of concurrent
collaborators. Pinning the threshold keeps large chunks on mmap, returned on free.
Measured with 8 collaborators and a 25M-parameter model: peak 1113 MB → 775 MB.

What stays below the threshold (gRPC's slices, protobuf and frame buffers of many threads)
still fills those arenas with free-but-held pages: malloc_trim on the live soak aggregator
at round 25 gave back 94 of its 350 MiB while Python's traced memory stayed flat.
``HeapTrim`` hands those pages back. Once a round (after the checkpoint) lowered the
soak's RSS medians by about 130 MiB but left a creep of about 0.4 MiB a round: what the
round's transfers freed between two trims stayed held, more of it as the rounds went on
(benchmarks/results/soak_bisect: no fault needed, unchanged with channelz off or
MALLOC_ARENA_MAX=2, back to round 20's level under a manual malloc_trim). It now also trims
after accepted results (at most once a second): trimming after every one cut the 1 MB
soak's slope from 0.09 to 0.03 MiB a round but the 10 MB one only from 0.42 to 0.38, so
the creep is still open.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bastion.aggregator.events import (
    Checkpointed,
    ResultAccepted,
    RoundClosed,
    RoundEvent,
    RoundObserver,
)

log = logging.getLogger("bastion.aggregator")

M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 1 << 20


def _glibc() -> Any | None:
    """The C library when it is glibc on Linux (mallopt and malloc_trim), else None."""
    if not sys.platform.startswith("linux"):
        return None
    library = ctypes.util.find_library("c")
    if library is None:
        return None
    try:
        libc = ctypes.CDLL(library)
    except OSError:
        return None
    return libc if all(hasattr(libc, f) for f in ("mallopt", "malloc_trim")) else None


def pin_mmap_threshold() -> bool:
    """Ask glibc to mmap every allocation of 1 MiB or more; False where that is not glibc."""
    libc = _glibc()
    if libc is None:
        return False
    mallopt = libc.mallopt
    pinned = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    log.debug("glibc mmap threshold pinned at %d bytes: %s", MMAP_THRESHOLD_BYTES, pinned)
    return pinned


class HeapTrim(RoundObserver):
    """Return the free pages of every glibc arena to the system after each checkpoint, and
    after an accepted result when the last trim is ``min_interval`` seconds old.

    Once a round was not enough: the model downloads and uploads between two checkpoints
    leave their freed buffers held in the arenas, and what is held grows over the rounds
    (at round 125 of a 10 MB soak, malloc_trim took the aggregator from 313 to 123 MiB).
    A trim after every result was the next step, but what it gives back is faulted in
    again by the next result: in a round of ten 4 MB results over 0.3 s, ten trims made
    the round about a fifth slower (0.38 s against 0.32 s, three alternations). Results
    of long rounds (large models) still trim one by one; short rounds trim a few times a
    second, and at every checkpoint.
    """

    def __init__(
        self, min_interval: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._libc = _glibc()
        self._min_interval = min_interval
        self._clock = clock
        self._last = -math.inf

    def notify(self, event: RoundEvent) -> None:
        if self._libc is None:
            return
        now = self._clock()
        if isinstance(event, Checkpointed) or (
            isinstance(event, ResultAccepted) and now - self._last >= self._min_interval
        ):
            self._libc.malloc_trim(0)
            self._last = now


class ResidentMemory(RoundObserver):
    """Each round's record says what the aggregator holds once the round has closed: its
    resident memory (after giving free pages back) and its open file descriptors.

    Operators see a leak in ``metrics.jsonl`` before it takes the machine down, and the soak
    benchmark reads "RSS after round N" from the process itself rather than from a sample
    that may land in the middle of the next round's transfers. Linux only (``/proc``).
    """

    def __init__(self, proc: Path = Path("/proc/self")) -> None:
        self._proc = proc
        self._libc = _glibc()

    def round_fields(self, closed: RoundClosed) -> dict[str, Any]:
        if self._libc is not None:
            self._libc.malloc_trim(0)
        try:
            status = (self._proc / "status").read_text()
            open_fds = len(os.listdir(self._proc / "fd"))
        except OSError:
            return {}
        rss_kib = next(
            (int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")),
            None,
        )
        if rss_kib is None:
            return {}
        return {"resident_memory": {"rss_bytes": rss_kib * 1024, "open_fds": open_fds}}
