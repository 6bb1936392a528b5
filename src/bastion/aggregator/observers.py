"""Observers every federation has: the metrics log, and the attestation verdicts for status."""

from __future__ import annotations

from typing import Any

from bastion.aggregator.events import (
    AttestationVerdict,
    FederationFinished,
    ProtocolReported,
    ResultAccepted,
    ResultRejected,
    RoundEvent,
    RoundObserver,
    RoundReported,
    RoundRestarted,
    RoundSkipped,
    RoundStarted,
    SiteBack,
    SiteLost,
    TaskDeclined,
    TaskFailed,
    TrainingStopped,
)
from bastion.metrics.log import MetricsLog


class MetricsRecorder(RoundObserver):
    """Writes the round events to ``logs/metrics.jsonl``, one JSON object each."""

    def __init__(self, metrics: MetricsLog) -> None:
        self.metrics = metrics

    def notify(self, event: RoundEvent) -> None:
        write = self.metrics.write
        if isinstance(event, RoundStarted):
            write(
                "round_start",
                round=event.round,
                final_evaluation=event.final_evaluation,
                collaborators=list(event.collaborators),
            )
        elif isinstance(event, ResultAccepted):
            extra = {"secure_aggregation": True} if event.secure_aggregation else {}
            write(
                "task",
                round=event.round,
                collaborator=event.collaborator,
                task=event.task,
                examples=event.example_count,
                metrics=dict(event.metrics),
                **extra,
            )
        elif isinstance(event, ResultRejected):
            write(
                "rejected",
                round=event.round,
                collaborator=event.collaborator,
                task=event.task,
                reason=event.reason,
            )
        elif isinstance(event, TaskDeclined):
            write(
                "declined",
                round=event.round,
                collaborator=event.collaborator,
                task=event.task,
                reason=event.reason,
                metrics=dict(event.metrics),
            )
        elif isinstance(event, TaskFailed):
            write(
                "failed",
                round=event.round,
                collaborator=event.collaborator,
                task=event.task,
                error=event.error,
            )
        elif isinstance(event, SiteLost):
            write("site_lost", collaborator=event.collaborator, silent_seconds=event.silent_seconds)
        elif isinstance(event, SiteBack):
            write("site_back", collaborator=event.collaborator, away_seconds=event.away_seconds)
        elif isinstance(event, RoundRestarted):
            write("round_restart", round=event.round, late=list(event.late))
        elif isinstance(event, RoundSkipped):
            write("round_skipped", round=event.round, reason=event.reason)
        elif isinstance(event, ProtocolReported):
            write(event.kind, **dict(event.fields))
        elif isinstance(event, RoundReported):
            write("round", **dict(event.record))
        elif isinstance(event, TrainingStopped):
            write(event.record, round=event.round, reason=event.reason)
        elif isinstance(event, FederationFinished):
            stopped = {"stopped": event.stopped} if event.stopped else {}
            write("finished", rounds=event.rounds, best=event.best, **stopped)


class AttestationStatus(RoundObserver):
    """Each collaborator's latest attestation verdict, for ``bastion status``."""

    def __init__(self) -> None:
        self._verdicts: dict[str, dict[str, object]] = {}

    def notify(self, event: RoundEvent) -> None:
        if isinstance(event, AttestationVerdict):
            self._verdicts[event.collaborator] = dict(event.verdict)

    def status_fields(self, round_completed: int) -> dict[str, Any]:
        return {"attestation": dict(sorted(self._verdicts.items()))}


class SiteFailures(RoundObserver):
    """Each site's failed tasks (how many, the last one), so repeated failures show in status."""

    def __init__(self) -> None:
        self._failures: dict[str, dict[str, object]] = {}

    def notify(self, event: RoundEvent) -> None:
        if isinstance(event, TaskFailed):
            entry = self._failures.setdefault(event.collaborator, {"count": 0})
            entry.update(
                count=int(entry["count"]) + 1,  # type: ignore[call-overload]
                round=event.round,
                task=event.task,
                error=event.error,
            )

    def status_fields(self, round_completed: int) -> dict[str, Any]:
        return {"failures": dict(sorted(self._failures.items()))}
