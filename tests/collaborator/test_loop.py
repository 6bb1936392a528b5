"""The collaborator loop against a scripted aggregator: order of tasks, backoff, give-up."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from bastion.collaborator.loop import Backoff, Collaborator, GaveUp
from bastion.data.types import DataShard
from bastion.protocol import Assignment
from bastion.runners.base import TaskResult
from bastion.spec.tasks import TaskSpec
from bastion.tensors import Weights


class Down(Exception):
    pass


class RecordingRunner:
    def __init__(self) -> None:
        self.weights: Weights = {"w": np.zeros(2, np.float32)}
        self.log: list[tuple[str, float]] = []

    def get_weights(self) -> Weights:
        return dict(self.weights)

    def set_weights(self, weights: Weights) -> None:
        self.weights = dict(weights)

    def train(self, data: DataShard, **args: Any) -> TaskResult:
        self.weights = {"w": self.weights["w"] + 1}
        self.log.append(("train", float(self.weights["w"][0])))
        return TaskResult(5, {"loss": 1.0})

    def validate(self, data: DataShard, **args: Any) -> TaskResult:
        self.log.append(("validate", float(self.weights["w"][0])))
        return TaskResult(2, {"accuracy": 0.5})


class ScriptedAggregator:
    def __init__(self, script: list[Any]) -> None:
        self.script = script
        self.sent: list[tuple[int, str, bool]] = []

    def get_tasks(self) -> Assignment:
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    def get_model(self, round_number: int) -> Weights:
        return {"w": np.full(2, 10.0 * round_number, np.float32)}

    def send_result(
        self,
        round_number: int,
        task: str,
        example_count: int,
        metrics: dict[str, float],
        weights: Weights | None,
    ) -> tuple[bool, str]:
        self.sent.append((round_number, task, weights is not None))
        return True, ""


SHARD = DataShard(
    np.zeros((1, 2)), np.zeros(1, np.int64), np.zeros((1, 2)), np.zeros(1, np.int64), 2
)
TASKS = (
    TaskSpec(name="validate_global", kind="validate"),
    TaskSpec(name="train", kind="train"),
    TaskSpec(name="validate_local", kind="validate", model="local"),
    TaskSpec(name="validate_global_again", kind="validate", model="global"),
)


def test_tasks_run_on_the_right_weights_and_reconnects() -> None:
    sleeps: list[float] = []
    aggregator = ScriptedAggregator(
        [
            Down("refused"),
            Down("refused"),
            Assignment("run", 1, TASKS),
            Assignment("wait", 1, retry_after=0.3),
            Assignment("done"),
        ]
    )
    runner = RecordingRunner()
    collaborator = Collaborator(
        "a", aggregator, runner, SHARD, retryable=(Down,), sleep=sleeps.append
    )
    collaborator.run()
    # Global 10 → validated as 10, trained to 11, local validated at 11, global restored to 10.
    assert runner.log == [
        ("validate", 10.0),
        ("train", 11.0),
        ("validate", 11.0),
        ("validate", 10.0),
    ]
    assert aggregator.sent == [
        (1, "validate_global", False),
        (1, "train", True),
        (1, "validate_local", False),
        (1, "validate_global_again", False),
    ]
    assert len(sleeps) == 3 and sleeps[-1] == 0.3
    assert 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 1.0  # exponential backoff with jitter


def test_gives_up_after_the_limit() -> None:
    aggregator = ScriptedAggregator([Down("x")] * 100)
    collaborator = Collaborator(
        "a",
        aggregator,
        RecordingRunner(),
        SHARD,
        retryable=(Down,),
        give_up_seconds=0.0,
        sleep=lambda s: None,
    )
    with pytest.raises(GaveUp, match="unreachable"):
        collaborator.run()


def test_backoff_is_capped() -> None:
    backoff = Backoff(initial=0.5, maximum=4.0)
    delays = [backoff.next_delay() for _ in range(10)]
    assert max(delays) <= 4.0 and min(delays[5:]) >= 2.0


def test_attests_before_the_first_model_and_again_after_a_reconnect() -> None:
    events: list[str] = []

    class Tracing(ScriptedAggregator):
        def get_model(self, round_number: int) -> Weights:
            events.append(f"model {round_number}")
            return super().get_model(round_number)

    train_only = (TaskSpec(name="train", kind="train"),)
    aggregator = Tracing(
        [
            Assignment("run", 1, train_only),
            Assignment("run", 2, train_only),
            Down("restarting"),
            Assignment("run", 3, train_only),
            Assignment("done"),
        ]
    )
    collaborator = Collaborator(
        "a",
        aggregator,
        RecordingRunner(),
        SHARD,
        retryable=(Down,),
        sleep=lambda s: None,
        attest=lambda: events.append("attest"),
    )
    collaborator.run()
    assert events == ["attest", "model 1", "model 2", "attest", "model 3"]


def test_failed_attestation_stops_before_any_model() -> None:
    class Untrusted(Exception):
        pass

    def refuse() -> None:
        raise Untrusted("aggregator attestation failed")

    aggregator = ScriptedAggregator([Assignment("run", 1, TASKS)])
    collaborator = Collaborator(
        "a", aggregator, RecordingRunner(), SHARD, retryable=(Down,), attest=refuse
    )
    with pytest.raises(Untrusted):
        collaborator.run()
    assert aggregator.sent == []
