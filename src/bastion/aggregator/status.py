"""The status file ``bastion status`` reads, and who has been in contact.

Each write lists every site seen, so thousands of first contacts (a simulation) would
cost O(n^2) if each wrote at once: first contacts refresh the file at most once a second.
"""

from __future__ import annotations

import math
import time
from typing import Any

from bastion.storage.checkpoints import CheckpointStore

#: First contacts refresh the status file at most this often.
SUMMARY_INTERVAL_SECONDS = 1.0


class StatusFile:
    """``save/state.json``: the engine's summary, written atomically, with each site's last contact."""

    def __init__(self, store: CheckpointStore) -> None:
        self._store = store
        self.last_seen: dict[str, float] = {}
        self._written = -math.inf  # time.monotonic() of the last write
        self._stale = False
        self.lost: dict[str, float] = {}  # site -> time.time() it was last heard of
        self.down: set[str] = set()  # sites that stopped after a failed task, until they call

    def contact(self, collaborator: str) -> tuple[bool, float | None]:
        """Record a call from ``collaborator``: (first contact?, seconds away if it was lost)."""
        first = collaborator not in self.last_seen
        now = time.time()
        self.last_seen[collaborator] = now
        away = self.lost.pop(collaborator, None)
        self.down.discard(collaborator)
        self._stale = self._stale or first or away is not None
        return first, None if away is None else now - away

    def available(self, roster: list[str]) -> list[str]:
        """The roster less sites known to be gone (lost, or stopped after a failure); the
        whole roster when that leaves nobody, so a round always has someone to wait for."""
        present = [name for name in roster if name not in self.lost and name not in self.down]
        return present or list(roster)

    def newly_lost(self, silent_seconds: float) -> list[tuple[str, float]]:
        """Sites silent for longer than ``silent_seconds`` not yet reported: (site, silence)."""
        now = time.time()
        found = [
            (name, now - seen)
            for name, seen in self.last_seen.items()
            if name not in self.lost and now - seen > silent_seconds
        ]
        for name, _ in found:
            self.lost[name] = self.last_seen[name]
        self._stale = self._stale or bool(found)
        return found

    def due(self) -> bool:
        """Whether new contacts wait to be written and the last write is old enough."""
        return self._stale and time.monotonic() - self._written >= SUMMARY_INTERVAL_SECONDS

    def write(self, summary: dict[str, Any]) -> None:
        self._written = time.monotonic()
        self._stale = False
        summary["collaborators_seen"] = dict(sorted(self.last_seen.items()))
        summary["lost"] = sorted(self.lost)
        summary["updated"] = time.time()
        self._store.write_summary(summary)
