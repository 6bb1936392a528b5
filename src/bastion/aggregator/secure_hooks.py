"""The aggregator's round logic for secure aggregation, mixed into ``Aggregator``.

When the plan turns secure aggregation on, every training round opens a ``SecureRound``
over the collaborators assigned a train task. A collaborator's train task counts as
handed in once it has advertised its keys; its update never arrives alone, only inside
the session's unmasked sum, which is folded into the strategy in one step when the
session ends. A failed session leaves the global model unchanged for that round.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from bastion.aggregator.records import RoundProgress, TaskRecord
from bastion.aggregator.secure_round import SecureRound, fold_in
from bastion.algorithms.base import Strategy
from bastion.algorithms.secure_sum import secure_sum_strategy
from bastion.compression.pipeline import Pipeline
from bastion.errors import BastionError
from bastion.metrics.log import MetricsLog
from bastion.plan import Plan
from bastion.privacy.secagg.keys import IdentityVerifier
from bastion.privacy.secagg.session import StageReply, Step
from bastion.spec.secure_aggregation import weighting_for
from bastion.tensors import Weights

log = logging.getLogger("bastion.aggregator")


class SecureAggregationHooks:
    """Secure aggregation sessions of the rounds; ``Aggregator`` provides the attributes."""

    plan: Plan
    strategy: Strategy
    metrics: MetricsLog
    model: Weights
    secure_verifier: IdentityVerifier | None
    _round: RoundProgress | None
    _lock: threading.RLock
    _clock: Callable[[], float]
    _compression: Pipeline | None
    _secure: SecureRound | None
    _secure_attempts: dict[int, int]

    def _maybe_complete(self) -> None:  # provided by Aggregator
        raise NotImplementedError

    def _check_roster(self, collaborator: str) -> None:  # provided by Aggregator
        raise NotImplementedError

    @property
    def secure_session(self) -> SecureRound | None:
        """The current (or last) round's secure aggregation session, for audits and status."""
        return self._secure

    # ------------------------------------------------------------------ round life

    def _open_secure_session(self, progress: RoundProgress) -> None:
        """Start this round's session over the collaborators assigned a train task."""
        self._secure = None
        spec = self.plan.secure_aggregation
        if spec is None or not spec.enabled or progress.final_evaluation:
            return
        trains = {
            name: [t.name for t in tasks if t.kind == "train"]
            for name, tasks in progress.assignments.items()
        }
        participants = sorted(name for name, names in trains.items() if names)
        # Wall-clock seconds, so a restarted aggregator never reuses a session id (clients
        # only join increasing attempts, and a reused id would let old signed keys replay).
        attempt = max(self._secure_attempts.get(progress.number, -1) + 1, int(time.time()))
        self._secure_attempts[progress.number] = attempt
        strategy = secure_sum_strategy(self.strategy)
        session = SecureRound(
            spec,
            participants,
            progress.number,
            attempt,
            self.model,
            weighting_for(self.plan.aggregation.strategy),
            strategy.secure_clip_norm(),
            federation_id=self.plan.canonical_hash(),
            training_deadline=progress.started + self.plan.timeouts.round_seconds,
            clock=self._clock,
            verifier=self.secure_verifier,
            poll_seconds=self.plan.timeouts.poll_seconds,
            min_contributors=self.plan.timeouts.min_results,
            pipeline=self._compression,
        )
        doubled = sorted(name for name, names in trains.items() if len(names) > 1)
        if doubled:
            session.fail(
                f"{doubled} have several train tasks this round; secure aggregation sums one "
                "update per collaborator per round"
            )
        self._secure = session
        log.info(
            "round %d: secure aggregation session (attempt %d) over %d collaborators",
            progress.number,
            attempt,
            len(participants),
        )
        self._settle_secure(progress)  # the caller completes the round if it can

    def _after_secure_event(self) -> None:
        """Settle what the session's last event decided, then complete the round if it can."""
        if self._round is not None:
            self._settle_secure(self._round)
            self._maybe_complete()

    def _settle_secure(self, progress: RoundProgress) -> None:
        """Hand finished train tasks back to the round, and fold in a finished session."""
        session = self._secure
        if session is None or session.settled:
            return
        for name in session.info.participants:
            if session.finished or session.joined(name) or name in session.gone:
                _drop_train_tasks(progress, name)
        if not session.finished:
            return
        session.settled = True
        if session.outcome is not None:
            try:
                fold_in(self.strategy, session.outcome)
            except BastionError as exc:
                session.failure = str(exc)
                log.error("round %d: %s", progress.number, exc)
            else:
                self._record_secure_results(progress, session)
        if session.failure is not None:
            progress.rejected["secure_aggregation"] = session.failure
        self.metrics.write("secure_aggregation", **session.report())

    def _record_secure_results(self, progress: RoundProgress, session: SecureRound) -> None:
        task = next((t.name for t in self.plan.tasks if t.kind == "train"), "train")
        for name in session.contributors:
            trained = [t.name for t in progress.assignments.get(name, ()) if t.kind == "train"]
            task = trained[0] if trained else task
            metrics = session.metrics.get(name, {})
            progress.results.setdefault(task, []).append(TaskRecord(name, 0, dict(metrics)))
            self.metrics.write(
                "task",
                round=progress.number,
                collaborator=name,
                task=task,
                examples=None,
                metrics=metrics,
                secure_aggregation=True,
            )
        outcome = session.outcome
        assert outcome is not None
        log.info(
            "round %d: secure aggregation unmasked the sum of %d updates (weight %.6g)",
            progress.number,
            outcome.contributors,
            outcome.total_weight,
        )

    def _secure_examples(self, summary: dict[str, dict[str, float]]) -> None:
        """The train task's example total is the unmasked weight sum (no per-site counts)."""
        session = self._secure
        if session is None or session.outcome is None:
            return
        for task in {t.name for t in self.plan.tasks if t.kind == "train"} & summary.keys():
            summary[task]["examples"] = session.outcome.total_weight

    def _secure_blocks_timeout(self) -> bool:
        """Tick the session; True while it still runs (its own deadlines apply, not the round's)."""
        session = self._secure
        if session is None or session.settled:
            return False
        session.tick()
        self._after_secure_event()
        return self._secure is session and not session.finished

    # ------------------------------------------------------------------ transport calls

    def _session_for(
        self, collaborator: str, round_number: int, attempt: int | None
    ) -> SecureRound | str:
        self._check_roster(collaborator)
        session, progress = self._secure, self._round
        if session is None or progress is None or progress.number != round_number:
            return f"no secure aggregation session for round {round_number} is open"
        if attempt is not None and attempt != session.info.attempt:
            return (
                f"round {round_number} moved on to session attempt {session.info.attempt}; "
                f"attempt {attempt} is over"
            )
        return session

    def secure_fetch(
        self, collaborator: str, round_number: int, attempt: int, step: Step
    ) -> StageReply:
        """The aggregator's answer that closes ``step`` of the caller's session."""
        with self._lock:
            found = self._session_for(
                collaborator, round_number, None if step is Step.SESSION else attempt
            )
            if isinstance(found, str):
                return StageReply("aborted", reason=found)
            return found.fetch(collaborator, step)

    def secure_payload_limit(
        self, collaborator: str, round_number: int, attempt: int, step: Step
    ) -> int:
        """How many bytes the caller's message may have; 0 when it may send none now."""
        with self._lock:
            found = self._session_for(collaborator, round_number, attempt)
            return 0 if isinstance(found, str) else found.payload_limit(step)

    def secure_send(
        self,
        collaborator: str,
        round_number: int,
        attempt: int,
        step: Step,
        payload: bytes,
        metrics: Mapping[str, float],
    ) -> tuple[bool, str]:
        """Take the caller's protocol message of ``step``; (accepted, reason)."""
        with self._lock:
            found = self._session_for(collaborator, round_number, attempt)
            if isinstance(found, str):
                return False, found
            accepted, reason = found.send(collaborator, step, payload, metrics)
            if not accepted:
                log.warning(
                    "secure aggregation: refused %s's %s: %s", collaborator, step.value, reason
                )
            self._after_secure_event()
            return accepted, reason

    def _secure_exclude(self, collaborator: str, reason: str) -> None:
        if self._secure is not None and not self._secure.settled:
            self._secure.exclude(collaborator, reason)
            self._after_secure_event()


def _drop_train_tasks(progress: RoundProgress, name: str) -> None:
    trains = {t.name for t in progress.assignments.get(name, ()) if t.kind == "train"}
    pending = progress.pending.get(name)
    if pending:
        progress.pending[name] = [task for task in pending if task not in trains]
