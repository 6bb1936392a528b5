"""A secure aggregation round driven step by step through the real aggregator and collaborators.

Each collaborator trains on its digits shard and hands its update to a ``SecureUpdate``;
``drive`` steps them in turn over the in-process transport, silences the ones told to
drop before a stage, and moves a fake clock past the stage deadlines when nobody else
can move, as a real aggregator's watchdog would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bastion.aggregator.engine import Aggregator
from bastion.aggregator.plugins import standard_protocol
from bastion.aggregator.secure_round import SecureRound
from bastion.algorithms.registry import create_plan_strategy
from bastion.collaborator.factory import build_collaborator
from bastion.collaborator.loop import Collaborator
from bastion.collaborator.secure_update import SecureAggregation, SecureUpdate
from bastion.metrics.log import METRICS_FILE, MetricsLog, read_metrics
from bastion.plan import load_plan
from bastion.privacy.secagg.identity import simulated_identities
from bastion.privacy.secagg.session import Step
from bastion.sim.inprocess import InProcessClient
from bastion.sim.shards import ShardIndex, load_plan_dataset
from bastion.storage.checkpoints import CheckpointStore
from bastion.tensors import Weights
from bastion.workspace.tasks import build_runner
from support.simulation import plain_workspace

#: The stage a collaborator sends in its next step, by the stage whose answer it awaits.
SENDS = {
    Step.SESSION: Step.ADVERTISE_KEYS,
    Step.ADVERTISE_KEYS: Step.SHARE_KEYS,
    Step.SHARE_KEYS: Step.MASKED_INPUT,
    Step.MASKED_INPUT: Step.CONSISTENCY_CHECK,
    Step.CONSISTENCY_CHECK: Step.UNMASKING,
}
STAGES = list(SENDS.values())


@dataclass
class SecureHarness:
    workspace: Path
    aggregator: Aggregator
    collaborators: dict[str, Collaborator]
    now: list[float] = field(default_factory=lambda: [0.0])
    counts: dict[str, int] = field(default_factory=dict)
    local: dict[str, Weights] = field(default_factory=dict)
    updates: dict[str, SecureUpdate] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.collaborators)

    def train(self) -> SecureRound:
        """Every collaborator runs its tasks; returns the round's open session."""
        global_model = dict(self.aggregator.model)
        for name, collaborator in self.collaborators.items():
            update = collaborator.run_tasks(self.collaborators[name]._client.get_tasks())
            assert update is not None
            self.updates[name] = update
            self.local[name] = collaborator._runner.get_weights()
        self.start_model = global_model
        session = self.aggregator.round_protocol.session  # type: ignore[union-attr]
        assert session is not None
        return session

    def drive(self, drop_before: dict[str, Step] | None = None) -> None:
        """Step everyone until the session is settled; silenced ones stop before their stage."""
        drop_before = drop_before or {}
        session = self.aggregator.round_protocol.session  # type: ignore[union-attr]
        assert session is not None
        plan = self.aggregator.plan
        assert plan.secure_aggregation is not None
        jump = max(plan.timeouts.round_seconds, plan.secure_aggregation.stage_seconds) + 1
        for _ in range(400):
            moved = False
            for name, update in self.updates.items():
                if update.finished or drop_before.get(name) == SENDS.get(update.awaiting):
                    continue
                delay = update.step()
                moved = moved or delay is None or delay == 0
            if session.settled and all(
                u.finished or drop_before.get(n) == SENDS.get(u.awaiting)
                for n, u in self.updates.items()
            ):
                return
            if not moved:
                self.now[0] += jump
                self.aggregator.check_timeout()
        raise AssertionError("the secure aggregation round never settled")

    def expected_average(self, contributors: list[str]) -> Weights:
        """FedAvg of the contributors' local models, weighted by example count, in float64."""
        total = sum(self.counts[n] for n in contributors)
        out: Weights = {}
        for key, start in self.start_model.items():
            g = start.astype(np.float64)
            out[key] = (
                g
                + sum(
                    self.counts[n] * (self.local[n][key].astype(np.float64) - g)
                    for n in contributors
                )
                / total
            )
        return out

    def events(self, kind: str) -> list[dict[str, Any]]:
        log = self.workspace / self.aggregator.plan.output.logs / METRICS_FILE
        return [r for r in read_metrics(log) if r["event"] == kind]


def make_harness(
    root: Path, collaborators: int, plan_changes: dict[str, Any] | None = None
) -> SecureHarness:
    changes: dict[str, Any] = {
        "secure_aggregation": {"stage_seconds": 30},
        "timeouts": {"round_seconds": 100},
    }
    for key, value in (plan_changes or {}).items():
        changes[key] = {**changes.get(key, {}), **value} if isinstance(value, dict) else value
    workspace = plain_workspace(root, collaborators=collaborators, rounds=1, plan_changes=changes)
    plan = load_plan(workspace)
    identities, verifier = simulated_identities(plan.collaborator_names())
    now = [0.0]
    aggregator = Aggregator(
        plan,
        create_plan_strategy(plan),
        CheckpointStore(workspace / plan.output.checkpoints, plan.canonical_hash()),
        MetricsLog(workspace / plan.output.logs / METRICS_FILE),
        clock=lambda: now[0],
        protocol=standard_protocol(plan, verifier),
    )
    shards = ShardIndex(plan, load_plan_dataset(plan, workspace))
    harness = SecureHarness(workspace, aggregator, {}, now=now)

    def record(name: str):  # noqa: ANN202 - a small closure factory
        def on_task(round_number: int, task: str, result: Any) -> None:
            if task == "train":
                harness.counts[name] = result.example_count

        return on_task

    for name in plan.collaborator_names():
        harness.collaborators[name] = build_collaborator(
            plan,
            name,
            InProcessClient(aggregator, name),
            build_runner(plan, workspace),
            shards.shard(name),
            on_task=record(name),
            secure=SecureAggregation(plan, identities[name]),
        )
    return harness
