"""FedBuff (Nguyen et al. 2022, Algorithm 1) and its staleness weights, written out here."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bastion.aggregator.buffered_protocol import BufferedRound
from bastion.aggregator.records import RoundProgress
from bastion.aggregator.round_protocol import RoundContext
from bastion.algorithms.fedadam import FedAdam, FedAdamArgs
from bastion.algorithms.fedavg import FedAvg
from bastion.algorithms.staleness import constant, hinge, polynomial, staleness_function
from bastion.plan import parse_plan
from bastion.spec.asynchronous import AsynchronousSpec, StalenessSpec
from bastion.spec.tasks import TaskSpec

TRAIN = TaskSpec(name="train", kind="train")


def test_staleness_functions_are_the_papers() -> None:
    for tau in range(0, 12):
        assert constant(tau) == 1.0
        assert polynomial(0.5)(tau) == pytest.approx(1 / math.sqrt(1 + tau))
        assert polynomial(2.0)(tau) == pytest.approx((1 + tau) ** -2.0)
        expected_hinge = 1.0 if tau <= 4 else 1 / (10 * (tau - 4) + 1)
        assert hinge(10.0, 4)(tau) == pytest.approx(expected_hinge)
    spec = StalenessSpec(function="hinge", a=2.0, b=1)
    assert staleness_function(spec)(3) == pytest.approx(1 / (2 * 2 + 1))
    with pytest.raises(ValueError, match="staleness must be >= 0"):
        polynomial(0.5)(-1)


def _plan(**asynchronous: object):
    return parse_plan(
        {
            "name": "fedbuff",
            "rounds": 3,
            "collaborators": ["a", "b", "c", "d"],
            "tasks": [{"name": "train", "kind": "train"}],
            "task_runner": {"path": "task:build_runner"},
            "data": {"loader": "digits"},
            "asynchronous": {"buffer_size": 3, **asynchronous},
        }
    )


def _version(plan, strategy, current, number):
    progress = RoundProgress(number, False, {}, {}, 0.0)
    strategy.begin_round(current, number)
    events: list = []
    protocol = BufferedRound(
        RoundContext(plan, progress, current, strategy, lambda: 0.0, events.append),
        plan.asynchronous,
    )
    return protocol, events


def _models(rng: np.random.Generator) -> dict[int, dict[str, np.ndarray]]:
    """Versions 2, 4 and 5 of a model (the rounds an update may start from)."""
    return {v: {"w": rng.normal(size=(3, 2)), "b": rng.normal(size=2)} for v in (2, 4, 5)}


def _buffer(protocol, versions, rng, current_round):
    """One fresh update and two stale ones (started in rounds 4 and 2); returns (τ, w^τ, y)."""
    fed = []
    for name, origin in (("a", current_round), ("b", 4), ("c", 2)):
        start = versions[origin]
        local = {k: v + rng.normal(scale=0.1, size=v.shape) for k, v in start.items()}
        if origin == current_round:
            protocol.on_result(name, TRAIN, 10, local)
        else:
            protocol.on_carried_result(name, TRAIN, 10, local, origin, start)
        fed.append((current_round - origin, start, local))
    return fed


@pytest.mark.parametrize("function", ["constant", "polynomial", "hinge"])
def test_fedavg_server_step_is_w_minus_eta_g_mean_of_weighted_deltas(function: str) -> None:
    rng = np.random.default_rng(1)
    plan = _plan(server_learning_rate=0.7, staleness={"function": function, "a": 0.5, "b": 1})
    versions = _models(rng)
    current = versions[5]
    protocol, events = _version(plan, FedAvg(), current, 5)
    fed = _buffer(protocol, versions, rng, 5)
    assert protocol.is_settled()
    s = staleness_function(plan.asynchronous.staleness)
    # Algorithm 1: Δ_k = w^{τ_k} - y_k; Δ̄ = (1/K) Σ s(t - τ_k) Δ_k; w^{t+1} = w^t - η_g Δ̄.
    for name in current:
        delta_bar = sum(s(tau) * (start[name] - local[name]) for tau, start, local in fed) / 3
        expected = current[name] - 0.7 * delta_bar
        np.testing.assert_allclose(protocol._strategy.finalize()[name], expected, rtol=1e-12)
    protocol.close({})
    (report,) = events
    assert report.fields["staleness"] == [0, 1, 3]
    assert report.fields["staleness_weights"] == [round(s(t), 6) for t in (0, 1, 3)]


def test_fedadam_server_step_takes_the_buffered_pseudo_gradient() -> None:
    rng = np.random.default_rng(2)
    plan = _plan()  # polynomial, a = 0.5: FedBuff's s(τ) = 1/√(1 + τ); η_g = 1
    args = FedAdamArgs(eta=0.05, beta_1=0.9, beta_2=0.99, tau=1e-3)
    versions = _models(rng)
    current = versions[5]
    strategy = FedAdam(args)
    protocol, _ = _version(plan, strategy, current, 5)
    fed = _buffer(protocol, versions, rng, 5)
    new = strategy.finalize()
    for name in current:
        # Reddi et al. 2021 Algorithm 2 on the buffered pseudo-gradient -Δ̄ (first step).
        delta_bar = (
            sum((1 + tau) ** -0.5 * (start[name] - local[name]) for tau, start, local in fed) / 3
        )
        m = (1 - args.beta_1) * -delta_bar
        v = args.beta_2 * args.tau**2 + (1 - args.beta_2) * delta_bar**2
        expected = current[name] + args.eta * m / (np.sqrt(v) + args.tau)
        np.testing.assert_allclose(new[name], expected, rtol=1e-9)


def test_a_result_too_stale_is_refused_with_the_reason() -> None:
    plan = _plan(max_staleness=2)
    protocol, _ = _version(plan, FedAvg(), {"w": np.zeros(2)}, 9)
    assert protocol.carried_refusal("c", TRAIN, 7) is None
    reason = protocol.carried_refusal("c", TRAIN, 6)
    assert reason is not None
    assert "round 6, 3 versions before the current round 9" in reason
    assert "asynchronous.max_staleness is 2" in reason


def test_asynchronous_spec_defaults() -> None:
    spec = AsynchronousSpec(buffer_size=2)
    assert spec.staleness.function == "polynomial" and spec.staleness.a == 0.5
    assert spec.server_learning_rate == 1.0 and spec.max_staleness == 10
