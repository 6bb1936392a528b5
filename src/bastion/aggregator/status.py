"""The status file ``bastion status`` reads, and who has been in contact.

Each write lists every site seen, so thousands of first contacts (a simulation) would
cost O(n^2) if each wrote at once: first contacts refresh the file at most once a second.
"""

from __future__ import annotations

import math
import time
from typing import Any

from bastion.aggregator.checkpoint import CheckpointStore

#: First contacts refresh the status file at most this often.
SUMMARY_INTERVAL_SECONDS = 1.0


class StatusFile:
    """``save/state.json``: the engine's summary, written atomically, with each site's last contact."""

    def __init__(self, store: CheckpointStore) -> None:
        self._store = store
        self.last_seen: dict[str, float] = {}
        self._written = -math.inf  # time.monotonic() of the last write
        self._stale = False

    def contact(self, collaborator: str) -> bool:
        """Record a call from ``collaborator``; True on its first contact."""
        first = collaborator not in self.last_seen
        self.last_seen[collaborator] = time.time()
        self._stale = self._stale or first
        return first

    def due(self) -> bool:
        """Whether new contacts wait to be written and the last write is old enough."""
        return self._stale and time.monotonic() - self._written >= SUMMARY_INTERVAL_SECONDS

    def write(self, summary: dict[str, Any]) -> None:
        self._written = time.monotonic()
        self._stale = False
        summary["collaborators_seen"] = dict(sorted(self.last_seen.items()))
        summary["updated"] = time.time()
        self._store.write_summary(summary)
