"""Keeping the aggregator's resident memory proportional to the model.

Chunks of a few MiB are allocated and freed by many gRPC threads. glibc raises its
mmap threshold dynamically after such frees, after which the chunks come from
per-thread arenas that never shrink: memory grows with the number of concurrent
collaborators. Pinning the threshold keeps large chunks on mmap, returned on free.
Measured with 8 collaborators and a 25M-parameter model: peak 1113 MB → 775 MB.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger("bastion.aggregator")

M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 1 << 20


def pin_mmap_threshold() -> bool:
    """Ask glibc to mmap every allocation of 1 MiB or more; False where that is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    library = ctypes.util.find_library("c")
    if library is None:
        return False
    try:
        libc = ctypes.CDLL(library)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    pinned = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    log.debug("glibc mmap threshold pinned at %d bytes: %s", MMAP_THRESHOLD_BYTES, pinned)
    return pinned
