"""In process: a storage error while a round closes stops the engine, and nothing moves on.

Before the fix, ENOSPC in round 2's checkpoint escaped into gRPC as UNKNOWN (the honest site
that sent the round's last result exited with an error) while the engine kept the round
open with nothing pending, so the next timeout tick closed the same round a second time and
opened round 3, the disk still saying round 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bastion import faults
from bastion.aggregator.engine import Aggregator
from bastion.algorithms.fedavg import FedAvg
from bastion.metrics.log import MetricsLog
from bastion.plan import parse_plan
from bastion.protocol import CannotServe
from bastion.storage.checkpoints import CheckpointStore


def _aggregator(tmp_path: Path) -> Aggregator:
    raw = {
        "name": "storage",
        "rounds": 3,
        "collaborators": ["a"],
        "tasks": [{"name": "train", "kind": "train"}],
        "task_runner": {"path": "task:build_runner"},
        "data": {"loader": "digits"},
    }
    plan = parse_plan(raw, workspace=tmp_path)
    store = CheckpointStore(tmp_path / "save", plan.canonical_hash())
    store.save_initial({"w": np.zeros(3, np.float32)})
    return Aggregator(plan, FedAvg(), store, MetricsLog(tmp_path / "metrics.jsonl"))


def _train(aggregator: Aggregator, number: int) -> None:
    weights = {"w": np.full(3, float(number), np.float32)}
    aggregator.submit_result("a", number, "train", 10, {"loss": 1.0}, weights)


@pytest.mark.parametrize("point", ["atomic.before_fsync@last.safetensors", "engine.checkpoint"])
def test_enospc_while_closing_a_round_halts_the_engine(tmp_path: Path, point: str) -> None:
    aggregator = _aggregator(tmp_path)
    _train(aggregator, 1)
    faults.arm(f"{point}:enospc:1")
    try:
        with pytest.raises(CannotServe, match="No space left on device"):
            _train(aggregator, 2)
    finally:
        faults.arm(None)
    assert aggregator.halted is not None and "round 1" in aggregator.halted
    # Nothing moves any more: no second close of round 2, no round 3, every call refused.
    aggregator.check_timeout()
    assert aggregator.current_round == 2
    with pytest.raises(CannotServe):
        aggregator.get_tasks("a")
    # A restart resumes from the whole checkpoint of round 1 and redoes round 2.
    restarted = _aggregator_again(tmp_path, aggregator)
    assert restarted.state.round_completed == 1 and restarted.current_round == 2
    _train(restarted, 2)
    assert restarted.state.round_completed == 2


def _aggregator_again(tmp_path: Path, old: Aggregator) -> Aggregator:
    return Aggregator(old.plan, FedAvg(), old.store, MetricsLog(tmp_path / "metrics.jsonl"))


def test_unwritable_metrics_log_halts_instead_of_escaping_as_unknown(tmp_path: Path) -> None:
    """The metrics log (like a DP ledger) is a durable record: when it cannot be written the
    engine stops with the reason rather than raising an untyped error into a site's call."""
    aggregator = _aggregator(tmp_path)
    metrics = tmp_path / "metrics.jsonl"
    metrics.unlink()
    metrics.mkdir()  # opening it for append now fails, as a read-only log directory does
    with pytest.raises(CannotServe, match="writing its state failed"):
        _train(aggregator, 1)
    assert aggregator.halted is not None
    with pytest.raises(CannotServe):
        aggregator.heartbeat("a", 1)
