"""The accountant reports what dp-accounting computes, and its budget check stops in time."""

from __future__ import annotations

import math

import dp_accounting
import pytest
from dp_accounting import pld, rdp
from scipy.stats import norm

from bastion.errors import BastionError
from bastion.privacy.dp import PrivacyAccountant, PrivacyBudget
from bastion.privacy.errors import PrivacyBudgetExceeded


@pytest.mark.parametrize(("z", "q", "rounds"), [(1.1, 0.01, 300), (0.8, 0.1, 50), (2.0, 1.0, 10)])
def test_rdp_epsilon_matches_the_library_directly(z: float, q: float, rounds: int) -> None:
    direct = rdp.RdpAccountant()
    step: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(z)
    if q < 1:
        step = dp_accounting.PoissonSampledDpEvent(q, step)
    direct.compose(dp_accounting.SelfComposedDpEvent(step, rounds))
    ours = PrivacyAccountant(z, q, "rdp").epsilon(rounds, 1e-5)
    assert ours == pytest.approx(direct.get_epsilon(1e-5), rel=1e-12)


def test_pld_epsilon_matches_the_library_directly() -> None:
    direct = pld.PLDAccountant()
    event = dp_accounting.PoissonSampledDpEvent(0.05, dp_accounting.GaussianDpEvent(1.2))
    direct.compose(dp_accounting.SelfComposedDpEvent(event, 40))
    ours = PrivacyAccountant(1.2, 0.05, "pld").epsilon(40, 1e-6)
    assert ours == pytest.approx(direct.get_epsilon(1e-6), rel=1e-9)


def test_one_gaussian_round_agrees_with_the_analytic_gaussian_mechanism() -> None:
    """Balle & Wang 2018: delta(eps) = Phi(1/(2s) - eps s) - e^eps Phi(-1/(2s) - eps s)."""
    sigma, delta = 1.5, 1e-5
    epsilon = PrivacyAccountant(sigma, 1.0, "pld").epsilon(1, delta)

    def exact_delta(eps: float) -> float:
        return norm.cdf(0.5 / sigma - eps * sigma) - math.exp(eps) * norm.cdf(
            -0.5 / sigma - eps * sigma
        )

    assert exact_delta(epsilon) <= delta * 1.001
    assert exact_delta(epsilon * 0.98) > delta  # and it is not loose by more than 2%


def test_budget_check_stops_at_the_budget() -> None:
    accountant = PrivacyAccountant(1.0, 0.02, "rdp")
    budget = PrivacyBudget(epsilon=2.0, delta=1e-5)
    last = accountant.max_rounds(budget, limit=5000)
    assert 0 < last < 5000
    assert accountant.epsilon(last, budget.delta) <= budget.epsilon
    assert accountant.epsilon(last + 1, budget.delta) > budget.epsilon
    assert accountant.allows_another_round(last - 1, budget)
    assert not accountant.allows_another_round(last, budget)
    accountant.check_next_round(last - 1, budget)
    with pytest.raises(PrivacyBudgetExceeded, match=f"round {last + 1} would bring epsilon"):
        accountant.check_next_round(last, budget)


def test_epsilon_grows_with_rounds_and_starts_at_zero() -> None:
    accountant = PrivacyAccountant(1.0, 0.1)
    values = [accountant.epsilon(r, 1e-5) for r in (0, 1, 10, 100)]
    assert values[0] == 0.0
    assert values == sorted(values) and values[1] > 0


@pytest.mark.parametrize("args", [(0.0, 0.1), (1.0, 0.0), (1.0, 1.5), (math.inf, 0.1)])
def test_meaningless_parameters_are_refused(args: tuple[float, float]) -> None:
    with pytest.raises(BastionError):
        PrivacyAccountant(*args)


def test_meaningless_budgets_are_refused() -> None:
    with pytest.raises(BastionError):
        PrivacyBudget(epsilon=1.0, delta=0.0)
    with pytest.raises(BastionError):
        PrivacyBudget(epsilon=-1.0, delta=1e-5)
