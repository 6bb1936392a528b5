"""Secure aggregation as a round protocol: the aggregator learns only the round's sum.

Every training round opens a ``SecureRound`` session over the collaborators assigned a
train task. A collaborator's train task counts as handed in once it has advertised its
keys; its update never arrives alone, only inside the session's unmasked sum, folded
into the strategy in one step when the session ends. A failed session leaves the
global model unchanged for that round. The final evaluation streams as usual.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path

from bastion.aggregator.events import ProtocolReported, ResultAccepted
from bastion.aggregator.records import RoundProgress, TaskRecord
from bastion.aggregator.round_protocol import RoundContext, RoundProtocol, StreamingRound
from bastion.aggregator.secure_round import SecureRound, fold_in
from bastion.algorithms.secure_sum import secure_sum_strategy
from bastion.compression.pipeline import Pipeline
from bastion.errors import BastionError, ProtocolError
from bastion.privacy.secagg.keys import IdentityVerifier
from bastion.privacy.secagg.session import Step
from bastion.protocol import Ack, StageReply
from bastion.spec.secure_aggregation import weighting_for
from bastion.spec.tasks import TaskSpec
from bastion.storage.atomic import atomic_write_text
from bastion.tensors import Weights

log = logging.getLogger("bastion.aggregator")

#: In the checkpoints' folder: the last session attempt offered (see SecureAggregationRounds).
SECURE_ATTEMPTS_FILE = "secure_attempts.json"


class SecureAggregationRounds:
    """The protocol factory: a session per training round, each with a new attempt number.

    Collaborators join only increasing attempts of a round (a reused id would let old
    signed keys replay), so a restarted aggregator must never offer an attempt its last
    incarnation offered. Attempts are wall-clock seconds, and with ``attempts_file`` also
    one more than the last attempt written there before any collaborator saw it: a restart
    within the same second, or after the clock stepped back, still moves forward.
    """

    def __init__(
        self,
        verifier: IdentityVerifier | None = None,
        pipeline: Pipeline | None = None,
        attempts_file: Path | None = None,
    ) -> None:
        self._verifier = verifier
        self._pipeline = pipeline
        self._attempts_file = attempts_file
        self._last = _read_last_attempt(attempts_file)

    def __call__(self, context: RoundContext) -> RoundProtocol:
        if context.progress.final_evaluation:
            return StreamingRound(context)
        attempt = max(self._last + 1, int(time.time()))
        if attempt >= 2**32:
            raise BastionError(
                f"secure aggregation attempt {attempt} does not fit the protocol's 32 bits; "
                f"delete {self._attempts_file} if the system clock was set far ahead"
            )
        if self._attempts_file is not None:
            atomic_write_text(self._attempts_file, json.dumps({"last_attempt": attempt}))
        self._last = attempt
        return SecureAggregationRound(context, attempt, self._verifier, self._pipeline)


def _read_last_attempt(path: Path | None) -> int:
    """The last attempt a previous incarnation offered, or -1 (none, or an unreadable file:
    the wall clock then still moves attempts forward)."""
    if path is None:
        return -1
    try:
        return int(json.loads(path.read_text())["last_attempt"])
    except FileNotFoundError:
        return -1
    except (OSError, ValueError, KeyError, TypeError) as error:
        log.warning("ignoring %s (%s); secure aggregation attempts follow the clock", path, error)
        return -1


class SecureAggregationRound:
    """One training round under secure aggregation; ``session`` is open for audits and tests."""

    def __init__(
        self,
        context: RoundContext,
        attempt: int,
        verifier: IdentityVerifier | None,
        pipeline: Pipeline | None,
    ) -> None:
        plan, progress = context.plan, context.progress
        spec = plan.secure_aggregation
        assert spec is not None
        self._plan = plan
        self._progress = progress
        self._strategy = context.strategy
        self._publish = context.publish
        trains = {
            name: [t.name for t in tasks if t.kind == "train"]
            for name, tasks in progress.assignments.items()
        }
        participants = sorted(name for name, names in trains.items() if names)
        self.session = SecureRound(
            spec,
            participants,
            progress.number,
            attempt,
            context.model,
            weighting_for(plan.aggregation.strategy),
            secure_sum_strategy(context.strategy).secure_clip_norm(),
            federation_id=plan.canonical_hash(),
            training_deadline=progress.started + plan.timeouts.round_seconds,
            clock=context.clock,
            verifier=verifier,
            poll_seconds=plan.timeouts.poll_seconds,
            min_contributors=plan.timeouts.min_results,
            pipeline=pipeline,
        )
        doubled = sorted(name for name, names in trains.items() if len(names) > 1)
        if doubled:
            self.session.fail(
                f"{doubled} have several train tasks this round; secure aggregation sums one "
                "update per collaborator per round"
            )
        log.info(
            "round %d: secure aggregation session (attempt %d) over %d collaborators",
            progress.number,
            attempt,
            len(participants),
        )
        self._settle()

    # ------------------------------------------------------------------ the round protocol

    def refusal(self, collaborator: str, task: TaskSpec) -> str | None:
        if task.kind != "train":
            return None
        return (
            f"this federation uses secure aggregation: {collaborator}'s {task.name!r} "
            "update goes through the secure aggregation session, never alone"
        )

    def on_result(
        self, collaborator: str, task: TaskSpec, example_count: int, weights: Weights | None
    ) -> None:
        return None  # only validation results arrive directly; they carry no weights

    def exclude(self, collaborator: str, reason: str) -> None:
        if not self.session.settled:
            self.session.exclude(collaborator, reason)
            self._settle()

    def is_settled(self) -> bool:
        return self.session.settled

    def blocks_timeout(self) -> bool:
        session = self.session
        if session.settled:
            return False
        session.tick()
        self._settle()
        return not session.finished

    def closes_late_round(self) -> bool:
        return True  # a settled session is final for the round's training

    def close(self, summary: dict[str, dict[str, float]]) -> None:
        """The train task's example total is the unmasked weight sum (no per-site counts)."""
        outcome = self.session.outcome
        if outcome is None:
            return
        for task in {t.name for t in self._plan.tasks if t.kind == "train"} & summary.keys():
            summary[task]["examples"] = outcome.total_weight

    # ------------------------------------------------------------------ stage messages

    def stage_payload_limit(self, collaborator: str, attempt: int, step: str) -> int:
        found = self._session_for(attempt)
        return 0 if isinstance(found, str) else found.payload_limit(_step(step))

    def stage_send(
        self,
        collaborator: str,
        attempt: int,
        step: str,
        payload: bytes,
        metrics: Mapping[str, float],
    ) -> Ack:
        found = self._session_for(attempt)
        if isinstance(found, str):
            return Ack(False, found)
        stage = _step(step)
        accepted, reason = found.send(collaborator, stage, payload, metrics)
        if not accepted:
            log.warning(
                "secure aggregation: refused %s's %s: %s", collaborator, stage.value, reason
            )
        self._settle()
        return Ack(accepted, reason)

    def stage_fetch(self, collaborator: str, attempt: int, step: str) -> StageReply:
        stage = _step(step)
        found = self._session_for(None if stage is Step.SESSION else attempt)
        if isinstance(found, str):
            return StageReply("aborted", reason=found)
        return found.fetch(collaborator, stage)

    def _session_for(self, attempt: int | None) -> SecureRound | str:
        session = self.session
        if attempt is not None and attempt != session.info.attempt:
            return (
                f"round {session.info.round_number} moved on to session attempt "
                f"{session.info.attempt}; attempt {attempt} is over"
            )
        return session

    # ------------------------------------------------------------------ settling

    def _settle(self) -> None:
        """Hand finished train tasks back to the round, and fold in a finished session."""
        session, progress = self.session, self._progress
        if session.settled:
            return
        for name in session.info.participants:
            if session.finished or session.joined(name) or name in session.gone:
                progress.hand_in(name, kind="train")
        if not session.finished:
            return
        session.settled = True
        if session.outcome is not None:
            try:
                fold_in(self._strategy, session.outcome)
            except BastionError as exc:
                session.failure = str(exc)
                log.error("round %d: %s", progress.number, exc)
            else:
                self._record_results(progress, session)
        if session.failure is not None:
            progress.rejected["secure_aggregation"] = session.failure
        self._publish(ProtocolReported(progress.number, "secure_aggregation", session.report()))

    def _record_results(self, progress: RoundProgress, session: SecureRound) -> None:
        task = next((t.name for t in self._plan.tasks if t.kind == "train"), "train")
        for name in session.contributors:
            trained = [t.name for t in progress.assignments.get(name, ()) if t.kind == "train"]
            task = trained[0] if trained else task
            metrics = session.metrics.get(name, {})
            progress.results.setdefault(task, []).append(TaskRecord(name, 0, dict(metrics)))
            self._publish(
                ResultAccepted(
                    progress.number,
                    name,
                    task,
                    "train",
                    None,
                    metrics,
                    secure_aggregation=True,
                    update_digest=session.input_digests.get(name, ""),
                )
            )
        outcome = session.outcome
        assert outcome is not None
        log.info(
            "round %d: secure aggregation unmasked the sum of %d updates (weight %.6g)",
            progress.number,
            outcome.contributors,
            outcome.total_weight,
        )


def _step(value: str) -> Step:
    try:
        return Step(value)
    except ValueError:
        raise ProtocolError(f"unknown secure aggregation step {str(value)[:40]!r}") from None
