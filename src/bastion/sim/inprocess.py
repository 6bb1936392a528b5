"""A whole federation in this process: the real aggregator and collaborator loop, no network.

``bastion simulate --in-process`` and ``simulate_in_process(workspace)`` run the same
``Aggregator`` and ``Collaborator`` classes as separate processes do, joined by an
in-process transport whose frames go through ``bastion.tensors`` framing and assembly,
so every size and shape check still applies. Checkpoints and metrics go to the
workspace exactly as with processes.

It scales to hundreds of clients on one machine: the dataset is loaded and partitioned
once (shards are index arrays, cut when their client runs), clients are scheduled one
after another in roster order (deterministic), and by default all clients share one
runner whose weights are swapped each round. A runner with per-client state (data
shuffling, local buffers, FedCurv's own Fisher terms) keeps it across the swap through
``client_state()`` / ``load_client_state()``; ``share_runner=False`` builds one runner
per client instead, lazily.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from bastion.aggregator.engine import Aggregator
from bastion.aggregator.service import build_aggregator
from bastion.collaborator.factory import build_collaborator
from bastion.collaborator.loop import AggregatorClient, Collaborator
from bastion.collaborator.secure_update import SecureAggregation, SecureUpdate
from bastion.compression.wire import UpdateEncoder
from bastion.errors import BastionError
from bastion.framing import assemble_frames, iter_frames
from bastion.plan import Plan, load_plan
from bastion.privacy.secagg.identity import simulated_identities
from bastion.privacy.secagg.session import Step
from bastion.protocol import (
    Ack,
    Assignment,
    FederationPort,
    ResultHeader,
    StageReply,
    take_result,
)
from bastion.runners.base import KeepsClientState, TaskRunner
from bastion.sim.shards import ShardIndex, load_plan_dataset
from bastion.tensors import Weights
from bastion.workspace.tasks import build_runner

log = logging.getLogger("bastion.sim")


class InProcessClient:
    """The collaborator's side of the in-process transport: an ``AggregatorClient``.

    Like the gRPC servicer, it hands each result to ``take_result`` as wire frames, so
    it is refused before it is read when it is not expected and every tensor is rebuilt
    with the plan's size limit.
    """

    def __init__(self, aggregator: FederationPort, name: str) -> None:
        self.aggregator = aggregator
        self.name = name

    def get_tasks(self) -> Assignment:
        return self.aggregator.get_tasks(self.name)

    def get_model(self, round_number: int) -> Weights:
        return assemble_frames(
            self.aggregator.model_frames(self.name, round_number),
            self.aggregator.max_update_bytes,
        )

    def send_result(
        self,
        round_number: int,
        task: str,
        example_count: int,
        metrics: dict[str, float],
        weights: Weights | None,
    ) -> Ack:
        header = ResultHeader(round_number, task, int(example_count), metrics)
        weights = weights or {}
        frames = iter_frames(weights, self.aggregator.chunking.for_weights(weights))
        return take_result(self.aggregator, self.name, header, frames)

    def decline_task(
        self, round_number: int, task: str, reason: str, metrics: Mapping[str, float]
    ) -> Ack:
        header = ResultHeader(round_number, task, 0, metrics, declined=reason)
        return take_result(self.aggregator, self.name, header, ())

    def fail_task(self, round_number: int, task: str, error: str) -> Ack:
        header = ResultHeader(round_number, task, 0, {}, failed=error)
        return take_result(self.aggregator, self.name, header, ())

    def heartbeat(self, round_number: int) -> int:
        return self.aggregator.heartbeat(self.name, round_number)

    def secagg_send(
        self,
        round_number: int,
        attempt: int,
        step: Step,
        payload: bytes,
        metrics: Mapping[str, float],
    ) -> Ack:
        port = self.aggregator
        limit = port.stage_payload_limit(self.name, round_number, attempt, step.value)
        if len(payload) > limit:
            return Ack(
                False, f"a secure aggregation message of {len(payload)} bytes exceeds {limit}"
            )
        return port.stage_send(
            self.name, round_number, attempt, step.value, bytes(payload), dict(metrics)
        )

    def secagg_fetch(self, round_number: int, attempt: int, step: Step) -> StageReply:
        return self.aggregator.stage_fetch(self.name, round_number, attempt, step.value)


ClientFactory = Callable[[Aggregator, str], AggregatorClient]
RoundCallback = Callable[[int, "InProcessFederation"], None]


class InProcessFederation:
    """Drives one workspace's federation to the end in this process.

    ``client_factory`` builds each collaborator's transport (tests wrap it to model
    misbehaving clients); ``on_round(round, federation)`` runs after every completed
    round, when ``federation.aggregator.model`` is that round's global model.
    """

    def __init__(
        self,
        workspace: Path | str,
        *,
        share_runner: bool = True,
        client_factory: ClientFactory = InProcessClient,
        on_round: RoundCallback | None = None,
    ) -> None:
        self.workspace = Path(workspace).resolve()
        self.plan: Plan = load_plan(self.workspace)
        # Secure aggregation: in-memory identities stand in for certificates (no PKI here).
        self._secure: dict[str, SecureAggregation] = {}
        verifier = None
        if self.plan.uses_secure_aggregation:
            identities, verifier = simulated_identities(self.plan.collaborator_names())
            self._secure = {n: SecureAggregation(self.plan, i) for n, i in identities.items()}
        self._updates: dict[str, tuple[Collaborator, SecureUpdate]] = {}
        self.aggregator = build_aggregator(self.plan, self.workspace, secure_verifier=verifier)
        self.shards = ShardIndex(self.plan, load_plan_dataset(self.plan, self.workspace))
        self._share_runner = share_runner
        self._client_factory = client_factory
        self._on_round = on_round
        self._clients: dict[str, AggregatorClient] = {}
        self._runners: dict[str, TaskRunner] = {}
        self._states: dict[str, object] = {}
        self._encoders: dict[str, UpdateEncoder] = {}
        self._shared: TaskRunner | None = None
        self._stop_requested = False

    def stop(self) -> None:
        """End ``run`` after the round in progress (e.g. from ``on_round`` once a target is met)."""
        self._stop_requested = True

    def client(self, name: str) -> AggregatorClient:
        if name not in self._clients:
            self._clients[name] = self._client_factory(self.aggregator, name)
        return self._clients[name]

    def runner(self, name: str) -> TaskRunner:
        """The runner ``name`` trains with (built on first use)."""
        if self._share_runner:
            if self._shared is None:
                self._shared = build_runner(self.plan, self.workspace)
            return self._shared
        if name not in self._runners:
            self._runners[name] = build_runner(self.plan, self.workspace)
        return self._runners[name]

    def run(self) -> Aggregator:
        """Run every round and the final evaluation; returns the finished aggregator."""
        roster = self.plan.collaborator_names()
        while not (self.aggregator.finished.is_set() or self._stop_requested):
            progressed = False
            for name in roster:
                if self.aggregator.finished.is_set() or self._stop_requested:
                    break
                assignment = self.client(name).get_tasks()
                if assignment.action != "run":
                    continue
                before = self.aggregator.state.round_completed
                self._run_round(name, assignment)
                progressed = True
                self._report_rounds(before)
            if self._updates:
                before = self.aggregator.state.round_completed
                self._drive_secure_updates()
                self._report_rounds(before)
            if not (progressed or self.aggregator.finished.is_set() or self._stop_requested):
                raise BastionError(
                    f"in-process simulation stalled in round {self.aggregator.current_round}: "
                    "no collaborator has a task left, yet the round did not complete"
                )
        return self.aggregator

    def _run_round(self, name: str, assignment: Assignment) -> None:
        runner = self.runner(name)
        keeps_state = self._share_runner and isinstance(runner, KeepsClientState)
        if keeps_state:
            assert isinstance(runner, KeepsClientState)
            runner.load_client_state(self._states.get(name))
        compression = self.plan.compression
        if compression is not None and name not in self._encoders:
            self._encoders[name] = UpdateEncoder(compression)  # one residual per client
        # Local DP budget on the client's own history (swapped in above); kept in memory.
        collaborator = build_collaborator(
            self.plan,
            name,
            self.client(name),
            runner,
            self.shards.shard(name),
            encoder=self._encoders.get(name),
            secure=self._secure.get(name),
        )
        update = collaborator.run_tasks(assignment)
        if update is not None:
            self._updates[name] = (collaborator, update)
        if keeps_state:
            assert isinstance(runner, KeepsClientState)
            self._states[name] = runner.client_state()

    def _drive_secure_updates(self) -> None:
        """Step every pending secure aggregation update in turn until all are through.

        When nobody can move (a stage waits for someone who is not coming), the
        aggregator's stage deadlines decide, on the real clock.
        """
        while self._updates:
            waits: list[float] = []
            for name, (collaborator, update) in list(self._updates.items()):
                delay = update.step()
                if delay is None:
                    del self._updates[name]
                    collaborator.finish_secure_update(update)
                elif delay > 0:
                    waits.append(delay)
            if self._updates and len(waits) == len(self._updates):
                self.aggregator.check_timeout()
                time.sleep(min(waits))

    def _report_rounds(self, completed_before: int) -> None:
        if self._on_round is None:
            return
        for number in range(completed_before + 1, self.aggregator.state.round_completed + 1):
            self._on_round(number, self)


def simulate_in_process(
    workspace: Path | str,
    *,
    share_runner: bool = True,
    on_round: RoundCallback | None = None,
) -> Aggregator:
    """Run the workspace's whole federation in this process; see ``InProcessFederation``."""
    federation = InProcessFederation(workspace, share_runner=share_runner, on_round=on_round)
    return federation.run()
