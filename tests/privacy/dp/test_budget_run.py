"""A federation with central DP reports epsilon per round and stops before it overspends.

Real in-process federations (the aggregator and collaborator loop of the processes,
joined in memory): the metrics log, checkpoints and ``bastion status`` are checked
as a user reads them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dp_accounting
import pytest
from dp_accounting import rdp
from support.simulation import plain_workspace
from support.status import bastion_status

from bastion.aggregator.service import build_aggregator
from bastion.metrics.log import read_metrics
from bastion.plan import load_plan
from bastion.privacy.dp import PrivacyAccountant
from bastion.sim.inprocess import simulate_in_process
from bastion.storage.checkpoints import load_checkpoint

# Sixteen sites: a Poisson sample of nobody (which skips a round) has odds 1 in 65,536 a round.
Z, Q, DELTA, COLLABORATORS, PLANNED = 1.0, 0.5, 1e-3, 16, 8


def _direct_epsilon(rounds: int) -> float:
    """Epsilon of ``rounds`` Poisson-sampled Gaussian rounds, straight from dp-accounting."""
    accountant = rdp.RdpAccountant()
    event = dp_accounting.PoissonSampledDpEvent(Q, dp_accounting.GaussianDpEvent(Z))
    accountant.compose(dp_accounting.SelfComposedDpEvent(event, rounds))
    return float(accountant.get_epsilon(DELTA))


def _dp_workspace(root: Path, budget: float | None) -> Path:
    privacy: dict[str, Any] = {"accountant": "rdp", "delta": DELTA}
    if budget is not None:
        privacy["epsilon_budget"] = budget
    return plain_workspace(
        root,
        collaborators=COLLABORATORS,
        rounds=PLANNED,
        plan_changes={
            "aggregation": {
                "strategy": "dp_fedavg",
                "args": {"noise_multiplier": Z, "clip_norm": 1.0},
            },
            "participation": {"fraction": Q, "sampling": "poisson"},
            "differential_privacy": privacy,
        },
    )


def test_training_stops_before_the_round_that_would_exceed_the_budget(tmp_path: Path) -> None:
    # A budget between epsilon(3) and epsilon(4): three rounds fit, the fourth does not.
    budget = (_direct_epsilon(3) + _direct_epsilon(4)) / 2
    workspace = _dp_workspace(tmp_path, budget)
    simulate_in_process(workspace)

    records = read_metrics(workspace / "logs" / "metrics.jsonl")
    rounds = [r for r in records if r["event"] == "round"]
    training = [r for r in rounds if not r["final_evaluation"]]
    assert [r["round"] for r in training] == [1, 2, 3]
    for record in training:  # epsilon per round, as dp-accounting computes it directly
        privacy = record["privacy"]
        assert privacy["epsilon"] == pytest.approx(_direct_epsilon(record["round"]), rel=1e-12)
        assert privacy["delta"] == DELTA and privacy["rounds"] == record["round"]
        assert privacy["epsilon"] <= budget
    stop = next(r for r in records if r["event"] == "privacy_budget_reached")
    assert stop["round"] == 4 and "round 4 would bring epsilon" in stop["reason"]

    # A clean finish: the final evaluation of the round-3 model, then "finished" with the reason.
    final = rounds[-1]
    assert final["final_evaluation"] and final["model_round"] == 3
    assert final["tasks"]["validate_global"]["examples"] > 0
    finished = records[-1]
    assert finished["event"] == "finished" and finished["rounds"] == 3
    assert "over differential_privacy.epsilon_budget" in finished["stopped"]

    _, metadata = load_checkpoint(workspace / "save" / "last.safetensors")
    state = json.loads(metadata["bastion.state"])
    assert state["finished"] is True and state["round_completed"] == 3
    assert (workspace / "save" / "best.safetensors").exists()
    summary = json.loads((workspace / "save" / "state.json").read_text())
    assert summary["privacy"]["epsilon"] == pytest.approx(_direct_epsilon(3), rel=1e-12)
    assert "round 4 would bring epsilon" in summary["privacy"]["stopped"]

    shown = bastion_status(workspace, columns=400)
    assert f"epsilon {_direct_epsilon(3):.4g} at delta=0.001 after 3 rounds" in shown
    assert "stopped early" in shown and "round 4 would bring epsilon" in shown

    # Starting the aggregator again does not train past the budget.
    again = build_aggregator(load_plan(workspace), workspace)
    assert again.finished.is_set() and again.state.round_completed == 3


def test_a_budget_too_small_for_one_round_trains_nothing(tmp_path: Path) -> None:
    workspace = _dp_workspace(tmp_path, budget=_direct_epsilon(1) / 2)
    simulate_in_process(workspace)
    records = read_metrics(workspace / "logs" / "metrics.jsonl")
    rounds = [r for r in records if r["event"] == "round"]
    assert len(rounds) == 1 and rounds[0]["final_evaluation"] and rounds[0]["model_round"] == 0
    assert rounds[0]["privacy"]["epsilon"] == 0.0
    assert "round 1 would bring epsilon" in records[-1]["stopped"]


def test_without_a_budget_every_planned_round_runs_and_is_accounted(tmp_path: Path) -> None:
    workspace = _dp_workspace(tmp_path, budget=None)
    simulate_in_process(workspace)
    records = read_metrics(workspace / "logs" / "metrics.jsonl")
    training = [r for r in records if r["event"] == "round" and not r["final_evaluation"]]
    assert len(training) == PLANNED
    epsilons = [r["privacy"]["epsilon"] for r in training]
    assert epsilons == sorted(epsilons)
    assert epsilons[-1] == pytest.approx(
        PrivacyAccountant(Z, Q, "rdp").epsilon(PLANNED, DELTA), rel=1e-12
    )
    assert "stopped" not in records[-1]
