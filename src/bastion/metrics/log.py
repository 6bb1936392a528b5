"""The metrics log: one JSON object per line in ``logs/metrics.jsonl``.

Metrics go here, not to log lines, so that ``bastion status``, plots and tests read
the same numbers the aggregator computed.
"""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """Append-only JSONL writer; every line carries a wall-clock time stamp."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def write(self, event: str, **fields: Any) -> None:
        record = {"time": round(time.time(), 3), "event": event, **fields}
        line = json.dumps(_finite(record), sort_keys=False)
        with self._lock, self.path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All records of a metrics log; a torn last line (crash mid-write) is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def round_summaries(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-round summaries, the last one per round number winning (resumed runs)."""
    by_round: dict[int, dict[str, Any]] = {}
    for record in records:
        if record.get("event") == "round":
            by_round[int(record["round"])] = record
    return [by_round[r] for r in sorted(by_round)]


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
