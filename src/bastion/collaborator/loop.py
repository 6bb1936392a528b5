"""The collaborator loop: ask for tasks, pull the model, run tasks, push results.

A collaborator only dials out. While the aggregator is unreachable it retries with
capped exponential backoff and jitter, quietly after the first explanation, with a
summary every minute; it exits when the aggregator says the federation is done, or
gives up after ``timeouts.reconnect_give_up_seconds``. A task that raises is reported
to the aggregator (its error type and message, nothing more) before the collaborator
stops with ``TaskCrashed``, so the round goes on without it instead of waiting.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Protocol, TypeVar

from bastion import faults
from bastion.collaborator.local_privacy import NoLocalPrivacy, Refusal, SitePrivacy
from bastion.collaborator.secure_update import SecureUpdate
from bastion.collaborator.update_path import Handover, SendWeights, UpdatePath
from bastion.compression.downstream import Downlink
from bastion.data.types import DataShard
from bastion.errors import BastionError
from bastion.protocol import Assignment, RoundOver
from bastion.runners.base import LendsWeights, RoundAware, TaskResult, TaskRunner
from bastion.spec.tasks import TaskSpec
from bastion.tensors import Weights

log = logging.getLogger("bastion.collaborator")

T = TypeVar("T")


class AggregatorClient(Protocol):
    """What the loop needs from a transport (gRPC or in-process)."""

    def get_tasks(self) -> Assignment: ...

    def get_model(self, round_number: int) -> Weights: ...

    def send_result(
        self,
        round_number: int,
        task: str,
        example_count: int,
        metrics: dict[str, float],
        weights: Weights | None,
    ) -> tuple[bool, str]: ...

    def decline_task(
        self, round_number: int, task: str, reason: str, metrics: Mapping[str, float]
    ) -> tuple[bool, str]: ...

    def fail_task(self, round_number: int, task: str, error: str) -> tuple[bool, str]: ...

    def heartbeat(self, round_number: int) -> int: ...


TaskObserver = Callable[[int, str, TaskResult], None]


class _RoundBlind:
    """The round hooks of a runner that is not ``RoundAware``: nothing to tell it."""

    def begin_round(self, round_number: int) -> None:
        return None

    def update_accepted(self, round_number: int) -> None:
        return None


def no_attestation() -> None:
    """The plan asks for no attestation: the TLS identity is all the aggregator proves."""


def ignore_task(round_number: int, task: str, result: TaskResult) -> None:
    """No one watches the tasks (tests and the simulation may)."""


NO_LOCAL_PRIVACY = NoLocalPrivacy()


@dataclass
class Backoff:
    """Capped exponential backoff with full jitter."""

    initial: float = 0.5
    maximum: float = 10.0
    attempt: int = 0

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.initial * (2**self.attempt))
        self.attempt += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0


class GaveUp(BastionError):
    """The aggregator stayed unreachable for longer than the plan allows."""


class TaskCrashed(BastionError):
    """A task raised in the site's task code; the aggregator was told (type and message)."""

    def __init__(self, message: str, details: str) -> None:
        super().__init__(message)
        self.details = details  # the traceback: for the site's own log, never sent


#: How often a unreachable aggregator is summarized in the log (otherwise retries are quiet).
RETRY_SUMMARY_SECONDS = 60.0


class Heartbeat:
    """While a round's tasks run, tell the aggregator every ``interval`` seconds that we live.

    One thread for the collaborator's life, woken by ``start`` and ``stop``: a thread
    started and joined every round put two waits for the scheduler on each round's path
    (sampled with ten sites on two cores: about 1.5 ms a round in the join alone)."""

    def __init__(self, client: AggregatorClient, interval: float | None) -> None:
        self._client = client
        self._interval = interval
        self._changed = threading.Condition()
        self._round: int | None = None  # the round beaten for; None between rounds
        self._closed = False
        self._thread: threading.Thread | None = None

    def start(self, round_number: int) -> None:
        if self._interval is None:
            return
        with self._changed:
            self._round = round_number
            self._changed.notify()
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._beat, args=(self._interval,), name="bastion-heartbeat", daemon=True
                )
                self._thread.start()

    def stop(self) -> None:
        """No beat starts after this returns; one already on the wire may still arrive."""
        with self._changed:
            self._round = None
            self._changed.notify()

    def close(self) -> None:
        """End the thread (the collaborator is done); a beat on the wire is not waited for
        past a second (the thread is a daemon)."""
        with self._changed:
            self._closed = True
            self._changed.notify()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=1.0)

    def _moved_on(self, beating: int) -> bool:
        """Whether the beats for ``beating`` are over (stopped, a new round, closed)."""
        return self._round != beating or self._closed

    def _beat(self, interval: float) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._round is not None or self._closed)
                beating = self._round
                if self._closed or beating is None:
                    return
                if self._changed.wait_for(partial(self._moved_on, beating), timeout=interval):
                    continue
            try:  # outside the lock: the call may take long, start and stop go on
                self._client.heartbeat(beating)
            except Exception as exc:  # the main loop notices an unreachable aggregator
                log.debug("heartbeat not delivered: %s", exc)


class Collaborator:
    """Runs the tasks the aggregator assigns, on this site's data, until the federation ends.

    What differs between plans is chosen before the loop starts (``build_collaborator``):
    how a training result leaves the site (``update_path``), how the model arrives
    (``downlink``: plain, or coded by ``compression.downstream``), the site's local DP
    (``privacy``) and the attestation run before the first model (``attest``).
    """

    def __init__(
        self,
        name: str,
        client: AggregatorClient,
        runner: TaskRunner,
        data: DataShard,
        retryable: tuple[type[Exception], ...],
        give_up_seconds: float = 600.0,
        sleep: Callable[[float], None] = time.sleep,
        on_task: TaskObserver = ignore_task,
        attest: Callable[[], None] = no_attestation,
        update_path: UpdatePath | None = None,
        privacy: SitePrivacy = NO_LOCAL_PRIVACY,
        heartbeat_seconds: float | None = None,
        downlink: Downlink | None = None,
    ) -> None:
        self.name = name
        self._client = client
        self._runner = runner
        self._round_hooks: RoundAware = runner if isinstance(runner, RoundAware) else _RoundBlind()
        self._data = data
        self._retryable = retryable
        self._give_up = give_up_seconds
        self._sleep = sleep
        self._on_task = on_task
        self._attest = attest
        self._attested = False
        self._update_path = update_path if update_path is not None else SendWeights(client)
        self._privacy = privacy
        self._heartbeat = Heartbeat(client, heartbeat_seconds)
        self._downlink = downlink if downlink is not None else Downlink()
        self.rounds_run = 0  # rounds this site took part in, the final evaluation included
        self.final_evaluations = 0

    def run(self) -> None:
        """Loop until the aggregator says the federation is done."""
        try:
            self._run()
        finally:
            self._heartbeat.close()

    def _run(self) -> None:
        backoff = Backoff()
        last_contact = time.monotonic()
        failures, last_summary = 0, 0.0
        while True:
            try:
                assignment = self._client.get_tasks()
                if failures:
                    log.info(
                        "%s: reached the aggregator again after %.0fs",
                        self.name,
                        time.monotonic() - last_contact,
                    )
                    failures = 0
                if assignment.action == "done":
                    log.info(
                        "%s: federation finished: %d of %d training rounds took part here, "
                        "and %d final evaluation",
                        self.name,
                        self.rounds_run - self.final_evaluations,
                        assignment.total_rounds,
                        self.final_evaluations,
                    )
                    return
                if assignment.action == "wait":
                    backoff.reset()
                    last_contact = time.monotonic()
                    self._sleep(assignment.retry_after)
                    continue
                self.run_round(assignment)
                backoff.reset()
                last_contact = time.monotonic()
            except RoundOver as exc:
                # Late for a round that closed without us (slow, partitioned, lost): the next
                # task request gets the current round. Nobody is at fault; nothing to retry.
                log.warning("%s: %s; asking for the next task", self.name, exc)
                backoff.reset()
                last_contact = time.monotonic()
            except self._retryable as exc:
                self._attested = False  # a new connection proves itself again
                waited = time.monotonic() - last_contact
                if waited > self._give_up:
                    raise GaveUp(
                        f"{self.name}: aggregator unreachable for {waited:.0f}s "
                        f"(limit timeouts.reconnect_give_up_seconds={self._give_up:.0f}): {exc}"
                    ) from None
                delay = backoff.next_delay()
                failures += 1
                now = time.monotonic()
                if failures == 1:
                    log.warning("%s: %s; retrying quietly (a summary every minute)", self.name, exc)
                    last_summary = now
                elif now - last_summary >= RETRY_SUMMARY_SECONDS:
                    log.warning(
                        "%s: still cannot reach the aggregator after %d attempts in %.0fs: %s",
                        self.name,
                        failures,
                        waited,
                        exc,
                    )
                    last_summary = now
                else:
                    log.debug("%s: %s; retrying in %.1fs", self.name, exc, delay)
                self._sleep(delay)

    def run_round(self, assignment: Assignment) -> None:
        """Pull the round's model, run the assigned tasks in order and push each result."""
        update = self.run_tasks(assignment)
        if update is not None:
            update.run(self._sleep)
            self.finish_secure_update(update)

    def finish_secure_update(self, update: SecureUpdate) -> None:
        """After the session: the runner hears whether its update made it in."""
        if update.contributed:
            self._round_hooks.update_accepted(update.round_number)

    def run_tasks(self, assignment: Assignment) -> SecureUpdate | None:
        """Run the round's tasks and push their results; under secure aggregation the
        training result is returned, to go through the round's session after the rest."""
        round_number = assignment.round
        if not self._attested:
            self._attest()
            self._attested = True
        self._round_hooks.begin_round(round_number)
        log.info(
            "%s: %s: %s",
            self.name,
            _round_label(assignment),
            ", ".join(t.name for t in assignment.tasks),
        )
        # A large model's download can outlast timeouts.lost_seconds: beat through it too.
        self._heartbeat.start(round_number)
        try:
            global_weights = self._downlink.receive(
                self._client.get_model(round_number),
                round_number,
                [task.kind for task in assignment.tasks],
            )
            faults.point("collaborator.downloaded", self.name)
            self._runner.set_weights(global_weights)
            secure_update = self._run_assigned(assignment, global_weights)
        finally:
            self._heartbeat.stop()
        self.rounds_run += 1
        if _round_label(assignment) == "final evaluation":
            self.final_evaluations += 1
        return secure_update

    def _run_assigned(self, assignment: Assignment, global_weights: Weights) -> SecureUpdate | None:
        round_number = assignment.round
        secure_update: SecureUpdate | None = None
        holds_global = True
        for task in assignment.tasks:
            if task.kind == "validate" and task.model == "global" and not holds_global:
                self._runner.set_weights(global_weights)
                holds_global = True
            refusal = self._privacy.refusal(self._data, round_number, task)
            if refusal is not None:
                self._decline(round_number, task, refusal)
                break
            if task.kind == "train":
                holds_global = False
                result, weights = self._guarded(round_number, task, self._train)
                faults.point("collaborator.upload", self.name)
                handover = self._update_path.hand_in(
                    round_number, task.name, result, global_weights, weights
                )
            else:
                result = self._guarded(round_number, task, self._validate)
                handover = Handover(
                    *self._client.send_result(
                        round_number, task.name, result.example_count, result.metrics, None
                    )
                )
            if not handover.accepted:
                log.warning("%s: aggregator rejected %s: %s", self.name, task.name, handover.reason)
                break
            if handover.session is not None:
                secure_update = handover.session  # settles after the round's other tasks
            elif task.kind == "train":
                self._round_hooks.update_accepted(round_number)
            self._on_task(round_number, task.name, result)
        return secure_update

    def _guarded(self, round_number: int, task: TaskSpec, run: Callable[[TaskSpec], T]) -> T:
        """Run task code; if it raises, tell the aggregator why and stop with ``TaskCrashed``."""
        try:
            return run(task)
        except Exception as exc:
            error = _one_line(exc)
            details = traceback.format_exc()
        log.error("%s: task %s raised %s", self.name, task.name, error)
        try:
            self._client.fail_task(round_number, task.name, error)
        except self._retryable as exc:
            log.warning("%s: could not report the failure to the aggregator: %s", self.name, exc)
        raise TaskCrashed(
            f"{self.name}: task {task.name!r} of round {round_number} raised {error}", details
        )

    def _decline(self, round_number: int, task: TaskSpec, refusal: Refusal) -> None:
        """Skip the rest of the round and say so, so the aggregator does not wait for us."""
        log.warning("%s", refusal.message)
        accepted, reason = self._client.decline_task(
            round_number, task.name, refusal.reason, refusal.metrics
        )
        if not accepted:
            log.warning(
                "%s: aggregator refused our decline of %s: %s", self.name, task.name, reason
            )

    def _train(self, task: TaskSpec) -> tuple[TaskResult, Weights]:
        started = time.monotonic()
        try:
            result = self._runner.train(self._data, **task.args)
        finally:  # what training spent is on disk before any update leaves the site
            self._privacy.record()
        # Every update path reads the weights before ``hand_in`` returns, before the runner
        # next trains or loads: lent views spare a model-sized copy.
        runner = self._runner
        weights = (
            runner.lend_weights() if isinstance(runner, LendsWeights) else runner.get_weights()
        )
        self._log_done(task, result, started)
        return result, weights

    def _validate(self, task: TaskSpec) -> TaskResult:
        started = time.monotonic()
        result = self._runner.validate(self._data, **task.args)
        self._log_done(task, result, started)
        return result

    def _log_done(self, task: TaskSpec, result: TaskResult, started: float) -> None:
        shown = " ".join(f"{k}={v:.4f}" for k, v in result.metrics.items())
        log.info(
            "%s: %s done in %.1fs: %s", self.name, task.name, time.monotonic() - started, shown
        )


def _round_label(assignment: Assignment) -> str:
    """``round 3/5``, or ``final evaluation`` for the round after the last training round."""
    total = assignment.total_rounds
    if total and assignment.round > total:
        return "final evaluation"
    return f"round {assignment.round}/{total}" if total else f"round {assignment.round}"


def _one_line(exc: BaseException) -> str:
    """An exception as ``Type: message`` on one line, at most 500 characters."""
    message = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text[:500]
