"""The collaborator loop: ask for tasks, pull the model, run tasks, push results.

A collaborator only dials out. While the aggregator is unreachable it retries with
capped exponential backoff and jitter; it exits when the aggregator says the
federation is done, or gives up after ``timeouts.reconnect_give_up_seconds``.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from bastion.collaborator.secure_update import SecureAggregation, SecureTransport, SecureUpdate
from bastion.compression.wire import UpdateEncoder
from bastion.data.types import DataShard
from bastion.errors import BastionError
from bastion.plan import TaskSpec
from bastion.privacy.dp.site_budget import LocalPrivacyGuard, Refusal
from bastion.protocol import Assignment
from bastion.runners.base import TaskResult, TaskRunner
from bastion.tensors import Weights

log = logging.getLogger("bastion.collaborator")


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


@runtime_checkable
class RoundAwareRunner(Protocol):
    """Optional runner hooks for client state tied to rounds (FedCurv's own Fisher terms).

    ``begin_round`` comes before the round's model is loaded; ``update_accepted`` after
    the aggregator accepted this runner's training result of that round.
    """

    def begin_round(self, round_number: int) -> None: ...

    def update_accepted(self, round_number: int) -> None: ...


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


class Collaborator:
    """Runs the tasks the aggregator assigns, on this site's data, until the federation ends."""

    def __init__(
        self,
        name: str,
        client: AggregatorClient,
        runner: TaskRunner,
        data: DataShard,
        retryable: tuple[type[Exception], ...],
        give_up_seconds: float = 600.0,
        sleep: Callable[[float], None] = time.sleep,
        on_task: Callable[[int, str, TaskResult], None] | None = None,
        attest: Callable[[], None] | None = None,
        encoder: UpdateEncoder | None = None,
        secure: SecureAggregation | None = None,
        privacy: LocalPrivacyGuard | None = None,
    ) -> None:
        self.name = name
        self._client = client
        self._runner = runner
        self._data = data
        self._retryable = retryable
        self._give_up = give_up_seconds
        self._sleep = sleep
        self._on_task = on_task
        self._attest = attest
        self._attested = False
        self._encoder = encoder  # the plan's update compression; kept across rounds
        self._secure = secure  # set when the plan turns secure aggregation on
        self._privacy = privacy  # local DP: the site's ledger and budget
        self.rounds_run = 0

    def run(self) -> None:
        """Loop until the aggregator says the federation is done."""
        backoff = Backoff()
        last_contact = time.monotonic()
        while True:
            try:
                assignment = self._client.get_tasks()
                if assignment.action == "done":
                    log.info(
                        "%s: federation finished after %d rounds here", self.name, self.rounds_run
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
            except self._retryable as exc:
                self._attested = False  # a new connection proves itself again
                waited = time.monotonic() - last_contact
                if waited > self._give_up:
                    raise GaveUp(
                        f"{self.name}: aggregator unreachable for {waited:.0f}s "
                        f"(limit timeouts.reconnect_give_up_seconds={self._give_up:.0f}): {exc}"
                    ) from None
                delay = backoff.next_delay()
                log.info("%s: %s; retrying in %.1fs", self.name, exc, delay)
                self._sleep(delay)

    def run_round(self, assignment: Assignment) -> None:
        """Pull the round's model, run the assigned tasks in order and push each result."""
        update = self.run_tasks(assignment)
        if update is not None:
            update.run(self._sleep)
            self.finish_secure_update(update)

    def finish_secure_update(self, update: SecureUpdate) -> None:
        """After the session: the runner hears whether its update made it in."""
        aware = self._runner if isinstance(self._runner, RoundAwareRunner) else None
        if update.contributed and aware is not None:
            aware.update_accepted(update.round_number)

    def run_tasks(self, assignment: Assignment) -> SecureUpdate | None:
        """Run the round's tasks and push their results; under secure aggregation the
        training result is returned, to go through the round's session after the rest."""
        round_number = assignment.round
        secure_update: SecureUpdate | None = None
        if self._attest is not None and not self._attested:
            self._attest()
            self._attested = True
        aware = self._runner if isinstance(self._runner, RoundAwareRunner) else None
        if aware is not None:
            aware.begin_round(round_number)
        global_weights = self._client.get_model(round_number)
        self._runner.set_weights(global_weights)
        holds_global = True
        log.info(
            "%s: round %d: %s", self.name, round_number, ", ".join(t.name for t in assignment.tasks)
        )
        for task in assignment.tasks:
            if task.kind == "validate" and task.model == "global" and not holds_global:
                self._runner.set_weights(global_weights)
                holds_global = True
            refusal = self._privacy_refusal(round_number, task)
            if refusal is not None:
                self._decline(round_number, task, refusal)
                break
            result, weights = self._run_task(task)
            if task.kind == "train" and self._secure is not None and weights is not None:
                holds_global = False
                secure_update = self._secure_update(
                    round_number, global_weights, weights, result, secure=self._secure
                )
                if self._on_task:
                    self._on_task(round_number, task.name, result)
                continue
            if task.kind == "train":
                holds_global = False
                if self._encoder is not None and weights is not None:
                    weights = self._encoder.encode(weights, global_weights, round_number)
            accepted, reason = self._client.send_result(
                round_number, task.name, result.example_count, result.metrics, weights
            )
            if not accepted:
                log.warning("%s: aggregator rejected %s: %s", self.name, task.name, reason)
                break
            if task.kind == "train" and aware is not None:
                aware.update_accepted(round_number)
            if self._on_task:
                self._on_task(round_number, task.name, result)
        self.rounds_run += 1
        return secure_update

    def _secure_update(
        self,
        round_number: int,
        global_weights: Weights,
        weights: Weights,
        result: TaskResult,
        secure: SecureAggregation,
    ) -> SecureUpdate:
        transport = self._client
        if not isinstance(transport, SecureTransport):
            raise BastionError(f"{self.name}: this transport cannot do secure aggregation")
        return SecureUpdate(
            self.name,
            secure,
            transport,
            round_number,
            global_weights,
            weights,
            result.example_count,
            result.metrics,
            encoder=self._encoder,
            retryable=self._retryable,
        )

    def _privacy_refusal(self, round_number: int, task: TaskSpec) -> Refusal | None:
        if task.kind != "train" or self._privacy is None:
            return None
        return self._privacy.refusal(self._data, round_number, task)

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

    def _run_task(self, task: TaskSpec) -> tuple[TaskResult, Weights | None]:
        started = time.monotonic()
        if task.kind == "train":
            try:
                result = self._runner.train(self._data, **task.args)
            finally:  # what training spent is on disk before any update leaves the site
                if self._privacy is not None:
                    self._privacy.record()
            weights: Weights | None = self._runner.get_weights()
        else:
            result = self._runner.validate(self._data, **task.args)
            weights = None
        shown = " ".join(f"{k}={v:.4f}" for k, v in result.metrics.items())
        log.info(
            "%s: %s done in %.1fs: %s", self.name, task.name, time.monotonic() - started, shown
        )
        return result, weights
