"""Differential privacy's observers: the central DP ledger and the local DP budget tracker.

Both end training early when a budget runs out (the next round is the final evaluation)
and report their figures in every round's record and in ``bastion status``.
"""

from __future__ import annotations

import logging
from typing import Any

from bastion.aggregator.events import (
    RoundClosed,
    RoundEvent,
    RoundObserver,
    TaskDeclined,
    TrainingStop,
)
from bastion.aggregator.local_privacy import LocalPrivacyTracker
from bastion.privacy.dp.ledger import PrivacyLedger

log = logging.getLogger("bastion.aggregator")

BUDGET_REACHED = "privacy_budget_reached"


class CentralPrivacyObserver(RoundObserver):
    """DP-FedAvg's epsilon after each round, and the stop before the budget is passed."""

    def __init__(self, ledger: PrivacyLedger) -> None:
        self.ledger = ledger

    def stop_training(self, next_round: int) -> TrainingStop | None:
        reason = self.ledger.stop_reason(next_round)
        return TrainingStop(BUDGET_REACHED, reason) if reason else None

    def round_fields(self, closed: RoundClosed) -> dict[str, Any]:
        report = self.ledger.report(closed.round_completed)
        if not closed.progress.final_evaluation:
            log.info(
                "round %d: epsilon %.4g at delta %g spent so far",
                closed.progress.number,
                report["epsilon"],
                report["delta"],
            )
        return {"privacy": report}

    def status_fields(self, round_completed: int) -> dict[str, Any]:
        return {"privacy": self.ledger.report(round_completed)}


class LocalPrivacyObserver(RoundObserver):
    """Each site's local DP epsilon, from its training metrics and its declines."""

    def __init__(self, tracker: LocalPrivacyTracker, train_tasks: set[str]) -> None:
        self.tracker = tracker
        self._train_tasks = train_tasks

    def notify(self, event: RoundEvent) -> None:
        if isinstance(event, TaskDeclined):
            self.tracker.declined(event.collaborator, event.metrics)
        elif isinstance(event, RoundClosed) and not event.progress.final_evaluation:
            self._trained(event)

    def _trained(self, closed: RoundClosed) -> None:
        tracker = self.tracker
        for task, records in closed.progress.results.items():
            for record in records if task in self._train_tasks else ():
                tracker.trained(record.collaborator, record.metrics)
        if tracker.epsilon:
            log.info(
                "round %d: local DP epsilon per site at delta %g: %s",
                closed.progress.number,
                tracker.delta,
                ", ".join(f"{n} {e:.4g}" for n, e in sorted(tracker.epsilon.items())),
            )

    def stop_training(self, next_round: int) -> TrainingStop | None:
        reason = self.tracker.stop_reason()
        return TrainingStop(BUDGET_REACHED, reason) if reason else None

    def round_fields(self, closed: RoundClosed) -> dict[str, Any]:
        return {"local_privacy": self.tracker.report()}

    def status_fields(self, round_completed: int) -> dict[str, Any]:
        return {"local_privacy": self.tracker.report()}
