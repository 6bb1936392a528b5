"""A task that raises at a site is reported, not waited for; a silent site is reported lost."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bastion.aggregator.engine import Aggregator
from bastion.algorithms.fedavg import FedAvg
from bastion.metrics.log import MetricsLog, read_metrics, round_summaries
from bastion.plan import parse_plan
from bastion.protocol import NotAssigned
from bastion.storage.checkpoints import CheckpointStore

ROSTER = ["a", "b", "c"]


def _aggregator(
    tmp_path: Path, min_results: int = 2, lost_seconds: float = 120, rounds: int = 2
) -> Aggregator:
    plan = parse_plan(
        {
            "name": "failures",
            "rounds": rounds,
            "collaborators": ROSTER,
            "tasks": [
                {"name": "validate_global", "kind": "validate"},
                {"name": "train", "kind": "train"},
            ],
            "task_runner": {"path": "task:build_runner"},
            "data": {"loader": "digits"},
            "timeouts": {
                "round_seconds": 600,
                "min_results": min_results,
                "lost_seconds": lost_seconds,
            },
        }
    )
    store = CheckpointStore(tmp_path / "save", plan.canonical_hash())
    store.save_initial({"w": np.zeros(3, np.float32)})
    return Aggregator(plan, FedAvg(), store, MetricsLog(tmp_path / "metrics.jsonl"))


def _train(aggregator: Aggregator, name: str) -> None:
    number = aggregator.current_round
    aggregator.submit_result(name, number, "validate_global", 10, {"accuracy": 0.5}, None)
    update = {"w": np.ones(3, np.float32)}
    assert aggregator.submit_result(name, number, "train", 5, {"loss": 1.0}, update).accepted


def test_a_failed_task_ends_the_sites_round_and_the_round_closes_with_the_quorum(
    tmp_path: Path,
) -> None:
    aggregator = _aggregator(tmp_path)
    error = "ValueError: epoch is not an argument of train(); did you mean epochs?"
    assert aggregator.fail_task("a", 1, "validate_global", error) == (True, "")
    assert aggregator.get_tasks("a").action == "wait"  # nothing more is expected of it
    _train(aggregator, "b")
    _train(aggregator, "c")
    assert aggregator.current_round == 2  # no timeout needed: two results meet the quorum

    records = read_metrics(tmp_path / "metrics.jsonl")
    [failed] = [r for r in records if r["event"] == "failed"]
    assert (failed["collaborator"], failed["task"], failed["error"]) == (
        "a",
        "validate_global",
        error,
    )
    [first] = round_summaries(records)
    assert first["failed"] == {"a": f"validate_global: {error}"} and first["accepted"] == 2
    status = aggregator.store.read_summary()
    assert status["failures"]["a"] == {
        "count": 1,
        "round": 1,
        "task": "validate_global",
        "error": error,
    }


def test_a_failed_site_sits_out_until_it_calls_again_and_repeated_failures_are_counted(
    tmp_path: Path,
) -> None:
    aggregator = _aggregator(tmp_path, min_results=1, rounds=3)
    aggregator.fail_task("a", 1, "validate_global", "RuntimeError: CUDA out of memory")
    _train(aggregator, "b")
    _train(aggregator, "c")
    # Round 2 was assigned while a was down: nobody waits for it.
    assert aggregator.current_round == 2
    assert aggregator.get_tasks("a").action == "wait"  # a restarted and calls: up again
    _train(aggregator, "b")
    _train(aggregator, "c")
    assert aggregator.get_tasks("a").action == "run"  # back in from round 3
    aggregator.fail_task("a", 3, "validate_global", "RuntimeError: CUDA out of memory")
    assert aggregator.store.read_summary()["failures"]["a"]["count"] == 2


def test_a_failure_must_name_a_pending_task(tmp_path: Path) -> None:
    aggregator = _aggregator(tmp_path)
    with pytest.raises(NotAssigned, match="no pending task 'nope'"):
        aggregator.fail_task("a", 1, "nope", "KeyError: x")
    with pytest.raises(NotAssigned, match="current round is 1"):
        aggregator.fail_task("a", 2, "train", "KeyError: x")


def test_a_silent_site_is_reported_lost_once_and_back_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr("bastion.aggregator.status.time.time", lambda: now[0])
    aggregator = _aggregator(tmp_path, lost_seconds=60)
    for name in ROSTER:
        aggregator.get_tasks(name)
    now[0] += 30
    aggregator.heartbeat("b", 1)  # b trains and says so
    now[0] += 45  # a and c: 75 s silent; b: 45 s
    aggregator.check_timeout()
    aggregator.check_timeout()  # reported once, not on every tick
    aggregator.get_tasks("a")
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["collaborator"] for r in records if r["event"] == "site_lost"] == ["a", "c"]
    [back] = [r for r in records if r["event"] == "site_back"]
    assert back["collaborator"] == "a" and back["away_seconds"] == pytest.approx(75)
    assert aggregator.store.read_summary()["lost"] == ["c"]
    # c's round-1 work is no longer waited for; the round records why.
    assert aggregator.get_tasks("c").action == "wait"  # c calls: back, but round 1 is over for it
    _train(aggregator, "b")  # the round closes with b alone: nobody waits for the lost
    assert aggregator.current_round == 2
    [first] = round_summaries(read_metrics(tmp_path / "metrics.jsonl"))
    assert first["lost"] == {"a": "lost: no contact for 75s", "c": "lost: no contact for 75s"}
