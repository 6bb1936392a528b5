"""Sites that decline training for their local DP budget: the round goes on without them,
and once every site that can train has declined, the federation ends cleanly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bastion.aggregator.engine import Aggregator
from bastion.aggregator.local_privacy import potential_trainers
from bastion.algorithms.fedavg import FedAvg
from bastion.metrics.log import MetricsLog, read_metrics, round_summaries
from bastion.plan import parse_plan
from bastion.protocol import NotAssigned, UnknownCollaborator
from bastion.storage.checkpoints import CheckpointStore

ROSTER = ["a", "b", "c"]
BUDGET = 2.0
REASON = "local DP budget: epsilon spent 1.5, its 8 DP-SGD steps would bring it to 2.1"


def _raw(**changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "declines",
        "rounds": 4,
        "collaborators": ROSTER,
        "tasks": [
            {"name": "validate_global", "kind": "validate"},
            {"name": "train", "kind": "train"},
            {"name": "validate_local", "kind": "validate", "model": "local"},
        ],
        "task_runner": {"path": "task:build_runner"},
        "data": {"loader": "digits"},
        "timeouts": {"round_seconds": 600, "min_results": 1},
        "differential_privacy": {
            "local": {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "epsilon_budget": BUDGET}
        },
    }
    raw.update(changes)
    return raw


def _aggregator(tmp_path: Path, **changes: Any) -> Aggregator:
    plan = parse_plan(_raw(**changes))
    store = CheckpointStore(tmp_path / "save", plan.canonical_hash())
    store.save_initial({"w": np.zeros(3, np.float32)})
    return Aggregator(plan, FedAvg(), store, MetricsLog(tmp_path / "metrics.jsonl"))


def _train(aggregator: Aggregator, name: str, epsilon: float) -> None:
    number = aggregator.current_round
    metrics = {"accuracy": 0.5}
    assert aggregator.submit_result(name, number, "validate_global", 10, metrics, None)[0]
    update = {"w": np.ones(3, np.float32)}
    assert aggregator.submit_result(name, number, "train", 5, {"dp_epsilon": epsilon}, update)[0]
    assert aggregator.submit_result(name, number, "validate_local", 10, metrics, None)[0]


def _decline(aggregator: Aggregator, name: str, spent: float) -> None:
    number = aggregator.current_round
    assert aggregator.submit_result(name, number, "validate_global", 10, {"accuracy": 0.5}, None)[0]
    figures = {"dp_epsilon": spent, "dp_epsilon_next": spent + 0.6, "dp_epsilon_budget": BUDGET}
    assert aggregator.decline_task(name, number, "train", REASON, figures) == (True, "")


def test_a_declined_train_task_drops_the_rest_of_that_sites_round(tmp_path: Path) -> None:
    aggregator = _aggregator(tmp_path)
    _decline(aggregator, "a", spent=1.5)
    assert aggregator.get_tasks("a").action == "wait"  # its validate_local went with it
    _train(aggregator, "b", 0.9)
    _train(aggregator, "c", 1.1)
    assert aggregator.current_round == 2  # round 1 closed at once, no timeout needed

    records = read_metrics(tmp_path / "metrics.jsonl")
    [declined] = [r for r in records if r["event"] == "declined"]
    assert declined["collaborator"] == "a" and declined["reason"] == REASON
    assert declined["metrics"]["dp_epsilon_next"] == pytest.approx(2.1)
    [first] = round_summaries(records)
    assert first["accepted"] == 2 and first["declined"] == {"a": f"train: {REASON}"}
    assert first["local_privacy"] == {
        "mechanism": "dp_sgd",
        "delta": 1e-5,
        "epsilon_budget": BUDGET,
        "epsilon": {"a": 1.5, "b": 0.9, "c": 1.1},
        "declined": ["a"],
        "stopped": None,
    }
    assert aggregator.store.read_summary()["local_privacy"]["epsilon"]["b"] == 0.9


def test_when_every_site_declined_the_federation_runs_the_final_evaluation(
    tmp_path: Path,
) -> None:
    aggregator = _aggregator(tmp_path)
    for name in ROSTER:
        _train(aggregator, name, 1.0)
    for name in ROSTER:
        _decline(aggregator, name, spent=1.5)
    # Round 3 of 4 is the final evaluation: only validate_global, of the round-2 model.
    assignment = aggregator.get_tasks("a")
    assert (assignment.round, [t.name for t in assignment.tasks]) == (3, ["validate_global"])
    for name in ROSTER:
        aggregator.submit_result(name, 3, "validate_global", 10, {"accuracy": 0.5}, None)
    assert aggregator.finished.is_set()
    assert aggregator.get_tasks("b").action == "done"

    records = read_metrics(tmp_path / "metrics.jsonl")
    [stop] = [r for r in records if r["event"] == "privacy_budget_reached"]
    assert stop["round"] == 3
    assert stop["reason"] == (
        "local privacy budget: every collaborator declined training, its next round would "
        "pass differential_privacy.local.epsilon_budget=2 at delta=1e-05 (epsilon spent: "
        "a 1.5, b 1.5, c 1.5)"
    )
    assert records[-1]["event"] == "finished" and records[-1]["stopped"] == stop["reason"]
    final = round_summaries(records)[-1]
    assert final["final_evaluation"] and final["model_round"] == 2
    assert aggregator.state.round_completed == 2


def test_a_site_that_trains_again_is_no_longer_counted_as_spent(tmp_path: Path) -> None:
    aggregator = _aggregator(tmp_path)
    _decline(aggregator, "a", spent=1.5)
    _decline(aggregator, "b", spent=1.5)
    _train(aggregator, "c", 1.0)
    _train(aggregator, "a", 1.8)  # e.g. a smaller train task fitted its budget
    _decline(aggregator, "b", spent=1.5)
    _decline(aggregator, "c", spent=1.9)
    assert aggregator.current_round == 3 and not aggregator.finished.is_set()
    assert aggregator.get_tasks("a").tasks[1].name == "train"


def test_only_a_pending_train_task_may_be_declined(tmp_path: Path) -> None:
    aggregator = _aggregator(tmp_path)
    figures = {"dp_epsilon": 1.0}
    refused = aggregator.decline_task("a", 1, "validate_global", REASON, figures)
    assert refused == (False, "only a train task may be declined, and 'validate_global' validates")
    assert aggregator.decline_task("a", 1, "train", " ", figures)[0] is False
    assert aggregator.decline_task("a", 1, "train", REASON, {"dp_epsilon": float("nan")}) == (
        False,
        "metric 'dp_epsilon' is not finite (nan)",
    )
    with pytest.raises(NotAssigned, match="current round is 1"):
        aggregator.decline_task("a", 2, "train", REASON, figures)
    with pytest.raises(UnknownCollaborator):
        aggregator.decline_task("mallory", 1, "train", REASON, figures)
    assert aggregator.decline_task("a", 1, "train", REASON, figures) == (True, "")
    with pytest.raises(NotAssigned, match="no pending task"):
        aggregator.decline_task("a", 1, "train", REASON, figures)


def test_sites_that_never_train_do_not_keep_training_going(tmp_path: Path) -> None:
    groups = {
        "groups": [
            {"name": "auditors", "tasks": ["validate_global"], "collaborators": ["c"]},
            {"name": "trainers", "tasks": ["validate_global", "train", "validate_local"]},
        ]
    }
    plan = parse_plan(_raw(task_groups=groups))
    assert potential_trainers(plan) == {"a", "b"}
    assert potential_trainers(parse_plan(_raw())) == set(ROSTER)
    random = parse_plan(_raw(task_groups={**groups, "mode": "random"}))
    assert potential_trainers(random) == {"a", "b"}
    aggregator = _aggregator(tmp_path, task_groups=groups)
    aggregator.submit_result("c", 1, "validate_global", 10, {"accuracy": 0.5}, None)
    for name in ("a", "b"):
        _decline(aggregator, name, spent=1.5)
    assignment = aggregator.get_tasks("a")  # the final evaluation, as round 2
    assert (assignment.round, [t.name for t in assignment.tasks]) == (2, ["validate_global"])
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["round"] for r in records if r["event"] == "privacy_budget_reached"] == [2]
