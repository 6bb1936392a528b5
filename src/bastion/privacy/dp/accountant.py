"""Privacy accounting of DP-FedAvg rounds with Google's ``dp-accounting`` library.

Each round is the Poisson-subsampled Gaussian mechanism (sampling rate q, noise
multiplier z) at the client level; ``rounds`` of them compose. RDP accounting (Mironov
2017) is fast and slightly loose; PLD accounting (privacy loss distributions, Koskela et
al. 2020 / Doroshenko et al. 2022) is tighter and slower. Both come from the library,
not from formulas copied here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from bastion.errors import BastionError, MissingDependency
from bastion.privacy.errors import PrivacyBudgetExceeded

Method = Literal["rdp", "pld"]


def _dp_accounting() -> Any:
    try:
        import dp_accounting
        from dp_accounting import pld, rdp  # noqa: F401  (loads the submodules)
    except ImportError:
        raise MissingDependency(
            "dp-accounting", "privacy", "differential privacy accounting"
        ) from None
    return dp_accounting


@contextmanager
def _quiet_library() -> Iterator[None]:
    """Silence dp-accounting's per-order convergence warnings (one per order and call).

    An RDP order whose term does not converge is left out of the minimum over orders,
    which can only raise the reported epsilon, never lower it.
    """
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        yield
    finally:
        absl.setLevel(level)


@dataclass(frozen=True)
class PrivacyBudget:
    """The (epsilon, delta) a federation may spend in total."""

    epsilon: float
    delta: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise BastionError(f"privacy budget epsilon must be positive, got {self.epsilon}")
        if not 0 < self.delta < 1:
            raise BastionError(f"privacy budget delta must be in (0, 1), got {self.delta}")


class PrivacyAccountant:
    """Epsilon spent after a number of rounds of the sampled Gaussian mechanism."""

    def __init__(
        self, noise_multiplier: float, sampling_rate: float, method: Method = "rdp"
    ) -> None:
        if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
            raise BastionError(f"noise_multiplier must be positive, got {noise_multiplier}")
        if not 0 < sampling_rate <= 1:
            raise BastionError(
                "sampling_rate (expected clients / population) must be in (0, 1], "
                f"got {sampling_rate}"
            )
        if method not in ("rdp", "pld"):
            raise BastionError(f"accounting method must be 'rdp' or 'pld', got {method!r}")
        self.noise_multiplier = float(noise_multiplier)
        self.sampling_rate = float(sampling_rate)
        self.method: Method = method
        self._lib = _dp_accounting()

    def event(self, rounds: int) -> Any:
        """The library's description of ``rounds`` rounds (a ``dp_accounting.DpEvent``)."""
        lib = self._lib
        step = lib.GaussianDpEvent(self.noise_multiplier)
        if self.sampling_rate < 1:
            step = lib.PoissonSampledDpEvent(self.sampling_rate, step)
        return lib.SelfComposedDpEvent(step, rounds)

    def epsilon(self, rounds: int, delta: float) -> float:
        """The smallest epsilon the method certifies for ``rounds`` rounds at ``delta``."""
        if rounds < 0:
            raise BastionError(f"rounds must be non-negative, got {rounds}")
        if not 0 < delta < 1:
            raise BastionError(f"delta must be in (0, 1), got {delta}")
        if rounds == 0:
            return 0.0
        accountant = (
            self._lib.rdp.RdpAccountant() if self.method == "rdp" else self._lib.pld.PLDAccountant()
        )
        with _quiet_library():
            accountant.compose(self.event(rounds))
            return float(accountant.get_epsilon(delta))

    def allows_another_round(self, rounds_done: int, budget: PrivacyBudget) -> bool:
        """Whether round ``rounds_done + 1`` keeps the total within ``budget``."""
        return self.epsilon(rounds_done + 1, budget.delta) <= budget.epsilon

    def check_next_round(self, rounds_done: int, budget: PrivacyBudget) -> None:
        """Raise ``PrivacyBudgetExceeded`` if one more round would overspend ``budget``."""
        spent = self.epsilon(rounds_done + 1, budget.delta)
        if spent > budget.epsilon:
            raise PrivacyBudgetExceeded(
                f"round {rounds_done + 1} would bring epsilon to {spent:.4g} at delta="
                f"{budget.delta:g}, over the budget of {budget.epsilon:g}: stop here, or plan "
                "more noise (noise_multiplier) or fewer clients per round (sampling rate)"
            )

    def max_rounds(self, budget: PrivacyBudget, limit: int = 100_000) -> int:
        """The most rounds that fit in ``budget`` (binary search, at most ``limit``)."""
        low, high = 0, limit
        while low < high:
            middle = (low + high + 1) // 2
            if self.epsilon(middle, budget.delta) <= budget.epsilon:
                low = middle
            else:
                high = middle - 1
        return low
