"""The round state machine, driven directly with a controllable clock."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from bastion.aggregator.engine import Aggregator
from bastion.algorithms.fedavg import FedAvg
from bastion.metrics.log import MetricsLog, read_metrics, round_summaries
from bastion.plan import parse_plan
from bastion.protocol import NotAssigned, UnknownCollaborator
from bastion.storage.checkpoints import CheckpointStore

ROSTER = ["a", "b", "c"]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _plan(**changes: object) -> dict:
    raw = {
        "name": "unit",
        "rounds": 2,
        "collaborators": ROSTER,
        "tasks": [
            {"name": "validate_global", "kind": "validate"},
            {"name": "train", "kind": "train"},
        ],
        "task_runner": {"path": "task:build_runner"},
        "data": {"loader": "digits"},
        "timeouts": {"round_seconds": 10, "min_results": 2},
    }
    raw.update(changes)
    return raw


def _aggregator(tmp_path: Path, clock: Clock | None = None, **changes: object) -> Aggregator:
    plan = parse_plan(_plan(**changes))
    store = CheckpointStore(tmp_path / "save", plan.canonical_hash())
    if not (tmp_path / "save" / "initial.safetensors").exists():
        store.save_initial({"w": np.zeros(3, np.float32)})
    return Aggregator(
        plan, FedAvg(), store, MetricsLog(tmp_path / "metrics.jsonl"), clock=clock or Clock()
    )


def _work(aggregator: Aggregator, name: str, value: float, count: int, accuracy: float) -> None:
    round_number = aggregator.current_round
    aggregator.submit_result(
        name, round_number, "validate_global", 10 * count, {"accuracy": accuracy}, None
    )
    update = {"w": np.full(3, value, np.float32)}
    assert aggregator.submit_result(name, round_number, "train", count, {"loss": 1.0}, update) == (
        True,
        "",
    )


def test_full_federation_in_process(tmp_path: Path) -> None:
    aggregator = _aggregator(tmp_path)
    assert aggregator.get_tasks("a").action == "run"
    for name, value, count in [("a", 1.0, 1), ("b", 2.0, 1), ("c", 4.0, 2)]:
        _work(aggregator, name, value, count, accuracy=0.5)
    np.testing.assert_allclose(aggregator.model["w"], (1 + 2 + 8) / 4)
    assert aggregator.current_round == 2
    for name in ROSTER:
        _work(aggregator, name, 0.0, 1, accuracy=0.8)
    # Round 3 is the final evaluation: only the global validation task.
    assignment = aggregator.get_tasks("a")
    assert assignment.round == 3 and [t.name for t in assignment.tasks] == ["validate_global"]
    for name, accuracy in [("a", 0.9), ("b", 0.9), ("c", 0.75)]:
        aggregator.submit_result(name, 3, "validate_global", 10, {"accuracy": accuracy}, None)
    assert aggregator.finished.is_set()
    assert aggregator.get_tasks("b").action == "done"
    summaries = round_summaries(read_metrics(tmp_path / "metrics.jsonl"))
    assert [s["round"] for s in summaries] == [1, 2, 3]
    assert summaries[2]["tasks"]["validate_global"]["accuracy"] == pytest.approx(0.85)
    # Round 3 measured the model of round 2 at 0.85, better than round 2's 0.8 for model 1.
    assert aggregator.state.best_round == 2 and aggregator.state.best_value == pytest.approx(0.85)


def test_unknown_collaborator_and_wrong_round(tmp_path: Path) -> None:
    aggregator = _aggregator(tmp_path)
    with pytest.raises(UnknownCollaborator):
        aggregator.get_tasks("mallory")
    with pytest.raises(NotAssigned, match="current round is 1"):
        list(aggregator.model_frames("a", 2))
    with pytest.raises(NotAssigned, match="not assigned task 'nope'"):
        aggregator.check_result_allowed("a", 1, "nope")


def test_timeout_with_quorum_closes_the_round(tmp_path: Path) -> None:
    clock = Clock()
    aggregator = _aggregator(tmp_path, clock)
    _work(aggregator, "a", 1.0, 1, 0.5)
    _work(aggregator, "b", 3.0, 1, 0.5)
    clock.now = 9.0
    aggregator.check_timeout()
    assert aggregator.current_round == 1
    clock.now = 11.0
    aggregator.check_timeout()
    assert aggregator.current_round == 2
    np.testing.assert_allclose(aggregator.model["w"], 2.0)
    summary = round_summaries(read_metrics(tmp_path / "metrics.jsonl"))[0]
    assert summary["timed_out"] == ["c"]
    with pytest.raises(NotAssigned):  # c's late result for round 1 is refused
        aggregator.check_result_allowed("c", 1, "train")


def test_timeout_without_quorum_restarts_the_round(tmp_path: Path) -> None:
    clock = Clock()
    aggregator = _aggregator(tmp_path, clock)
    _work(aggregator, "a", 1.0, 1, 0.5)
    clock.now = 11.0
    aggregator.check_timeout()
    assert aggregator.current_round == 1
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["event"] for r in records if r["event"] == "round_restart"] == ["round_restart"]
    # Everyone, a included, is assigned the round afresh; the partial sum was discarded.
    assert aggregator.get_tasks("a").action == "run"
    for name, value in [("a", 2.0), ("b", 2.0), ("c", 2.0)]:
        _work(aggregator, name, value, 1, 0.5)
    np.testing.assert_allclose(aggregator.model["w"], 2.0)


def test_all_rejected_keeps_the_model(tmp_path: Path) -> None:
    aggregator = _aggregator(tmp_path)
    for name in ROSTER:
        aggregator.submit_result(name, 1, "validate_global", 1, {"accuracy": 0.1}, None)
        accepted, reason = aggregator.submit_result(
            name, 1, "train", 1, {}, {"w": np.full(3, np.nan, np.float32)}
        )
        assert not accepted and "NaN" in reason
    assert aggregator.current_round == 2
    np.testing.assert_array_equal(aggregator.model["w"], np.zeros(3))


def test_metric_aggregation_rules(tmp_path: Path) -> None:
    tasks = [
        {"name": "validate_global", "kind": "validate", "metrics_aggregation": "min"},
        {"name": "train", "kind": "train", "metrics_aggregation": "weighted_mean"},
    ]
    aggregator = _aggregator(tmp_path, tasks=tasks)
    for name, accuracy, count in [("a", 0.2, 1), ("b", 0.6, 3), ("c", 0.4, 1)]:
        aggregator.submit_result(name, 1, "validate_global", 1, {"accuracy": accuracy}, None)
        aggregator.submit_result(
            name, 1, "train", count, {"loss": accuracy}, {"w": np.zeros(3, np.float32)}
        )
    summary = round_summaries(read_metrics(tmp_path / "metrics.jsonl"))[0]["tasks"]
    assert summary["validate_global"]["accuracy"] == pytest.approx(0.2)
    assert summary["train"]["loss"] == pytest.approx((0.2 + 1.8 + 0.4) / 5)


def test_restart_resumes_after_the_last_round(tmp_path: Path) -> None:
    aggregator = _aggregator(tmp_path)
    for name in ROSTER:
        _work(aggregator, name, 5.0, 1, 0.5)
    resumed = _aggregator(tmp_path)
    assert resumed.current_round == 2
    np.testing.assert_allclose(resumed.model["w"], 5.0)
    with pytest.raises(Exception, match="different plan"):
        _aggregator(tmp_path, rounds=7)


def test_first_contacts_refresh_the_status_file_at_most_once_a_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thousands of simulated sites connecting must not rewrite a growing file each time."""
    roster = [f"site-{i}" for i in range(300)]
    aggregator = _aggregator(tmp_path, collaborators=roster)
    writes: list[int] = []
    original = aggregator.store.write_summary

    def counting(summary: dict) -> None:
        writes.append(len(summary["collaborators_seen"]))
        original(summary)

    monkeypatch.setattr(aggregator.store, "write_summary", counting)
    now = [time.monotonic() + 1000.0]  # well after the round-start write
    monkeypatch.setattr("bastion.aggregator.status.time.monotonic", lambda: now[0])
    for name in roster:
        aggregator.get_tasks(name)
    assert writes == [1]  # the first contact wrote at once; the other 299 waited

    now[0] += 1.0
    aggregator.get_tasks(roster[0])  # a later poll, a second on: every site is in the file
    assert writes == [1, 300]
    summary = aggregator.store.read_summary()
    assert summary is not None and len(summary["collaborators_seen"]) == 300

    now[0] += 5.0
    aggregator.get_tasks(roster[1])  # nothing new: no write
    assert writes == [1, 300]
