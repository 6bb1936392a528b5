"""The client side of a Ray simulation: one worker runs many simulated clients in turn.

A ``ClientWorker`` (a Ray actor in ``bastion.sim.ray_backend``; a plain class here, so it
needs no Ray) builds the plan's runner once and loads and partitions the dataset once.
For each client it is handed the client's assignment, the round's global model and the
client's saved state, and runs the real ``Collaborator.run_tasks`` against a
``RecordingTransport``: the results and declines the client would send are recorded, to
be replayed into the aggregator by the driver. The client's state (the runner's
``client_state()``, the compression residual) goes back with them, so it follows the
client to whichever worker runs it next.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bastion.aggregator.influence import InfluenceBounds
from bastion.aggregator.plugins import update_decoder
from bastion.aggregator.records import checked_content, update_limit
from bastion.collaborator.factory import build_collaborator
from bastion.compression.downstream import Downlink
from bastion.compression.wire import UpdateEncoder
from bastion.errors import BastionError, UpdateRejected
from bastion.framing import assemble_frames, iter_frames
from bastion.plan import Plan, load_plan
from bastion.protocol import Ack, Assignment, NotAssigned, ResultHeader, take_result
from bastion.runners.base import KeepsClientState
from bastion.sim.shards import ShardIndex, load_plan_dataset
from bastion.spec.tasks import TaskSpec
from bastion.tensors import TensorSpec, Weights, spec_of
from bastion.workspace.tasks import build_runner

log = logging.getLogger("bastion.sim")


@dataclass
class ClientState:
    """What one simulated client keeps between its rounds, whichever worker runs it."""

    runner: object | None = None  # runner.client_state(): RNG, local tensors, local DP history
    residual: Weights | None = None  # compression error feedback: what was not sent yet


@dataclass
class SentMessage:
    """One result (or, with ``declined`` set, one decline) a client sent in its round."""

    task: str
    example_count: int
    metrics: dict[str, float]
    weights: Weights | None = None
    declined: str | None = None
    failed: str | None = None


@dataclass
class ClientRound:
    """What a client sent in one round, in the order it sent it."""

    name: str
    round: int
    messages: list[SentMessage] = field(default_factory=list)


class ContentCheckPort:
    """A stateless stand-in for the aggregator's port: the content checks of a result, no round.

    A simulated client's result goes through the same ``take_result`` against it, so the
    client hears the answer the aggregator will give as far as the result's content
    decides (size limit, compressed payload, metrics, shapes).
    """

    def __init__(self, plan: Plan, assignment: Assignment, model: Weights) -> None:
        self._tasks = {t.name: t for t in assignment.tasks}
        self._model = model
        self._spec = spec_of(model)
        self._decode = update_decoder(plan)
        self.chunking = plan.network.chunking
        self._compressed = plan.compression is not None
        self._bounds = InfluenceBounds.of(plan)
        self.max_update_bytes = update_limit(plan, model)

    def update_spec(self, task: TaskSpec) -> list[TensorSpec] | None:
        """As the aggregator: the model's tensors for a plain update, none for validation."""
        if task.kind != "train":
            return []
        return None if self._compressed else self._spec

    def check_result_allowed(self, collaborator: str, round_number: int, task: str) -> TaskSpec:
        if task not in self._tasks:
            raise NotAssigned(f"{collaborator} was not assigned task {task!r}")
        return self._tasks[task]

    def submit_result(
        self,
        collaborator: str,
        round_number: int,
        task_name: str,
        example_count: int,
        metrics: dict[str, float],
        weights: Weights | None,
    ) -> Ack:
        task = self._tasks[task_name]
        try:
            checked_content(
                task,
                example_count,
                metrics,
                weights,
                self._model,
                self._spec,
                round_number,
                self._decode,
                self._bounds,
                collaborator,
            )
        except UpdateRejected as exc:
            return Ack(False, str(exc))
        return Ack(True, "")

    def reject_result(self, collaborator: str, round_number: int, task: str, reason: str) -> Ack:
        return Ack(False, reason)

    def decline_task(
        self,
        collaborator: str,
        round_number: int,
        task_name: str,
        reason: str,
        metrics: Mapping[str, float],
    ) -> Ack:
        return Ack(True, "")

    def fail_task(self, collaborator: str, round_number: int, task_name: str, error: str) -> Ack:
        return Ack(True, "")


class RecordingTransport:
    """An ``AggregatorClient`` that serves the round's model and records what is sent.

    Each result gets the answer the aggregator will give it as far as its content decides:
    a client whose update will be rejected stops its round and does not hear "accepted",
    exactly as over a network. The driver still applies every check when it replays it.
    """

    def __init__(self, plan: Plan, name: str, assignment: Assignment, model: Weights) -> None:
        self.name = name
        self.sent = ClientRound(name, assignment.round)
        self._model = model
        self._checks = ContentCheckPort(plan, assignment, model)
        self._downlink = Downlink.for_spec(plan.compression)
        self._task_kinds = [task.kind for task in assignment.tasks]

    def get_tasks(self) -> Assignment:
        raise BastionError(f"{self.name}: a simulated client is handed its assignment")

    def get_model(self, round_number: int) -> Weights:
        """A private copy of the round's model (coded as the aggregator would code it),
        rebuilt from wire frames as the transports do."""
        if round_number != self.sent.round:
            raise BastionError(f"{self.name} asked for round {round_number}, not {self.sent.round}")
        checks = self._checks
        payload = self._downlink.payload(self._model, round_number, self._task_kinds)
        chunk = checks.chunking.for_weights(payload)
        return assemble_frames(iter_frames(payload, chunk), checks.max_update_bytes)

    def send_result(
        self,
        round_number: int,
        task: str,
        example_count: int,
        metrics: dict[str, float],
        weights: Weights | None,
    ) -> Ack:
        metrics = {key: float(value) for key, value in metrics.items()}
        self.sent.messages.append(SentMessage(task, int(example_count), metrics, weights))
        header = ResultHeader(round_number, task, int(example_count), metrics)
        weights = weights or {}
        frames = iter_frames(weights, self._checks.chunking.for_weights(weights))
        return take_result(self._checks, self.name, header, frames)

    def decline_task(
        self, round_number: int, task: str, reason: str, metrics: Mapping[str, float]
    ) -> Ack:
        metrics = {key: float(value) for key, value in metrics.items()}
        self.sent.messages.append(SentMessage(task, 0, metrics, declined=reason))
        return Ack(True, "")

    def fail_task(self, round_number: int, task: str, error: str) -> Ack:
        self.sent.messages.append(SentMessage(task, 0, {}, failed=error))
        return Ack(True, "")

    def heartbeat(self, round_number: int) -> int:
        return round_number


class ClientWorker:
    """Runs simulated clients one after another with one runner and one loaded dataset."""

    def __init__(self, workspace: str, plan_hash: str) -> None:
        self.plan = load_plan(Path(workspace))
        if self.plan.canonical_hash() != plan_hash:
            raise BastionError(
                f"the plan in {workspace} changed after the simulation started; start it again"
            )
        root = Path(workspace)
        self.runner = build_runner(self.plan, root)  # imports the task code from the workspace
        self.shards = ShardIndex(self.plan, load_plan_dataset(self.plan, root))

    def keeps_client_state(self) -> bool:
        """Whether the runner hands over per-client state (else it carries it across clients)."""
        return isinstance(self.runner, KeepsClientState)

    def run_client(
        self, name: str, assignment: Assignment, model: Weights, state: ClientState | None
    ) -> tuple[ClientRound, ClientState]:
        """Run ``name``'s tasks of the round as its collaborator loop would; record its sends."""
        state = state or ClientState()
        runner = self.runner
        if isinstance(runner, KeepsClientState):
            runner.load_client_state(state.runner)
        encoder = UpdateEncoder(self.plan.compression) if self.plan.compression else None
        if encoder is not None and encoder.feedback is not None:
            encoder.feedback.load_state_dict(state.residual or {})
        transport = RecordingTransport(self.plan, name, assignment, model)
        # Local DP budget on the client's own accountant history, loaded with its state.
        collaborator = build_collaborator(
            self.plan, name, transport, runner, self.shards.shard(name), encoder=encoder
        )
        collaborator.run_tasks(assignment)
        kept = ClientState(
            runner.client_state() if isinstance(runner, KeepsClientState) else None,
            encoder.feedback.state_dict() if encoder and encoder.feedback else None,
        )
        return transport.sent, kept
