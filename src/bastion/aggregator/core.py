"""The aggregator's round state machine, independent of any transport.

Rounds 1..R train; round R+1 only validates the final global model. Within a
round the aggregator hands tasks to the collaborators its assigner chose, serves
them the global model, validates each result at the edge and folds accepted
training results into the strategy as they arrive. When every assigned task is in
(or the round times out with a quorum) it finalizes, checkpoints atomically, writes
the round's metrics and starts the next round.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator

from bastion.aggregator.assignment import Assigner, SampledAssigner, final_evaluation
from bastion.aggregator.local_privacy import LocalPrivacyHooks, LocalPrivacyTracker
from bastion.aggregator.records import (
    Assignment,
    NotAssigned,
    RoundProgress,
    TaskRecord,
    UnknownCollaborator,
    validate_result,
)
from bastion.aggregator.secure_hooks import SecureAggregationHooks
from bastion.aggregator.secure_round import SecureRound
from bastion.algorithms.base import Strategy
from bastion.compression.pipeline import build_pipeline
from bastion.compression.wire import decode_update
from bastion.errors import BastionError, UpdateRejected
from bastion.metrics.log import MetricsLog
from bastion.plan import Plan, TaskSpec
from bastion.privacy.dp.ledger import PrivacyLedger
from bastion.privacy.secagg.keys import IdentityVerifier
from bastion.storage.checkpoints import CheckpointStore, RoundState
from bastion.tensors import Frame, TensorSpec, Weights, iter_frames, spec_of

log = logging.getLogger("bastion.aggregator")

#: First contacts refresh the status file at most this often.
SUMMARY_INTERVAL_SECONDS = 1.0


class Aggregator(SecureAggregationHooks, LocalPrivacyHooks):
    """Owns the global model and drives the rounds of one federation."""

    def __init__(
        self,
        plan: Plan,
        strategy: Strategy,
        store: CheckpointStore,
        metrics: MetricsLog,
        assigner: Assigner | None = None,
        clock: Callable[[], float] = time.monotonic,
        secure_verifier: IdentityVerifier | None = None,
    ) -> None:
        self.plan = plan
        self.strategy = strategy
        self.store = store
        self.metrics = metrics
        self.assigner = assigner or SampledAssigner(plan)
        self._clock = clock
        self._lock = threading.RLock()
        self.finished = threading.Event()
        self._roster = plan.collaborator_names()
        self._last_seen: dict[str, float] = {}
        self._summary_written = -math.inf  # time.monotonic() of the last status write
        self._summary_stale = False
        self._attestations: dict[str, dict[str, object]] = {}
        self._chunk_bytes = int(plan.network.chunk_mib * 1024 * 1024)
        self.privacy = PrivacyLedger.for_plan(plan)
        self.local_privacy = LocalPrivacyTracker.for_plan(plan)
        self._compression = build_pipeline(plan.compression) if plan.compression else None
        # Secure aggregation (secure_hooks): the open session, attempts per round, and the
        # check of the certificates collaborators advertise with their keys.
        self.secure_verifier = secure_verifier
        self._secure: SecureRound | None = None
        self._secure_attempts: dict[int, int] = {}

        resumed = store.load()
        self.model: Weights = resumed.model
        self.spec: list[TensorSpec] = spec_of(self.model)
        self.strategy.load_state_dict(resumed.strategy_state)
        self.state: RoundState = resumed.state
        if self.state.round_completed:
            log.info(
                "resuming from %s: %d of %d rounds complete",
                resumed.source,
                self.state.round_completed,
                plan.rounds,
            )
        self.max_update_bytes = int(plan.network.max_update_mib * 1024 * 1024)
        self._round: RoundProgress | None = None
        with self._lock:
            if self.state.finished:
                self._finish()
            else:
                self._start_round(self.state.round_completed + 1)

    # ------------------------------------------------------------------ queries

    @property
    def current_round(self) -> int:
        with self._lock:
            return self._round.number if self._round else self.plan.rounds + 1

    def _check_roster(self, collaborator: str) -> None:
        if collaborator not in self._roster:
            raise UnknownCollaborator(f"{collaborator!r} is not on the plan's roster")

    def get_tasks(self, collaborator: str) -> Assignment:
        """What ``collaborator`` should do now."""
        self._check_roster(collaborator)
        with self._lock:
            first_contact = collaborator not in self._last_seen
            self._last_seen[collaborator] = time.time()
            if first_contact:
                log.info("collaborator %s connected", collaborator)
                self._summary_stale = True
            # Each write lists every site seen, so thousands of first contacts (a simulation)
            # would cost O(n^2) if each wrote at once; one write a second keeps status fresh.
            if self._summary_stale and time.monotonic() - self._summary_written >= (
                SUMMARY_INTERVAL_SECONDS
            ):
                self._write_summary()
            if self.finished.is_set() or self._round is None:
                return Assignment("done", total_rounds=self.plan.rounds)
            pending = self._round.pending.get(collaborator)
            if not pending:
                return Assignment(
                    "wait",
                    self._round.number,
                    retry_after=self.plan.timeouts.poll_seconds,
                    total_rounds=self.plan.rounds,
                )
            by_name = {t.name: t for t in self._round.assignments[collaborator]}
            return Assignment(
                "run",
                self._round.number,
                tuple(by_name[n] for n in pending),
                total_rounds=self.plan.rounds,
            )

    def model_frames(self, collaborator: str, round_number: int) -> Iterator[Frame]:
        """The global model for ``round_number`` as wire frames, if the caller was assigned it.

        Frames are cut lazily from the model of this instant (finalize replaces the dict,
        never mutates it), so serving N collaborators holds no extra copy of the model.
        """
        self._check_roster(collaborator)
        with self._lock:
            self._require_assigned(collaborator, round_number)
            return iter_frames(self.model, self._chunk_bytes)

    def check_result_allowed(self, collaborator: str, round_number: int, task: str) -> TaskSpec:
        """Refuse a result before its tensors are read if the caller may not send it."""
        self._check_roster(collaborator)
        with self._lock:
            progress = self._require_assigned(collaborator, round_number)
            if task not in progress.pending[collaborator]:
                assigned = [t.name for t in progress.assignments[collaborator]]
                if task in assigned:
                    raise NotAssigned(
                        f"{collaborator} already sent {task!r} for round {round_number}"
                    )
                raise NotAssigned(
                    f"{collaborator} was not assigned task {task!r} in round {round_number}; "
                    f"assigned: {assigned}"
                )
            spec = next(t for t in progress.assignments[collaborator] if t.name == task)
            if spec.kind == "train" and self._secure is not None:
                raise NotAssigned(
                    f"this federation uses secure aggregation: {collaborator}'s {task!r} "
                    "update goes through the secure aggregation session, never alone"
                )
            return spec

    def _require_assigned(self, collaborator: str, round_number: int) -> RoundProgress:
        progress = self._round
        if progress is None or self.finished.is_set():
            raise NotAssigned("the federation is finished")
        if round_number != progress.number:
            raise NotAssigned(
                f"{collaborator} asked for round {round_number}, but the current round is {progress.number}"
            )
        if not progress.pending.get(collaborator):
            raise NotAssigned(f"{collaborator} has no pending task in round {round_number}")
        return progress

    def record_attestation(self, collaborator: str, result: dict[str, object]) -> None:
        """Remember a collaborator's latest attestation verdict, for ``bastion status``."""
        with self._lock:
            self._attestations[collaborator] = result
            self._write_summary()

    # ------------------------------------------------------------------ results

    def submit_result(
        self,
        collaborator: str,
        round_number: int,
        task_name: str,
        example_count: int,
        metrics: dict[str, float],
        weights: Weights | None,
    ) -> tuple[bool, str]:
        """Validate and fold in one result. Returns (accepted, reason)."""
        task = self.check_result_allowed(collaborator, round_number, task_name)
        try:
            if task.kind == "train" and weights is not None and self._compression is not None:
                # The payload is a compressed delta against this round's global model.
                weights = decode_update(self._compression, weights, self.model, round_number)
            validate_result(task, example_count, metrics, weights, self.spec)
        except UpdateRejected as exc:
            return self.reject_result(collaborator, round_number, task_name, str(exc))
        with self._lock:
            # The round may have closed (timeout) while the tensors were in flight.
            self.check_result_allowed(collaborator, round_number, task_name)
            progress = self._round
            assert progress is not None
            if task.kind == "train":
                assert weights is not None
                self.strategy.accumulate(collaborator, weights, float(example_count))
            progress.results.setdefault(task_name, []).append(
                TaskRecord(collaborator, example_count, dict(metrics))
            )
            progress.pending[collaborator].remove(task_name)
            self.metrics.write(
                "task",
                round=round_number,
                collaborator=collaborator,
                task=task_name,
                examples=example_count,
                metrics=metrics,
            )
            self._maybe_complete()
        return True, ""

    def reject_result(
        self, collaborator: str, round_number: int, task: str, reason: str
    ) -> tuple[bool, str]:
        log.warning(
            "rejected %s's %s result for round %d: %s", collaborator, task, round_number, reason
        )
        with self._lock:
            progress = self._round
            if progress is not None and progress.number == round_number:
                progress.rejected[collaborator] = f"{task}: {reason}"
                # A collaborator whose update is bad has nothing trustworthy left to report.
                progress.pending[collaborator] = []
                self._secure_exclude(collaborator, f"its {task} result was rejected: {reason}")
                self.metrics.write(
                    "rejected",
                    round=round_number,
                    collaborator=collaborator,
                    task=task,
                    reason=reason,
                )
                self._maybe_complete()
        return False, reason

    # ------------------------------------------------------------------ rounds

    def _start_round(self, number: int) -> None:
        final = number == self.plan.rounds + 1 or self._over_privacy_budget(number)
        if number > self.plan.rounds + 1:
            self._finish()
            return
        assignments = (
            final_evaluation(self.plan) if final else self.assigner.assign(self._roster, number)
        )
        if final and not assignments:
            self.state.finished = True
            self._checkpoint()
            self._finish()
            return
        unknown = sorted(set(assignments) - set(self._roster))
        if unknown:
            raise BastionError(
                f"the task assigner returned collaborators not on the roster: {unknown}"
            )
        self._round = RoundProgress(
            number=number,
            final_evaluation=final,
            assignments=assignments,
            pending={name: [t.name for t in tasks] for name, tasks in assignments.items() if tasks},
            started=self._clock(),
        )
        if not final:
            self.strategy.begin_round(self.model, number)
        self._open_secure_session(self._round)
        label = "final evaluation" if final else f"round {number}/{self.plan.rounds}"
        log.info("%s: %d collaborators assigned", label, len(self._round.pending))
        self.metrics.write(
            "round_start",
            round=number,
            final_evaluation=final,
            collaborators=sorted(self._round.pending),
        )
        self._write_summary()
        self._maybe_complete()

    def _maybe_complete(self) -> None:
        progress = self._round
        secure_done = self._secure is None or self._secure.settled
        if progress is not None and not any(progress.pending.values()) and secure_done:
            self._complete_round(timed_out=[])

    def check_timeout(self) -> None:
        """Close or restart the current round if it has run past ``timeouts.round_seconds``."""
        with self._lock:
            if self._secure_blocks_timeout():
                return
            progress = self._round
            if progress is None or self.finished.is_set():
                return
            if self._clock() - progress.started < self.plan.timeouts.round_seconds:
                return
            late = sorted(name for name, tasks in progress.pending.items() if tasks)
            accepted = (
                self.strategy.accepted if not progress.final_evaluation else len(progress.results)
            )
            # A settled secure aggregation session is final for the round's training.
            closes = progress.final_evaluation or self._secure is not None
            if closes or accepted >= self.plan.timeouts.min_results:
                log.warning("round %d timed out; closing without %s", progress.number, late)
                self._complete_round(timed_out=late)
            else:
                log.warning(
                    "round %d timed out with %d of %d required results; restarting it",
                    progress.number,
                    accepted,
                    self.plan.timeouts.min_results,
                )
                self.metrics.write("round_restart", round=progress.number, late=late)
                self._start_round(progress.number)

    def _complete_round(self, timed_out: list[str]) -> None:
        progress = self._round
        assert progress is not None
        number = progress.number
        summary = self._aggregate_metrics(progress)
        self._secure_examples(summary)
        self._update_best(summary, model_round=number - 1)
        accepted = 0
        if not progress.final_evaluation:
            accepted = self.strategy.accepted
            if accepted >= self.plan.timeouts.min_results:
                try:
                    self.model = self.strategy.finalize()
                except BastionError as exc:
                    # e.g. Krum with fewer results than its f requires: keep the model, go on.
                    log.error(
                        "round %d: aggregation failed, the global model is unchanged: %s",
                        number,
                        exc,
                    )
                    progress.rejected["aggregation"] = str(exc)
            else:
                log.warning(
                    "round %d: %d accepted training results, %d required; the global model is unchanged",
                    number,
                    accepted,
                    self.plan.timeouts.min_results,
                )
            self.state.round_completed = number
            self._observe_local_privacy(progress)
        else:
            self.state.finished = True
        seconds = round(self._clock() - progress.started, 3)
        self._checkpoint()
        self.metrics.write(
            "round",
            round=number,
            final_evaluation=progress.final_evaluation,
            model_round=number - 1,
            tasks=summary,
            accepted=accepted,
            rejected=progress.rejected,
            declined=progress.declined,
            timed_out=timed_out,
            seconds=seconds,
            **self._privacy_fields(progress),
        )
        described = ", ".join(
            f"{task} " + " ".join(f"{k}={v:.4f}" for k, v in m.items() if k != "examples")
            for task, m in summary.items()
        )
        log.info("round %d complete in %.1fs: %s", number, seconds, described or "no metrics")
        self._round = None
        if self.state.finished:
            self._finish()
        else:
            self._start_round(number + 1)

    def _over_privacy_budget(self, number: int) -> bool:
        """Whether training round ``number`` would overspend the plan's epsilon budget."""
        reason = self.privacy.stop_reason(number) if self.privacy else None
        if reason is None and self.local_privacy is not None and number <= self.plan.rounds:
            reason = self.local_privacy.stop_reason()
        if reason is None:
            return False
        log.warning("%s; running the final evaluation now", reason)
        self.metrics.write("privacy_budget_reached", round=number, reason=reason)
        return True

    def _privacy_fields(self, progress: RoundProgress) -> dict[str, object]:
        """The round's privacy report for the metrics log (central DP, local DP per site)."""
        local: dict[str, object] = (
            {"local_privacy": self.local_privacy.report()} if self.local_privacy else {}
        )
        if self.privacy is None:
            return local
        report = self.privacy.report(self.state.round_completed)
        if not progress.final_evaluation:
            log.info(
                "round %d: epsilon %.4g at delta %g spent so far",
                progress.number,
                report["epsilon"],
                report["delta"],
            )
        return {"privacy": report, **local}

    def _aggregate_metrics(self, progress: RoundProgress) -> dict[str, dict[str, float]]:
        rules = {t.name: t.metrics_aggregation for t in self.plan.tasks}
        summary: dict[str, dict[str, float]] = {}
        for task, records in progress.results.items():
            total = sum(r.example_count for r in records)
            names = sorted({k for r in records for k in r.metrics})
            out: dict[str, float] = {"examples": float(total)}
            for name in names:
                pairs = [(r.metrics[name], r.example_count) for r in records if name in r.metrics]
                rule = rules.get(task, "weighted_mean")
                values = [v for v, _ in pairs]
                if rule == "weighted_mean" and sum(n for _, n in pairs) > 0:
                    out[name] = sum(v * n for v, n in pairs) / sum(n for _, n in pairs)
                elif rule == "min":
                    out[name] = min(values)
                elif rule == "max":
                    out[name] = max(values)
                else:
                    out[name] = sum(values) / len(values)
            summary[task] = out
        return summary

    def _update_best(self, summary: dict[str, dict[str, float]], model_round: int) -> None:
        """Global validation in round r measured the model of round r-1: keep it if it is the best."""
        task = self.plan.best_task()
        metric = self.plan.best_model.metric
        if task is None or metric not in summary.get(task, {}):
            return
        value = summary[task][metric]
        best = self.state.best_value
        better = best is None or (
            value > best if self.plan.best_model.mode == "max" else value < best
        )
        if better:
            self.state.best_value = value
            self.state.best_round = model_round
            self.store.save_best(self.model, model_round, value)

    def _checkpoint(self) -> None:
        self.store.save_round(self.model, self.strategy.state_dict(), self.state)

    def _finish(self) -> None:
        self._round = None
        self.strategy.close()
        self.state.finished = True
        self._write_summary()
        if not self.finished.is_set():
            log.info("federation finished after %d rounds", self.state.round_completed)
            stopped = (
                self.privacy.stop_reason(self.state.round_completed + 1) if self.privacy else None
            ) or (self.local_privacy.stop_reason() if self.local_privacy else None)
            self.metrics.write(
                "finished",
                rounds=self.state.round_completed,
                best=self.state.best_value,
                **({"stopped": stopped} if stopped else {}),
            )
        self.finished.set()

    def _write_summary(self) -> None:
        self._summary_written = time.monotonic()
        self._summary_stale = False
        progress = self._round
        self.store.write_summary(
            {
                "plan": self.plan.name,
                "rounds": self.plan.rounds,
                "round_completed": self.state.round_completed,
                "current_round": progress.number if progress else None,
                "final_evaluation": bool(progress and progress.final_evaluation),
                "finished": self.state.finished,
                "best": {
                    "round": self.state.best_round,
                    "value": self.state.best_value,
                    "metric": self.plan.best_model.metric,
                },
                "assigned": sorted(progress.pending) if progress else [],
                "collaborators_seen": dict(sorted(self._last_seen.items())),
                "attestation": dict(sorted(self._attestations.items())),
                "privacy": self.privacy.report(self.state.round_completed)
                if self.privacy
                else None,
                "local_privacy": self.local_privacy.report() if self.local_privacy else None,
                "updated": time.time(),
            }
        )
