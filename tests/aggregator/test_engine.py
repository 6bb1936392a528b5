"""The round engine is iterative: rounds that assign nobody are skipped or end training as
the plan says, however many there are, with no recursion and no crash."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bastion.aggregator.engine import Aggregator, Phase
from bastion.algorithms.fedavg import FedAvg
from bastion.errors import PlanError
from bastion.metrics.log import MetricsLog, read_metrics
from bastion.plan import parse_plan
from bastion.storage.checkpoints import CheckpointStore

ROSTER = ["a", "b", "c"]
# Nobody in training rounds; everyone validates in the final evaluation (round ROUNDS + 1).
NOBODY_HOOK = """
def assign(participants, round_number):
    if round_number <= {rounds}:
        return {{}}
    return {{name: ["validate_global"] for name in participants}}
"""


def _aggregator(tmp_path: Path, **changes: Any) -> Aggregator:
    rounds = changes.get("rounds", 10_000)
    (tmp_path / "hooks.py").write_text(NOBODY_HOOK.format(rounds=rounds))
    raw: dict[str, Any] = {
        "name": "empty",
        "rounds": rounds,
        "collaborators": ROSTER,
        "tasks": [
            {"name": "validate_global", "kind": "validate"},
            {"name": "train", "kind": "train"},
        ],
        "task_runner": {"path": "task:build_runner"},
        "data": {"loader": "digits"},
        "assigner": "hooks:assign",
    }
    raw.update(changes)
    plan = parse_plan(raw, workspace=tmp_path)
    store = CheckpointStore(tmp_path / "save", plan.canonical_hash())
    store.save_initial({"w": np.zeros(3, np.float32)})
    return Aggregator(plan, FedAvg(), store, MetricsLog(tmp_path / "metrics.jsonl"))


def _validate_final(aggregator: Aggregator) -> None:
    number = aggregator.current_round
    for name in ROSTER:
        assignment = aggregator.get_tasks(name)
        assert [t.name for t in assignment.tasks] == ["validate_global"]
        aggregator.submit_result(name, number, "validate_global", 10, {"accuracy": 0.5}, None)


def test_ten_thousand_rounds_that_assign_nobody_are_skipped_then_the_final_evaluation_runs(
    tmp_path: Path,
) -> None:
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(200)  # the engine must not need the stack, whatever the round count
    try:
        aggregator = _aggregator(tmp_path)
    finally:
        sys.setrecursionlimit(limit)
    assert aggregator.state.round_completed == 10_000
    assert aggregator.phase is Phase.FINAL_EVALUATION and aggregator.current_round == 10_001
    _validate_final(aggregator)
    assert aggregator.finished.is_set() and aggregator.get_tasks("a").action == "done"

    records = read_metrics(tmp_path / "metrics.jsonl")
    skipped = [r for r in records if r["event"] == "round_skipped"]
    assert [r["round"] for r in skipped] == list(range(1, 10_001))
    assert "chose nobody" in skipped[0]["reason"]
    finished = records[-1]
    assert finished["event"] == "finished" and "stopped" not in finished
    assert (aggregator.model["w"] == 0).all()  # no round changed the model


def test_the_plan_ends_training_after_max_empty_rounds(tmp_path: Path) -> None:
    aggregator = _aggregator(tmp_path, participation={"max_empty_rounds": 3})
    # Rounds 1-3 are skipped; the fourth empty round ends training: round 4 is the final evaluation.
    assert aggregator.state.round_completed == 3
    assert aggregator.phase is Phase.FINAL_EVALUATION and aggregator.current_round == 4
    _validate_final(aggregator)
    assert aggregator.finished.is_set()
    records = read_metrics(tmp_path / "metrics.jsonl")
    [stop] = [r for r in records if r["event"] == "empty_round_limit"]
    assert stop["round"] == 4 and "max_empty_rounds=3" in stop["reason"]
    assert records[-1]["event"] == "finished" and records[-1]["stopped"] == stop["reason"]


def test_a_poisson_sample_of_nobody_skips_the_round(tmp_path: Path) -> None:
    # A sampling rate of 1e-9 over three sites draws nobody (the chance of anyone: 3e-9 a round).
    aggregator = _aggregator(
        tmp_path,
        rounds=50,
        assigner=None,
        participation={"sampling": "poisson", "fraction": 1e-9},
    )
    assert aggregator.state.round_completed == 50 and aggregator.current_round == 51
    _validate_final(aggregator)
    assert aggregator.finished.is_set()
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert len([r for r in records if r["event"] == "round_skipped"]) == 50


def test_an_empty_round_limit_of_zero_ends_training_at_the_first_empty_round(
    tmp_path: Path,
) -> None:
    aggregator = _aggregator(
        tmp_path,
        rounds=5,
        assigner=None,
        participation={"sampling": "poisson", "fraction": 1e-9, "max_empty_rounds": 0},
    )
    assert aggregator.state.round_completed == 0 and aggregator.current_round == 1
    assert aggregator.phase is Phase.FINAL_EVALUATION


def test_a_negative_empty_round_limit_is_a_plan_error(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="participation.max_empty_rounds"):
        _aggregator(tmp_path, participation={"max_empty_rounds": -1})
