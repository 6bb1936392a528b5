"""Asynchronous (FedBuff) versions through the round engine: carried-over work, staleness,
refusals and resume, driven directly with a controllable clock."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bastion.aggregator.engine import Aggregator
from bastion.algorithms.fedavg import FedAvg
from bastion.errors import PlanError
from bastion.framing import assemble_frames
from bastion.metrics.log import MetricsLog, read_metrics
from bastion.plan import parse_plan
from bastion.protocol import NotAssigned
from bastion.storage.checkpoints import CheckpointStore
from bastion.tensors import Weights

ROSTER = ["a", "b", "c"]


def _raw(**changes: object) -> dict:
    raw: dict = {
        "name": "fedbuff-unit",
        "rounds": 4,
        "collaborators": ROSTER,
        "tasks": [{"name": "train", "kind": "train"}],
        "task_runner": {"path": "task:build_runner"},
        "data": {"loader": "digits"},
        "timeouts": {"round_seconds": 100, "min_results": 1},
        "asynchronous": {
            "buffer_size": 2,
            "max_staleness": 1,
            "staleness": {"function": "polynomial", "a": 1.0},
        },
    }
    raw.update(changes)
    return raw


def _aggregator(tmp_path: Path, **changes: object) -> Aggregator:
    plan = parse_plan(_raw(**changes))
    store = CheckpointStore(tmp_path / "save", plan.canonical_hash())
    if not (tmp_path / "save" / "initial.safetensors").exists():
        store.save_initial({"w": np.zeros(2, np.float64)})
    return Aggregator(plan, FedAvg(), store, MetricsLog(tmp_path / "metrics.jsonl"))


def _send(aggregator: Aggregator, name: str, round_number: int, value: float):
    update: Weights = {"w": np.full(2, value)}
    return aggregator.submit_result(name, round_number, "train", 5, {}, update)


def _model(aggregator: Aggregator, name: str, round_number: int) -> np.ndarray:
    return assemble_frames(aggregator.model_frames(name, round_number), 1 << 20)["w"]


def test_carried_result_is_folded_into_the_next_version(tmp_path: Path) -> None:
    agg = _aggregator(tmp_path)
    for name in ROSTER:
        assert agg.get_tasks(name).round == 1
    _send(agg, "a", 1, 1.0)
    np.testing.assert_allclose(_model(agg, "c", 1), 0.0)  # before version 1 exists
    _send(agg, "b", 1, 3.0)
    assert agg.current_round == 2
    # c downloads late: it is served the model of round 1 (version 0) it was assigned.
    np.testing.assert_allclose(_model(agg, "c", 1), 0.0)
    assignment = agg.get_tasks("a")
    assert assignment.round == 2 and assignment.action == "run"
    with pytest.raises(NotAssigned):
        agg.check_result_allowed("c", 2, "train")  # c was not assigned round 2: it is busy
    # c's update from version 0 lands in round 2 with τ = 1: s(1) = 1/2 (a = 1).
    assert _send(agg, "c", 1, 4.0).accepted
    assert _send(agg, "a", 2, 2.0).accepted
    # w2 = w1 + mean(s(1)(4 - 0), s(0)(2 - 2)) = 2 + (2 + 0) / 2 = 3.
    assert agg.current_round == 3
    np.testing.assert_allclose(agg.model["w"], 3.0)
    records = read_metrics(tmp_path / "metrics.jsonl")
    versions = [r for r in records if r["event"] == "buffered_version"]
    assert [v["staleness"] for v in versions] == [[0, 0], [1, 0]]
    assert versions[1]["staleness_weights"] == [0.5, 1.0]
    rounds = [r for r in records if r["event"] == "round"]
    assert rounds[0]["carried_over"] == ["c"]


def test_a_result_past_max_staleness_is_refused_and_the_site_goes_on(tmp_path: Path) -> None:
    agg = _aggregator(tmp_path)
    for name in ROSTER:
        agg.get_tasks(name)
    _send(agg, "a", 1, 1.0)
    _send(agg, "b", 1, 1.0)  # version 1
    for name in ("a", "b"):
        assert agg.get_tasks(name).round == 2
    _send(agg, "a", 2, 1.0)
    _send(agg, "b", 2, 1.0)  # version 2: c's work from round 1 is now 2 versions old
    assert agg.current_round == 3
    ack = _send(agg, "c", 1, 9.0)
    assert not ack.accepted
    assert "asynchronous.max_staleness is 1" in ack.reason
    np.testing.assert_allclose(agg.model["w"], 1.0)
    # c is free again: it trains on the latest version at once.
    assignment = agg.get_tasks("c")
    assert assignment.action == "run" and assignment.round == 3
    np.testing.assert_allclose(_model(agg, "c", 3), 1.0)


def test_a_free_site_trains_again_on_the_open_version(tmp_path: Path) -> None:
    agg = _aggregator(tmp_path)
    for name in ROSTER:
        agg.get_tasks(name)
    _send(agg, "a", 1, 2.0)
    # a is done with round 1 before the buffer is full: it gets round 1's tasks again.
    assignment = agg.get_tasks("a")
    assert assignment.action == "run" and assignment.round == 1
    assert _send(agg, "a", 1, 4.0).accepted
    assert agg.current_round == 2  # K = 2 updates, both from a
    np.testing.assert_allclose(agg.model["w"], 3.0)


def test_resume_continues_at_the_saved_version_and_refuses_old_work(tmp_path: Path) -> None:
    agg = _aggregator(tmp_path)
    for name in ROSTER:
        agg.get_tasks(name)
    _send(agg, "a", 1, 1.0)
    _send(agg, "b", 1, 3.0)  # version 1 checkpointed; c still trains on version 0
    resumed = _aggregator(tmp_path)
    assert resumed.state.round_completed == 1 and resumed.current_round == 2
    np.testing.assert_allclose(resumed.model["w"], 2.0)
    ack = _send(resumed, "c", 1, 4.0)  # work the restarted aggregator does not know
    assert not ack.accepted and "no longer collected" in ack.reason
    assert resumed.get_tasks("c").round == 2


def test_max_concurrency_caps_the_sites_training_at_once(tmp_path: Path) -> None:
    agg = _aggregator(
        tmp_path, asynchronous={"buffer_size": 2, "max_concurrency": 2, "max_staleness": 5}
    )
    actions = {name: agg.get_tasks(name).action for name in ROSTER}
    assert sorted(actions.values()) == ["run", "run", "wait"]  # round 1: 1 % 3 rotates
    idle = next(name for name, action in actions.items() if action == "wait")
    first = next(name for name, action in actions.items() if action == "run")
    assert _send(agg, first, 1, 1.0).accepted
    # A site is done: the slot goes to whoever asks first; then both slots are taken again.
    assert agg.get_tasks(idle).action == "run"
    assert agg.get_tasks(first).action == "wait"


def test_work_still_out_when_the_federation_ends_is_answered_not_refused(
    tmp_path: Path,
) -> None:
    agg = _aggregator(tmp_path, rounds=1)
    for name in ROSTER:
        agg.get_tasks(name)
    _send(agg, "a", 1, 1.0)
    _send(agg, "b", 1, 1.0)  # the last version; no validate task, so the federation ends
    assert agg.finished.is_set()
    ack = _send(agg, "c", 1, 5.0)
    assert not ack.accepted and "after the federation finished" in ack.reason
    assert agg.get_tasks("c").action == "done"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"secure_aggregation": {"enabled": True}}, "needs|synchronized cohort"),
        ({"aggregation": {"strategy": "median"}}, "cannot be the server step"),
        ({"compression": {"stages": [{"stage": "float16"}]}}, "remove the compression section"),
    ],
)
def test_plans_that_cannot_run_asynchronously_are_refused(changes: dict, message: str) -> None:
    with pytest.raises(PlanError, match=message):
        parse_plan(_raw(**changes))


def test_central_dp_is_refused_with_the_reason() -> None:
    raw = _raw(
        aggregation={
            "strategy": "dp_fedavg",
            "args": {"noise_multiplier": 1.0, "clip_norm": 1.0},
        },
        participation={"fraction": 1.0},
    )
    with pytest.raises(PlanError, match="central DP's accountant"):
        parse_plan(raw)


def test_buffer_larger_than_the_roster_is_refused() -> None:
    with pytest.raises(PlanError, match=r"asynchronous.buffer_size \(4\) exceeds the roster"):
        parse_plan(_raw(asynchronous={"buffer_size": 4}))
