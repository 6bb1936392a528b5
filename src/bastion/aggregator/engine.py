"""The round engine: one federation's rounds, independent of any transport.

Rounds 1..R train; round R+1 only validates the final global model. A round moves
through phases — assigning, collecting, closing — to the next, then the final
evaluation, then finished. ``_advance`` moves it as far as it can go after every
event, in a loop that never recurses, so any number of empty rounds (nobody assigned,
nobody sampled) pass in constant stack depth. How results are collected is the
round's ``RoundProtocol``; who reacts to what happens is a list of ``RoundObserver``;
the engine knows neither secure aggregation nor differential privacy.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

from bastion import faults
from bastion.aggregator.assignment import Assigner, Assignments, SampledAssigner, final_evaluation
from bastion.aggregator.carried_work import CarriedWorkBook
from bastion.aggregator.durable import DurableRecord
from bastion.aggregator.events import (
    AttestationVerdict,
    Checkpointed,
    FederationFinished,
    ResultAccepted,
    ResultRejected,
    RoundClosed,
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
    TrainingStop,
    TrainingStopped,
    publish,
)
from bastion.aggregator.influence import InfluenceBounds
from bastion.aggregator.model_facts import ModelFacts, model_facts
from bastion.aggregator.plugins import (
    UpdateDecoder,
    standard_observers,
    standard_protocol,
    update_decoder,
)
from bastion.aggregator.records import (
    MAX_REASON,
    PendingTasks,
    RoundProgress,
    TaskRecord,
    check_header,
    check_metrics,
    checked_content,
    summarize_metrics,
    update_limit,
)
from bastion.aggregator.round_protocol import (
    InteractiveRound,
    OverlappingRound,
    ProtocolFactory,
    RoundContext,
    RoundProtocol,
    StreamingRound,
    is_overlapping,
)
from bastion.aggregator.status import StatusFile
from bastion.aggregator.streaming import StreamingIntake
from bastion.algorithms.base import FoldsChunks, Strategy
from bastion.compression.downstream import Downlink
from bastion.errors import BastionError, ProtocolError, UpdateRejected
from bastion.framing import Frame, iter_frames
from bastion.metrics.log import MetricsLog
from bastion.plan import Plan
from bastion.protocol import (
    Ack,
    Assignment,
    CannotServe,
    NotAssigned,
    ResultHeader,
    RoundOver,
    StageReply,
    UnknownCollaborator,
)
from bastion.spec.tasks import TaskSpec
from bastion.storage.checkpoints import CheckpointStore, RoundState
from bastion.tensors import Scratch, TensorSpec, Weights, spec_of, weights_digest

log = logging.getLogger("bastion.aggregator")

EMPTY_ROUND_LIMIT = "empty_round_limit"


class Phase(enum.Enum):
    ASSIGNING = "assigning"
    COLLECTING = "collecting"
    FINAL_EVALUATION = "final_evaluation"
    FINISHED = "finished"


class Aggregator:
    """Owns the global model and drives the rounds of one federation (the port's far side).

    ``protocol`` opens each round's ``RoundProtocol`` (default: the plan's); ``observers``
    are added to the plan's own (metrics log, DP ledgers, attestation status).
    """

    def __init__(
        self,
        plan: Plan,
        strategy: Strategy,
        store: CheckpointStore,
        metrics: MetricsLog,
        assigner: Assigner | None = None,
        clock: Callable[[], float] = time.monotonic,
        protocol: ProtocolFactory | None = None,
        observers: Sequence[RoundObserver] = (),
        roster: Sequence[str] | None = None,
        open_roster: bool = False,
    ) -> None:
        self.plan = plan
        self.strategy = strategy
        self.store = store
        self.metrics = metrics
        self.assigner = assigner or SampledAssigner(plan)
        self.observers: list[RoundObserver] = [*standard_observers(plan, metrics), *observers]
        self._open_protocol = protocol or standard_protocol(plan)
        self._decode: UpdateDecoder = update_decoder(plan)
        self._downlink = Downlink.for_spec(plan.compression)
        self._bounds = InfluenceBounds.of(plan)
        self._clock = clock
        self._lock = threading.RLock()
        self.finished = threading.Event()
        # ``roster``: who takes part from the start (a federation service's resolved roster,
        # a subset of the plan's); with ``open_roster`` another site of the plan joins when
        # it first calls, and is assigned from the next round on.
        self._roster = list(roster) if roster is not None else plan.collaborator_names()
        self._on_roster = set(self._roster)  # every call checks it: a set, not the list
        self._open_roster = open_roster
        self.chunking = plan.network.chunking

        resumed = store.load()
        self._status = StatusFile(store)
        self.record = DurableRecord(plan, store, resumed.state, self._status)
        self.model: Weights = resumed.model
        self._model_facts: ModelFacts | None = None  # of self.model, set with it
        self._model_scratch = Scratch()  # the norm pass's blocks, used under the lock
        self.spec: list[TensorSpec] = spec_of(self.model)
        self.max_update_bytes = update_limit(plan, self.model)
        self.strategy.load_state_dict(resumed.strategy_state)
        # Results of strategies that fold are folded chunk by chunk as they stream in.
        self._intake = (
            StreamingIntake(strategy, self.spec, self._bounds, plan.network.max_concurrent_uploads)
            if isinstance(strategy, FoldsChunks)
            else None
        )
        if self.state.round_completed:
            log.info(
                "resuming from %s: %d of %d rounds complete",
                resumed.source,
                self.state.round_completed,
                plan.rounds,
            )
        self.phase = Phase.ASSIGNING
        self._round: RoundProgress | None = None
        self.round_protocol: RoundProtocol | None = None  # the current (or last) round's
        self._stopped: TrainingStop | None = None
        self._empty_streak = 0
        # Overlapping round protocols (asynchronous aggregation): work of closed rounds that
        # sites still do, and the model each such round started from (to serve and check it).
        self._carried = CarriedWorkBook()
        # Set when a storage error left memory ahead of the disk: the service exits with it.
        self.halted: str | None = None
        with self._lock:
            self._advance()

    # ------------------------------------------------------------------ queries

    @property
    def state(self) -> RoundState:
        """Where the federation stands, as its checkpoints record it."""
        return self.record.state

    @property
    def current_round(self) -> int:
        with self._lock:
            return self._round.number if self._round else self.plan.rounds + 1

    def check_member(self, collaborator: str) -> None:
        """The port's first check on every call, before the transport reads a stream."""
        self._check_roster(collaborator)

    def update_spec(self, task: TaskSpec) -> Sequence[TensorSpec] | None:
        """The tensors a result of ``task`` must carry: the model's for a plain training
        update, none for validation, unknown (size-bounded only) for a compressed one."""
        if task.kind != "train":
            return []
        return None if self.plan.compression is not None else self.spec

    def _check_roster(self, collaborator: str) -> None:
        if self.halted is not None:  # every call passes here first; sites retry UNAVAILABLE
            raise CannotServe(self.halted)
        if collaborator in self._on_roster:
            return
        if self._open_roster and collaborator in self.plan.collaborator_names():
            with self._lock:
                if collaborator not in self._on_roster:
                    log.info("%s joins the open roster; assigned from the next round", collaborator)
                    self._roster.append(collaborator)
                    self._on_roster.add(collaborator)
            return
        raise UnknownCollaborator(f"{collaborator!r} is not on the plan's roster")

    @property
    def roster(self) -> list[str]:
        """Who takes part now (the plan's roster unless a service resolved a smaller one)."""
        return list(self._roster)

    def get_tasks(self, collaborator: str) -> Assignment:
        """What ``collaborator`` should do now."""
        self._check_roster(collaborator)
        with self._lock:
            self._contact(collaborator)
            if self._carried.drop(collaborator):
                log.info(
                    "%s asks for new work; its unfinished earlier work is dropped", collaborator
                )
            if self.finished.is_set() or self._round is None:
                return Assignment(
                    "done",
                    total_rounds=self.plan.rounds,
                    receipts=self._messages_for(collaborator),
                )
            pending = self._round.pending.get(collaborator) or self._more_work(collaborator)
            if not pending:
                return Assignment(
                    "wait",
                    self._round.number,
                    retry_after=self.plan.timeouts.poll_seconds,
                    total_rounds=self.plan.rounds,
                    receipts=self._messages_for(collaborator),
                )
            by_name = {t.name: t for t in self._round.assignments[collaborator]}
            return Assignment(
                "run",
                self._round.number,
                tuple(by_name[n] for n in pending),
                total_rounds=self.plan.rounds,
                receipts=self._messages_for(collaborator),
            )

    def _more_work(self, collaborator: str) -> list[str]:
        """In an overlapping round a site that is free again is (re)given its tasks of the
        round, on the latest model, instead of waiting for the next round to open."""
        progress, protocol = self._round, self.round_protocol
        if (
            progress is None
            or progress.final_evaluation
            or not is_overlapping(protocol)
            or collaborator in self._carried
            or not progress.assignments.get(collaborator)
            or not protocol.admits(self._busy(progress))
        ):
            return []
        progress.pending[collaborator] = [t.name for t in progress.assignments[collaborator]]
        return progress.pending[collaborator]

    def _busy(self, progress: RoundProgress) -> int:
        """How many sites work now: on the round's tasks, or on carried-over ones."""
        return progress.working() + len(self._carried)

    def _messages_for(self, collaborator: str) -> tuple[bytes, ...]:
        return tuple(m for o in self.observers for m in o.messages_for(collaborator))

    def heartbeat(self, collaborator: str, round_number: int) -> int:
        """``collaborator`` is alive (a long task runs); the current round."""
        self._check_roster(collaborator)
        with self._lock:
            self._contact(collaborator)
            return self._round.number if self._round else 0

    def _contact(self, collaborator: str) -> None:
        first, away = self._status.contact(collaborator)
        if first:
            log.info("collaborator %s connected", collaborator)
        if away is not None:
            log.info("%s is back after %.0fs without contact", collaborator, away)
            self._publish(SiteBack(collaborator, round(away, 3)))
        if away is not None or self._status.due():
            self._write_summary()

    def model_frames(self, collaborator: str, round_number: int) -> Iterator[Frame]:
        """The global model for ``round_number`` as wire frames, if the caller was assigned it.

        Frames are lent views, cut lazily from the model of this instant (finalize replaces
        the dict, never mutates it; a buffer a download still views is never reused), so
        serving N collaborators holds no extra copy of the model, and makes none per chunk;
        with ``compression.downstream`` a training round's model is coded once, for all.
        """
        self._check_roster(collaborator)
        with self._lock:
            carried = self._carried.of(collaborator, round_number)
            if carried is not None:
                faults.point("engine.download", collaborator)
                origin = self._carried.origin(carried)
                return iter_frames(origin, self.chunking.for_weights(origin), lend=True)
            progress = self._require_assigned(collaborator, round_number)
            faults.point("engine.download", collaborator)
            kinds = [t.kind for t in progress.assignments[collaborator]]
            payload = self._downlink.payload(self.model, round_number, kinds)
            return iter_frames(payload, self.chunking.for_weights(payload), lend=True)

    def shared_model(self, collaborator: str, round_number: int) -> tuple[Hashable, int] | None:
        """The round's model is one for all its collaborators (``ServesOneModel``), except a
        carried task's older model and a coded downlink, which stay per download."""
        with self._lock:
            if self._downlink.codec is not None or self._carried.of(collaborator, round_number):
                return None
            return round_number, sum(spec.nbytes for spec in self.spec)

    def check_result_allowed(self, collaborator: str, round_number: int, task: str) -> TaskSpec:
        """Refuse a result before its tensors are read if the caller may not send it."""
        self._check_roster(collaborator)
        with self._lock:
            late = self._late_task(collaborator, round_number, task)
            if late is not None:
                return late
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
            assert self.round_protocol is not None
            refusal = self.round_protocol.refusal(collaborator, spec)
            if refusal is not None:
                raise NotAssigned(refusal)
            return spec

    # ------------------------------------------------------------------ carried-over work

    def _late_task(self, collaborator: str, round_number: int, task: str) -> TaskSpec | None:
        """The task of a result for an earlier round that an overlapping protocol answers:
        carried-over work, or work it no longer collects (refused once read, with a reason,
        so the site goes on to new work). None for a result of the current round."""
        carried = self._carried.of(collaborator, round_number)
        if carried is not None:
            if task not in carried.pending:
                raise NotAssigned(
                    f"{collaborator} has no carried-over task {task!r} of round {round_number}"
                )
            return next(t for t in carried.tasks if t.name == task)
        progress = self._round
        if is_overlapping(self.round_protocol) and (
            progress is None or round_number < progress.number
        ):
            return next((t for t in self.plan.tasks if t.name == task), None)
        return None

    def _late_refusal(self, collaborator: str, round_number: int, task: TaskSpec) -> str | None:
        """Why a result for an earlier round is not taken (too stale, no longer collected)."""
        progress, protocol = self._round, self.round_protocol
        if not is_overlapping(protocol):
            return None
        if progress is None:
            return (
                f"{collaborator}'s {task.name} result of round {round_number} came after the "
                "federation finished; it is not used"
            )
        if round_number >= progress.number:
            return None
        carried = self._carried.of(collaborator, round_number)
        if carried is not None:
            return protocol.carried_refusal(collaborator, task, carried.round)
        return (
            f"{collaborator}'s {task.name} result is for round {round_number}, whose work is no "
            f"longer collected in round {progress.number} (the aggregator restarted, or the "
            "final evaluation began, since it was assigned); the site gets new work next"
        )

    def _require_assigned(self, collaborator: str, round_number: int) -> RoundProgress:
        progress = self._round
        if progress is None or self.finished.is_set():
            raise RoundOver("the federation is finished")
        if round_number != progress.number:
            # An earlier round closed without the caller (late, lost, partitioned): it moves
            # on. Any other number is a round it was never given.
            stale = 1 <= round_number < progress.number
            raise (RoundOver if stale else NotAssigned)(
                f"{collaborator} asked for round {round_number}, but the current round is {progress.number}"
            )
        if not progress.pending.get(collaborator):
            dropped = collaborator in progress.assignments
            raise (RoundOver if dropped else NotAssigned)(
                f"{collaborator} has no pending task in round {round_number}"
            )
        return progress

    def record_attestation(self, collaborator: str, result: dict[str, object]) -> None:
        """Remember a collaborator's latest attestation verdict, for ``bastion status``."""
        with self._lock:
            self._publish(AttestationVerdict(collaborator, result))
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
    ) -> Ack:
        """Validate and fold in one result."""
        task = self.check_result_allowed(collaborator, round_number, task_name)
        with self._lock:
            late = self._late_refusal(collaborator, round_number, task)
            carried = self._carried.of(collaborator, round_number)
            base = self._carried.origin(carried) if carried is not None else self.model
        if late is not None:
            return self.reject_result(collaborator, round_number, task_name, late)
        try:
            weights = checked_content(
                task,
                example_count,
                metrics,
                weights,
                base,
                self.spec,
                round_number,
                self._decode,
                self._bounds,
                collaborator,
            )
        except UpdateRejected as exc:
            return self.reject_result(collaborator, round_number, task_name, str(exc))
        faults.point("engine.upload", collaborator)
        with self._lock:
            # The round may have closed (timeout) while the tensors were in flight.
            self.check_result_allowed(collaborator, round_number, task_name)
            late = self._late_refusal(collaborator, round_number, task)
            if late is not None:
                return self.reject_result(collaborator, round_number, task_name, late)
            progress, protocol = self._round, self.round_protocol
            assert progress is not None and protocol is not None
            digest = weights_digest(weights) if weights else ""
            carried = self._carried.of(collaborator, round_number)
            if carried is None:
                protocol.on_result(collaborator, task, example_count, weights)
                self._accepted(collaborator, task, round_number, example_count, metrics, digest)
                return Ack(True, "")
            assert is_overlapping(protocol)
            protocol.on_carried_result(
                collaborator,
                task,
                example_count,
                weights,
                carried.round,
                self._carried.origin(carried),
            )
            self._carried.done(collaborator, carried, task_name)
            self._accepted(
                collaborator, task, progress.number, example_count, metrics, digest, carried=True
            )
        return Ack(True, "")

    def folds(self, task: TaskSpec) -> bool:
        """Whether a result of ``task`` is folded in chunk by chunk as it streams: a plain
        training update (not compressed) on a plain streaming round, into a strategy that folds."""
        with self._lock:
            return (
                self._intake is not None
                and task.kind == "train"
                and self.plan.compression is None
                and type(self.round_protocol) is StreamingRound
            )

    def fold_result(
        self, collaborator: str, header: ResultHeader, task: TaskSpec, frames: Iterable[Frame]
    ) -> Ack:
        """Fold a training result in as it streams (``aggregator/streaming.py``), with the
        checks ``submit_result`` makes, in its order; what ``StreamingRound.on_result`` would
        accumulate is folded already."""
        assert self._intake is not None
        round_number, task_name = header.round, header.task
        metrics = {str(key): float(value) for key, value in header.metrics.items()}
        example_count = int(header.example_count)
        try:
            check_header(example_count, metrics, self._bounds, collaborator)
            refusal = None
        except UpdateRejected as exc:
            refusal = str(exc)  # told after the frames were read, as on the whole-update path
        try:
            upload = self._intake.receive(
                collaborator, float(example_count), frames, self.max_update_bytes, refusal
            )
        except (ProtocolError, UpdateRejected) as exc:
            return self.reject_result(collaborator, round_number, task_name, str(exc))
        try:
            faults.point("engine.upload", collaborator)
            with self._lock:
                # The round may have closed (timeout) while the tensors were in flight.
                self.check_result_allowed(collaborator, round_number, task_name)
                if not self._intake.commit(upload):
                    raise RoundOver(
                        f"round {round_number} closed or restarted while {collaborator}'s "
                        "update streamed in; it was not counted: run the round's task again"
                    )
                self._accepted(
                    collaborator, task, round_number, example_count, metrics, upload.digest
                )
        except BaseException:
            self._intake.take_back(upload)  # nothing once committed
            raise
        finally:
            upload.close()
        return Ack(True, "")

    def _accepted(
        self,
        collaborator: str,
        task: TaskSpec,
        round_number: int,
        example_count: int,
        metrics: dict[str, float],
        digest: str,
        carried: bool = False,
    ) -> None:
        """Record an accepted result in the current round (under the lock) and move on; a
        ``carried`` one was assigned in an earlier round and is not pending in this one."""
        progress = self._round
        assert progress is not None
        progress.results.setdefault(task.name, []).append(
            TaskRecord(collaborator, example_count, dict(metrics))
        )
        if not carried:
            remaining = list(progress.pending[collaborator])
            remaining.remove(task.name)
            progress.pending[collaborator] = remaining
        self._publish(
            ResultAccepted(
                round_number,
                collaborator,
                task.name,
                task.kind,
                example_count,
                metrics,
                update_digest=digest,
            )
        )
        self._advance()

    def reject_result(self, collaborator: str, round_number: int, task: str, reason: str) -> Ack:
        log.warning(
            "rejected %s's %s result for round %d: %s", collaborator, task, round_number, reason
        )
        with self._lock:
            progress, protocol = self._round, self.round_protocol
            if self._carried.drop(collaborator, round_number) and progress is not None:
                progress.rejected[collaborator] = f"{task} (round {round_number}): {reason}"
                self._publish(ResultRejected(progress.number, collaborator, task, reason))
                self._advance()
            elif progress is not None and protocol is not None and progress.number == round_number:
                progress.rejected[collaborator] = f"{task}: {reason}"
                # A collaborator whose update is bad has nothing trustworthy left to report.
                progress.pending[collaborator] = []
                protocol.exclude(collaborator, f"its {task} result was rejected: {reason}")
                self._publish(ResultRejected(round_number, collaborator, task, reason))
                self._advance()
        return Ack(False, reason)

    def decline_task(
        self,
        collaborator: str,
        round_number: int,
        task_name: str,
        reason: str,
        metrics: Mapping[str, float],
    ) -> Ack:
        """``collaborator`` will not run its train task ``task_name`` (its privacy budget).

        The rest of its round is dropped with it (a local model it did not train cannot be
        validated), so the round completes without waiting for it.
        """
        self._check_roster(collaborator)
        with self._lock:
            if self._carried.drop(collaborator, round_number):
                log.warning("%s declined its carried-over %s: %s", collaborator, task_name, reason)
                self._publish(TaskDeclined(round_number, collaborator, task_name, reason, metrics))
                self._advance()
                return Ack(True, "")
            progress = self._require_assigned(collaborator, round_number)
            spec = next(
                (t for t in progress.assignments[collaborator] if t.name == task_name), None
            )
            if spec is None or task_name not in progress.pending[collaborator]:
                raise NotAssigned(
                    f"{collaborator} has no pending task {task_name!r} in round {round_number}"
                )
            try:
                if spec.kind != "train":
                    raise UpdateRejected(
                        f"only a train task may be declined, and {task_name!r} validates"
                    )
                if not reason.strip() or len(reason) > MAX_REASON:
                    raise UpdateRejected(f"a decline needs a reason of 1..{MAX_REASON} characters")
                check_metrics(metrics)
            except UpdateRejected as exc:
                return Ack(False, str(exc))
            progress.declined[collaborator] = f"{task_name}: {reason}"
            progress.pending[collaborator] = []
            assert self.round_protocol is not None
            self.round_protocol.exclude(collaborator, f"it declined {task_name}: {reason}")
            log.warning(
                "%s declined %s in round %d: %s", collaborator, task_name, round_number, reason
            )
            self._publish(TaskDeclined(round_number, collaborator, task_name, reason, metrics))
            self._advance()
        return Ack(True, "")

    def fail_task(self, collaborator: str, round_number: int, task_name: str, error: str) -> Ack:
        """``collaborator``'s task raised: the rest of its round is dropped, the round goes on."""
        self._check_roster(collaborator)
        with self._lock:
            error = " ".join(error.split())[:MAX_REASON] or "an unnamed error"
            if self._carried.drop(collaborator, round_number):
                self._status.down.add(collaborator)
                log.warning("%s: carried-over task %s failed: %s", collaborator, task_name, error)
                self._publish(TaskFailed(round_number, collaborator, task_name, error))
                self._write_summary()
                self._advance()
                return Ack(True, "")
            progress = self._require_assigned(collaborator, round_number)
            if task_name not in progress.pending[collaborator]:
                raise NotAssigned(
                    f"{collaborator} has no pending task {task_name!r} in round {round_number}"
                )
            progress.failed[collaborator] = f"{task_name}: {error}"
            progress.pending[collaborator] = []
            self._status.down.add(collaborator)  # it stops; not assigned again until it calls
            assert self.round_protocol is not None
            self.round_protocol.exclude(collaborator, f"its {task_name} task failed: {error}")
            log.warning(
                "%s: task %s failed in round %d: %s", collaborator, task_name, round_number, error
            )
            self._publish(TaskFailed(round_number, collaborator, task_name, error))
            self._write_summary()
            self._advance()
        return Ack(True, "")

    def _leave_round(self, collaborator: str, reason: str) -> None:
        """A lost site's pending work is not waited for (the protocol drops it too)."""
        self._carried.drop(collaborator)
        progress, protocol = self._round, self.round_protocol
        if progress is None or protocol is None or not progress.pending.get(collaborator):
            return
        progress.lost[collaborator] = reason
        progress.pending[collaborator] = []
        protocol.exclude(collaborator, reason)

    # ------------------------------------------------------------------ stage messages

    def _interactive(self, collaborator: str, round_number: int) -> InteractiveRound | str:
        self._check_roster(collaborator)
        protocol, progress = self.round_protocol, self._round
        if (
            progress is None
            or progress.number != round_number
            or not isinstance(protocol, InteractiveRound)
        ):
            return f"no interactive round protocol (secure aggregation) is open for round {round_number}"
        return protocol

    def stage_payload_limit(
        self, collaborator: str, round_number: int, attempt: int, step: str
    ) -> int:
        """How many bytes the caller's stage message may have; 0 when it may send none now."""
        with self._lock:
            found = self._interactive(collaborator, round_number)
            return (
                0
                if isinstance(found, str)
                else found.stage_payload_limit(collaborator, attempt, step)
            )

    def stage_send(
        self,
        collaborator: str,
        round_number: int,
        attempt: int,
        step: str,
        payload: bytes,
        metrics: Mapping[str, float],
    ) -> Ack:
        """Take the caller's message of ``step`` of the round's interactive protocol."""
        with self._lock:
            found = self._interactive(collaborator, round_number)
            if isinstance(found, str):
                return Ack(False, found)
            faults.point(f"secure.{step}", collaborator)
            ack = found.stage_send(collaborator, attempt, step, payload, metrics)
            self._advance()
            return ack

    def stage_fetch(
        self, collaborator: str, round_number: int, attempt: int, step: str
    ) -> StageReply:
        """The answer that closes ``step`` of the caller's interactive protocol."""
        with self._lock:
            found = self._interactive(collaborator, round_number)
            if isinstance(found, str):
                return StageReply("aborted", reason=found)
            return found.stage_fetch(collaborator, attempt, step)

    # ------------------------------------------------------------------ the round loop

    def check_timeout(self) -> None:
        """Close or restart the current round if it has run past ``timeouts.round_seconds``."""
        with self._lock:
            if self.halted is not None:
                return
            lost = self._status.newly_lost(self.plan.timeouts.lost_seconds)
            for name, silent in lost:
                log.warning("%s lost: no contact for %.0fs", name, silent)
                self._publish(SiteLost(name, round(silent, 3)))
                self._leave_round(name, f"lost: no contact for {silent:.0f}s")
            if lost:
                self._write_summary()
                self._advance()
            progress, protocol = self._round, self.round_protocol
            if progress is None or protocol is None or self.finished.is_set():
                return
            if protocol.blocks_timeout():
                self._advance()
                return
            self._advance()
            if self._round is not progress:
                return
            if self._clock() - progress.started < self.plan.timeouts.round_seconds:
                return
            late = progress.waiting_for()
            accepted = (
                self.strategy.accepted if not progress.final_evaluation else len(progress.results)
            )
            closes = progress.final_evaluation or protocol.closes_late_round()
            if closes or accepted >= self.plan.timeouts.min_results:
                log.warning("round %d timed out; closing without %s", progress.number, late)
                with self._fail_stop():
                    self._close_round(timed_out=late)
            else:
                log.warning(
                    "round %d timed out with %d of %d required results; restarting it",
                    progress.number,
                    accepted,
                    self.plan.timeouts.min_results,
                )
                self._publish(RoundRestarted(progress.number, tuple(late)))
                self._round = None  # the next pass assigns the same round number afresh
                self.phase = Phase.ASSIGNING
            self._advance()

    def _advance(self) -> None:
        """Move the federation as far as it can go now: open, close, skip, finish. Iterative."""
        while not self.finished.is_set() and self.halted is None:
            progress, protocol = self._round, self.round_protocol
            with self._fail_stop():
                if progress is None:
                    self._open_next_round()
                elif protocol is not None and self._settled(progress, protocol):
                    self._close_round(timed_out=[])
                else:
                    return

    def _settled(self, progress: RoundProgress, protocol: RoundProtocol) -> bool:
        """Whether the round may close now. An overlapping protocol's round closes when the
        protocol says so, whoever still works, or when nobody works for it any more."""
        if is_overlapping(protocol) and not progress.final_evaluation:
            return protocol.is_settled() or not (progress.working() or self._carried)
        return protocol.is_settled() and not progress.working()

    @contextmanager
    def _fail_stop(self) -> Iterator[None]:
        """A storage error (disk full, read-only, I/O) in the middle of a round's transition
        leaves the model and round counter in memory ahead of the last whole checkpoint, so
        nothing more may happen: the round must not close twice nor the next one open. Every
        call is refused from then on (UNAVAILABLE: sites keep retrying), the service exits
        with the reason, and a restart resumes from the checkpoint on disk."""
        try:
            yield
        except OSError as exc:
            self.halted = (
                f"the aggregator stopped: writing its state failed ({exc}); the last checkpoint "
                f"on disk is whole (round {self.record.saved_round}); fix the cause and restart to "
                "resume from it"
            )
            log.error("%s", self.halted)
            raise CannotServe(self.halted) from None

    def _open_next_round(self) -> None:
        number = self.state.round_completed + 1
        if self.state.finished or number > self.plan.rounds + 1:
            self._finish()
            return
        final = number == self.plan.rounds + 1 or self._training_stopped(number)
        if final and self._carried:
            log.info("training is over; work still out at %s is not used", self._carried.sites())
            self._carried.clear()
        # Sites known to be gone are not waited for; they rejoin when they call again.
        present = self._status.available(self._roster)
        if final:
            evaluating = set(present)
            assignments = {
                name: tasks
                for name, tasks in final_evaluation(self.plan).items()
                if name in evaluating
            }
            if not assignments:
                self.state.finished = True
                self._checkpoint()
                self._finish()
                return
        else:
            assignments = self.assigner.assign(present, number)
            unknown = sorted(set(assignments) - set(self._roster))
            if unknown:
                raise BastionError(
                    f"the task assigner returned collaborators not on the roster: {unknown}"
                )
            if not any(assignments.values()) and not self._carried:
                self._skip_empty_round(number)
                return
        self._empty_streak = 0
        self._open_round(number, final, assignments)

    def _open_round(self, number: int, final: bool, assignments: Assignments) -> None:
        self.phase = Phase.FINAL_EVALUATION if final else Phase.COLLECTING
        progress = RoundProgress(
            number=number,
            final_evaluation=final,
            assignments=assignments,
            # A site still working on an earlier round's tasks is given its tasks of this
            # round only once it is free again (``_more_work``).
            pending=PendingTasks(
                {
                    name: [t.name for t in tasks]
                    for name, tasks in assignments.items()
                    if tasks and name not in self._carried
                }
            ),
            started=self._clock(),
        )
        faults.point("engine.assign")
        self._round = progress
        if not final:
            if self._intake is None:
                self.strategy.begin_round(self.model, number)
            else:
                self._intake.begin_round(self.model, number, norm=self._facts().norm)
        self.round_protocol = self._open_protocol(
            RoundContext(self.plan, progress, self.model, self.strategy, self._clock, self._publish)
        )
        if is_overlapping(self.round_protocol) and not final:
            self._admit(progress, self.round_protocol)
        label = "final evaluation" if final else f"round {number}/{self.plan.rounds}"
        log.info("%s: %d collaborators assigned", label, len(progress.pending))
        self._publish(RoundStarted(number, final, tuple(sorted(progress.pending))))
        self._write_summary()

    def _admit(self, progress: RoundProgress, protocol: OverlappingRound) -> None:
        """Give work only to as many sites as the protocol admits; the others keep their
        assignment and start when they ask once a site is done (``_more_work``)."""
        starting = progress.waiting_for()
        turn = progress.number % len(starting) if starting else 0  # who starts first rotates
        busy = len(self._carried)
        for name in starting[turn:] + starting[:turn]:
            if protocol.admits(busy):
                busy += 1
            else:
                del progress.pending[name]

    def _skip_empty_round(self, number: int) -> None:
        """Nobody was assigned: the round passes with the model unchanged, or training ends."""
        self._empty_streak += 1
        limit = self.plan.participation.max_empty_rounds
        if limit is not None and self._empty_streak > limit:
            self._stopped = TrainingStop(
                EMPTY_ROUND_LIMIT,
                f"{limit} consecutive rounds assigned nobody (participation.max_empty_rounds="
                f"{limit}); training stopped after {self.state.round_completed} rounds",
            )
            return  # the next pass opens the final evaluation
        reason = "no collaborator was assigned a task (the assigner or the sample chose nobody)"
        if self._empty_streak == 1:
            log.warning("round %d: %s; skipped with the model unchanged", number, reason)
        self.state.round_completed = number
        self._publish(RoundSkipped(number, reason))

    def _training_stopped(self, number: int) -> bool:
        """Whether training round ``number`` must not run (a budget, too many empty rounds)."""
        stop = self._stop_reason(number)
        if stop is None:
            return False
        self._stopped = stop
        log.warning("%s; running the final evaluation now", stop.reason)
        self._publish(TrainingStopped(number, stop.record, stop.reason))
        return True

    def _stop_reason(self, next_round: int) -> TrainingStop | None:
        """The reason training has stopped, or an observer's reason it must not reach ``next_round``."""
        if self._stopped is not None:
            return self._stopped
        return next(
            (stop for o in self.observers if (stop := o.stop_training(next_round)) is not None),
            None,
        )

    def _close_round(self, timed_out: list[str]) -> None:
        progress, protocol = self._round, self.round_protocol
        assert progress is not None and protocol is not None
        number = progress.number
        carried_over: list[str] = []
        if is_overlapping(protocol) and not progress.final_evaluation:
            # the round's starting model: finalize replaces self.model, never mutates it
            carried_over = self._carried.carry(progress, self.model)
        rules = {t.name: t.metrics_aggregation for t in self.plan.tasks}
        summary = summarize_metrics(progress, rules)
        protocol.close(summary)
        self.record.consider_best(summary, self.model, model_round=number - 1)
        accepted = 0
        if self._intake is not None:
            self._intake.close()  # what unfinished uploads folded is taken back first
        if not progress.final_evaluation:
            faults.point("engine.aggregate")
            accepted = self._aggregate(progress)
            self.state.round_completed = number
        else:
            self.state.finished = True
        seconds = round(self._clock() - progress.started, 3)
        closed = RoundClosed(
            progress,
            self.state.round_completed,
            summary,
            accepted,
            tuple(timed_out),
            seconds,
            model_digest=self._facts().digest,
        )
        self._publish(closed)
        record: dict[str, object] = {
            "round": number,
            "final_evaluation": progress.final_evaluation,
            "model_round": number - 1,
            "tasks": summary,
            "accepted": accepted,
            "rejected": progress.rejected,
            "declined": progress.declined,
            "failed": progress.failed,
            "lost": progress.lost,
            "timed_out": timed_out,
            "seconds": seconds,
        }
        if carried_over:
            record["carried_over"] = carried_over
        for observer in self.observers:
            record.update(observer.round_fields(closed))
        # the round's record before its checkpoint: a kill between the two redoes the round
        # and writes the record again (the last one wins), never a round without its record
        self._publish(RoundReported(number, record))
        self._checkpoint()
        described = ", ".join(
            f"{task} " + " ".join(f"{k}={v:.4f}" for k, v in m.items() if k != "examples")
            for task, m in summary.items()
        )
        log.info("round %d complete in %.1fs: %s", number, seconds, described or "no metrics")
        self._round = None
        self.phase = Phase.ASSIGNING

    def _aggregate(self, progress: RoundProgress) -> int:
        """The new global model from the round's accepted training results, given a quorum."""
        accepted = self.strategy.accepted
        if accepted < self.plan.timeouts.min_results:
            log.warning(
                "round %d: %d accepted training results, %d required; the global model is unchanged",
                progress.number,
                accepted,
                self.plan.timeouts.min_results,
            )
            return accepted
        try:
            new_model = self.strategy.finalize()
            facts = model_facts(new_model, self._model_scratch)
            if facts.norm is None:
                raise BastionError("the aggregate is not finite")
            self.model, self._model_facts = new_model, facts
        except BastionError as exc:
            # e.g. Krum with fewer results than its f requires: keep the model, go on.
            log.error(
                "round %d: aggregation failed, the global model is unchanged: %s",
                progress.number,
                exc,
            )
            progress.rejected["aggregation"] = str(exc)
        return accepted

    def _facts(self) -> ModelFacts:
        """The digest and norm of ``self.model``, computed once per model."""
        if self._model_facts is None:
            self._model_facts = model_facts(self.model, self._model_scratch)
        return self._model_facts

    def _checkpoint(self) -> None:
        faults.point("engine.checkpoint")
        anchors = {k: v for o in self.observers for k, v in o.checkpoint_fields().items()}
        digest = self.record.checkpoint(self.model, self.strategy.state_dict(), anchors)
        self._publish(Checkpointed(self.state.round_completed, self.state.finished, digest))

    def _finish(self) -> None:
        self._round = None
        self.phase = Phase.FINISHED
        if self._intake is not None:
            self._intake.shut_down()
        self.strategy.close()
        self.state.finished = True
        self._write_summary()
        if not self.finished.is_set():
            log.info("federation finished after %d rounds", self.state.round_completed)
            stop = self._stop_reason(self.state.round_completed + 1)
            self._publish(
                FederationFinished(
                    self.state.round_completed,
                    self.state.best_value,
                    stop.reason if stop else None,
                )
            )
        self.finished.set()

    def _publish(self, event: RoundEvent) -> None:
        with self._fail_stop():  # the metrics log and the DP ledgers are durable records too
            publish(self.observers, event)

    def _write_summary(self) -> None:
        fields = [o.status_fields(self.state.round_completed) for o in self.observers]
        with self._fail_stop():
            self.record.write_status(self._round, self.phase.value, fields)
