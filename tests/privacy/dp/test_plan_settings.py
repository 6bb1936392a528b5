"""DP and compression settings in plan.yaml: what is derived, and combinations refused at load."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from support.workspaces import deep_update

from bastion.aggregator.assignment import sample_collaborators
from bastion.algorithms.dp_fedavg import DPFedAvg
from bastion.algorithms.registry import create_plan_strategy
from bastion.compression.pipeline import build_pipeline
from bastion.errors import PlanError
from bastion.plan import Plan, parse_plan
from bastion.privacy.dp.ledger import PrivacyLedger


def _plan(changes: dict[str, Any] | None = None, collaborators: int = 20) -> Plan:
    raw: dict[str, Any] = {
        "name": "dp",
        "rounds": 5,
        "collaborators": [f"site-{i}" for i in range(collaborators)],
        "tasks": [{"name": "train", "kind": "train"}],
        "task_runner": {"path": "task:build_runner"},
        "data": {"loader": "digits"},
        "aggregation": {
            "strategy": "dp_fedavg",
            "args": {"noise_multiplier": 1.1, "clip_norm": 0.5},
        },
        "participation": {"fraction": 0.25, "sampling": "poisson"},
    }
    return parse_plan(deep_update(raw, changes or {}))


def test_expected_clients_is_the_plans_sampling_rate_times_its_roster() -> None:
    plan = _plan()
    strategy = create_plan_strategy(plan)
    assert isinstance(strategy, DPFedAvg)
    assert strategy.expected_clients == 5.0  # q = 0.25 of 20
    assert strategy.noise_std == pytest.approx(1.1 * 0.5 / 5.0)
    ledger = PrivacyLedger.for_plan(plan)
    assert ledger is not None
    assert ledger.accountant.sampling_rate == 0.25 and ledger.accountant.noise_multiplier == 1.1


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"participation": {"sampling": "fixed"}},
            "participation.sampling: dp_fedavg with fraction 0.25 < 1 needs 'poisson'",
        ),
        (
            {"aggregation": {"args": {"expected_clients": 8}}},
            "aggregation.args.expected_clients: 8 differs from participation.fraction x roster = 5",
        ),
        (
            {"participation": {"min_collaborators": 3}},
            "Poisson sampling draws each collaborator independently",
        ),
        (
            {
                "aggregation": {"strategy": "fedavg", "args": {}},
                "differential_privacy": {"epsilon_budget": 3},
            },
            "the budget is spent by central DP",
        ),
        ({"differential_privacy": {"delta": 1.5}}, "differential_privacy.delta"),
        ({"differential_privacy": {"accountant": "moments"}}, "differential_privacy.accountant"),
        ({"differential_privacy": {"local": {"noise_multiplier": 0}}}, "noise_multiplier"),
    ],
)
def test_inconsistent_privacy_settings_are_one_plan_error(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(PlanError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _plan(changes)


def test_a_matching_expected_count_and_full_participation_are_accepted() -> None:
    assert _plan({"aggregation": {"args": {"expected_clients": 5.0}}})
    everyone = _plan({"participation": {"fraction": 1.0, "sampling": "fixed"}})
    strategy = create_plan_strategy(everyone)
    assert isinstance(strategy, DPFedAvg) and strategy.expected_clients == 20.0


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ([{"stage": "quantize8"}, {"stage": "topk", "fraction": 0.1}], "codes values before"),
        ([{"stage": "topk", "fraction": 0.1}, {"stage": "randomk", "fraction": 0.5}], "twice"),
        ([{"stage": "float16"}, {"stage": "quantize8"}], "codes values twice"),
        ([{"stage": "topk"}], "needs 'fraction'"),
        ([{"stage": "float16", "fraction": 0.5}], "takes no 'fraction'"),
        ([{"stage": "zip"}], "compression.stages"),
    ],
)
def test_compression_stages_that_cannot_compose_are_one_plan_error(
    stages: list[dict[str, Any]], message: str
) -> None:
    with pytest.raises(PlanError, match=message):
        _plan({"compression": {"stages": stages}})


def test_compression_composes_with_central_dp() -> None:
    plan = _plan(
        {"compression": {"stages": [{"stage": "topk", "fraction": 0.1}, {"stage": "quantize8"}]}}
    )
    assert plan.compression is not None
    assert build_pipeline(plan.compression).names == ["topk", "quantize8"]


def test_topk_is_refused_with_secure_aggregation() -> None:
    from bastion.spec.compression import CompressionSpec, check_plan_composition

    topk = CompressionSpec.model_validate({"stages": [{"stage": "topk", "fraction": 0.1}]})
    problem = check_plan_composition(topk, secure_aggregation=True)
    assert problem is not None and "RandomK" in problem
    shared = CompressionSpec.model_validate(
        {"stages": [{"stage": "randomk", "fraction": 0.1}, {"stage": "float16"}]}
    )
    assert check_plan_composition(shared, secure_aggregation=True) is None


def test_poisson_sampling_draws_each_collaborator_with_probability_q() -> None:
    plan = _plan()
    roster = plan.collaborator_names()
    counts = np.array(
        [len(sample_collaborators(roster, r, plan.participation)) for r in range(2000)]
    )
    # Binomial(20, 0.25): mean 5, std sqrt(3.75); the mean of 2000 rounds is within 5 sigma.
    assert abs(counts.mean() - 5.0) < 5 * np.sqrt(3.75 / 2000)
    assert counts.min() < 5 < counts.max()  # the count varies, unlike fixed sampling
    # Not a function of the public seed: the same round number draws different samples.
    draws = {tuple(sample_collaborators(roster, 1, plan.participation)) for _ in range(50)}
    assert len(draws) > 1


LOCAL = {"noise_multiplier": 1.0, "max_grad_norm": 1.0}


def test_a_local_dp_budget_is_per_site_and_works_without_central_dp() -> None:
    plan = _plan(
        {
            "aggregation": {"strategy": "fedavg", "args": {}},
            "differential_privacy": {"local": {**LOCAL, "epsilon_budget": 4}},
        }
    )
    assert plan.differential_privacy is not None and plan.differential_privacy.local is not None
    assert plan.differential_privacy.local.epsilon_budget == 4.0
    assert plan.differential_privacy.epsilon_budget is None


@pytest.mark.parametrize(
    ("budget", "problem"),
    [
        (0, "Input should be greater than 0 (got 0)"),
        (-2.5, "Input should be greater than 0 (got -2.5)"),
        (float("inf"), "Input should be a finite number (got inf)"),
        (float("nan"), "Input should be a finite number (got nan)"),
        (True, "Input should be a valid number (got True)"),
        ("3", "Input should be a valid number (got '3')"),
    ],
)
def test_a_bad_local_dp_budget_is_one_plan_error_naming_the_key(budget: Any, problem: str) -> None:
    with pytest.raises(PlanError) as caught:
        _plan({"differential_privacy": {"local": {**LOCAL, "epsilon_budget": budget}}})
    assert str(caught.value) == (
        f"plan.yaml: key 'differential_privacy.local.epsilon_budget': {problem}"
    )


def test_the_central_budget_without_dp_fedavg_points_to_the_local_one() -> None:
    with pytest.raises(PlanError) as caught:
        _plan(
            {
                "aggregation": {"strategy": "fedavg", "args": {}},
                "differential_privacy": {"epsilon_budget": 3, "local": LOCAL},
            }
        )
    assert "\n" not in str(caught.value)
    assert "differential_privacy.local.epsilon_budget" in str(caught.value)
