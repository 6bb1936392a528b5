"""The aggregator's durable record: the best model kept by the plan's rule, checkpoints a
restart resumes from, and the status summary an operator reads."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from bastion.aggregator.durable import DurableRecord
from bastion.aggregator.records import PendingTasks, RoundProgress
from bastion.aggregator.status import StatusFile
from bastion.plan import parse_plan
from bastion.storage.checkpoints import BEST, CheckpointStore, load_checkpoint


def _record(tmp_path: Path, mode: str = "max") -> DurableRecord:
    plan = parse_plan(
        {
            "name": "durable-unit",
            "rounds": 3,
            "collaborators": ["a", "b"],
            "tasks": [
                {"name": "train", "kind": "train"},
                {"name": "check", "kind": "validate"},
            ],
            "task_runner": {"path": "task:build_runner"},
            "data": {"loader": "digits"},
            "best_model": {"task": "check", "metric": "loss", "mode": mode},
        }
    )
    store = CheckpointStore(tmp_path / "save", plan.canonical_hash())
    store.save_initial({"w": np.zeros(3, np.float32)})
    return DurableRecord(plan, store, store.load().state, StatusFile(store))


def _model(value: float) -> dict[str, np.ndarray]:
    return {"w": np.full(3, value, np.float32)}


def test_the_best_model_follows_the_plans_metric_and_mode(tmp_path: Path) -> None:
    record = _record(tmp_path, mode="min")
    assert record.consider_best({"check": {"loss": 0.5}}, _model(1.0), model_round=1)
    assert not record.consider_best({"check": {"loss": 0.7}}, _model(2.0), model_round=2)
    assert record.consider_best({"check": {"loss": 0.2}}, _model(3.0), model_round=3)

    assert (record.state.best_round, record.state.best_value) == (3, 0.2)
    tensors, metadata = load_checkpoint(record.store.path(BEST))
    assert float(tensors["w"][0]) == 3.0 and metadata["bastion.best_round"] == "3"


@pytest.mark.parametrize(
    "summary",
    [{"check": {"loss": math.nan}}, {"check": {"accuracy": 0.9}}, {"train": {"loss": 0.1}}, {}],
)
def test_no_best_model_from_a_missing_or_non_finite_metric(
    tmp_path: Path, summary: dict[str, dict[str, float]]
) -> None:
    record = _record(tmp_path)
    assert not record.consider_best(summary, _model(1.0), model_round=1)
    assert record.state.best_round is None
    assert not record.store.path(BEST).exists()


def test_a_checkpoint_is_what_a_restart_resumes_from(tmp_path: Path) -> None:
    record = _record(tmp_path)
    record.state.round_completed = 2
    digest = record.checkpoint(_model(4.0), {"m": np.ones(3)}, {"audit_head": "abc"})

    assert record.saved_round == 2
    resumed = record.store.load()
    assert resumed.state.round_completed == 2
    assert resumed.state.anchors == {"audit_head": "abc"}
    assert float(resumed.model["w"][0]) == 4.0
    assert float(resumed.strategy_state["m"][0]) == 1.0
    assert len(digest) == 64


def test_the_status_summary_names_the_round_in_progress_and_the_best_model(
    tmp_path: Path,
) -> None:
    record = _record(tmp_path)
    record.consider_best({"check": {"loss": 0.4}}, _model(1.0), model_round=1)
    progress = RoundProgress(
        number=2,
        final_evaluation=False,
        assignments={},
        pending=PendingTasks({"b": ["train"], "a": ["train"]}),
        started=0.0,
    )
    record.write_status(progress, "collecting", [{"privacy": {"epsilon": 1.5}}])

    summary = record.store.read_summary()
    assert summary is not None
    assert summary["current_round"] == 2 and summary["phase"] == "collecting"
    assert summary["assigned"] == ["a", "b"]
    assert summary["best"] == {"round": 1, "value": 0.4, "metric": "loss"}
    assert summary["privacy"] == {"epsilon": 1.5}

    record.write_status(None, "finished")
    summary = record.store.read_summary()
    assert summary is not None
    assert summary["current_round"] is None and summary["assigned"] == []
