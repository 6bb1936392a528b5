"""What the dashboard shows, read from where it lives: the director's database, or one
standalone aggregator's round events (an observer) and status file.

A source answers ``sites()``, ``jobs()``, ``events(job)`` and ``log_tail(job)``; the
summary of a job (round progress, ETA, metric series, participation, privacy spend) is
computed from its round events here, the same way for both.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Protocol

from bastion.aggregator.events import RoundEvent, RoundObserver
from bastion.director.db import DirectorDB
from bastion.director.job_process import event_message

#: a site silent this long shows as offline (the director's own rule, by default)
DEFAULT_OFFLINE_SECONDS = 15.0
LOG_TAIL_LINES = 40


class Source(Protocol):
    offline_after: float

    def sites(self) -> list[dict[str, Any]]: ...

    def jobs(self) -> list[dict[str, Any]]: ...

    def events(self, job_id: str) -> list[dict[str, Any]]: ...

    def log_tail(self, job_id: str, lines: int = LOG_TAIL_LINES) -> list[str]: ...


def tail(path: Path, lines: int) -> list[str]:
    if not path.is_file():
        return []
    with path.open("rb") as handle:
        handle.seek(0, 2)
        size = handle.tell()
        handle.seek(max(0, size - 64 * 1024))
        text = handle.read().decode("utf-8", errors="replace")
    return text.splitlines()[-lines:]


class DirectorSource:
    """The director's registry and job queue, read from its database."""

    def __init__(
        self, db: DirectorDB, jobs_dir: Path, offline_after: float = DEFAULT_OFFLINE_SECONDS
    ) -> None:
        self.db = db
        self.jobs_dir = Path(jobs_dir)
        self.offline_after = offline_after

    def sites(self) -> list[dict[str, Any]]:
        return self.db.sites()

    def jobs(self) -> list[dict[str, Any]]:
        jobs = []
        for job in self.db.jobs():
            decisions = self.db.decisions(job["id"])
            jobs.append(
                {
                    **{k: job[k] for k in ("id", "owner", "plan_name", "dataset", "rounds")},
                    **{k: job[k] for k in ("state", "reason", "submitted", "started", "ended")},
                    "roster": job["roster"],
                    "attestation": job["attestation"],
                    "decisions": {
                        s: {"decision": d, "reason": r} for s, (d, r) in decisions.items()
                    },
                }
            )
        return jobs

    def events(self, job_id: str) -> list[dict[str, Any]]:
        return [event for _, event in self.db.events(job_id)]

    def log_tail(self, job_id: str, lines: int = LOG_TAIL_LINES) -> list[str]:
        return tail(self.jobs_dir / job_id / "aggregator.log", lines)


class LiveFeed(RoundObserver):
    """A standalone aggregator's round events, kept in memory for its dashboard."""

    def __init__(self) -> None:
        self._events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.started = time.time()
        self.ended: float | None = None

    def notify(self, event: RoundEvent) -> None:
        message = event_message(event)
        if message is None:
            return
        with self._lock:
            self._events.append(message)
            if message["type"] == "finished":
                self.ended = time.time()

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._events)


class AggregatorSource:
    """One federation served by ``bastion aggregator start --dashboard``: a single job."""

    def __init__(
        self,
        feed: LiveFeed,
        job: dict[str, Any],
        status_file: Path,
        log_file: Path | None = None,
        offline_after: float = DEFAULT_OFFLINE_SECONDS,
    ) -> None:
        self.feed = feed
        self.job = job
        self.status_file = Path(status_file)
        self.log_file = log_file
        self.offline_after = offline_after
        self._log: deque[str] = deque(maxlen=LOG_TAIL_LINES)

    def remember(self, line: str) -> None:
        self._log.append(line)

    def sites(self) -> list[dict[str, Any]]:
        try:
            status = json.loads(self.status_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            status = {}
        seen = status.get("collaborators_seen", {})
        attestation = status.get("attestation", {})
        return [
            {
                "name": name,
                "last_seen": last,
                "registered": last,
                "offers": {},
                "attestation": attestation.get(name),
            }
            for name, last in sorted(seen.items())
        ]

    def jobs(self) -> list[dict[str, Any]]:
        events = self.feed.snapshot()
        state = "finished" if any(e["type"] == "finished" for e in events) else "running"
        return [
            {
                **self.job,
                "state": state,
                "reason": "",
                "submitted": self.feed.started,
                "started": self.feed.started,
                "ended": self.feed.ended,
                "decisions": {},
            }
        ]

    def events(self, job_id: str) -> list[dict[str, Any]]:
        return self.feed.snapshot() if job_id == self.job["id"] else []

    def log_tail(self, job_id: str, lines: int = LOG_TAIL_LINES) -> list[str]:
        if self.log_file is not None:
            return tail(self.log_file, lines)
        return list(self._log)[-lines:]


def summarize(job: dict[str, Any], events: list[dict[str, Any]]) -> dict[str, Any]:
    """A job's progress for the page: rounds, ETA, metric series, participation, privacy."""
    rounds: list[int] = []
    series: dict[str, list[float | None]] = {}
    participation: dict[str, dict[str, int]] = {}
    privacy: dict[str, Any] | None = None
    final: dict[str, Any] | None = None
    dropouts: list[dict[str, Any]] = []
    current = 0
    for event in events:
        kind = event.get("type")
        if kind == "round_started":
            current = int(event.get("round", 0))
        elif kind == "result":
            entry = participation.setdefault(
                str(event.get("collaborator")), {"results": 0, "failed": 0, "lost": 0}
            )
            entry["results"] += 1
        elif kind == "round":
            record = event.get("record", {})
            tasks = record.get("tasks", {}) or {}
            if record.get("final_evaluation"):
                final = {
                    t: {k: v for k, v in m.items() if k != "examples"} for t, m in tasks.items()
                }
                continue
            rounds.append(int(record.get("round", event.get("round", 0))))
            for task, metrics in tasks.items():
                for key, value in metrics.items():
                    if key == "examples":
                        continue
                    column = series.setdefault(f"{task}/{key}", [None] * (len(rounds) - 1))
                    column.append(float(value))
            for column in series.values():
                while len(column) < len(rounds):
                    column.append(None)
            for what in ("failed", "lost"):
                for site in record.get(what, []) or []:
                    entry = participation.setdefault(
                        str(site), {"results": 0, "failed": 0, "lost": 0}
                    )
                    entry[what] += 1
            missing = sorted({*(record.get("timed_out") or []), *(record.get("lost") or [])})
            if missing:
                dropouts.append({"round": rounds[-1], "sites": missing, "why": "timed out"})
            if isinstance(record.get("privacy"), dict):
                privacy = record["privacy"]
        elif kind == "secure_aggregation" and event.get("dropped"):
            dropouts.append(
                {
                    "round": int(event.get("round", 0)),
                    "sites": sorted(event["dropped"]),
                    "why": f"secure aggregation {event.get('outcome')}",
                }
            )
        elif kind == "site_lost":
            participation.setdefault(
                str(event.get("collaborator")), {"results": 0, "failed": 0, "lost": 0}
            )
    done = len(rounds)
    total = int(job.get("rounds") or 0)
    eta = None
    started = job.get("started")
    if job.get("state") == "running" and started and 0 < done < total:
        eta = (time.time() - float(started)) / done * (total - done)
    return {
        "rounds_done": done,
        "current_round": current,
        "rounds_total": total,
        "eta_seconds": eta,
        "series": {"round": rounds, **series},
        "participation": participation,
        "dropouts": dropouts[-20:],
        "privacy": privacy,
        "final_metrics": final,
    }
