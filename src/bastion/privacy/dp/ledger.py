"""The aggregator's privacy ledger: epsilon spent after each central-DP round, and the budget.

Every completed training round of ``dp_fedavg`` is one Poisson-subsampled Gaussian
mechanism with the plan's noise multiplier z and sampling rate q, whether or not
anyone's result arrived (counting it is the safe side). The ledger asks
``PrivacyAccountant`` (dp-accounting) for epsilon at the plan's delta, and says
before a round starts whether it would take the total past ``epsilon_budget``.
"""

from __future__ import annotations

import logging
from typing import Any

from bastion.plan import Plan
from bastion.privacy.dp.accountant import PrivacyAccountant
from bastion.spec.differential_privacy import (
    CENTRAL_STRATEGY,
    DifferentialPrivacySpec,
    DPFedAvgArgs,
)

log = logging.getLogger("bastion.privacy")


class PrivacyLedger:
    """Epsilon per round of a federation that aggregates with DP-FedAvg."""

    def __init__(
        self,
        noise_multiplier: float,
        sampling_rate: float,
        spec: DifferentialPrivacySpec,
        planned_rounds: int,
    ) -> None:
        self.accountant = PrivacyAccountant(noise_multiplier, sampling_rate, spec.accountant)
        self.delta = spec.delta
        self.budget = spec.epsilon_budget
        self.planned_rounds = planned_rounds
        self._epsilons: dict[int, float] = {}

    @classmethod
    def for_plan(cls, plan: Plan) -> PrivacyLedger | None:
        """The ledger of a plan with central DP, or None when its aggregation adds no noise."""
        if plan.aggregation.strategy != CENTRAL_STRATEGY:
            return None
        args = DPFedAvgArgs.model_validate(dict(plan.aggregation.args))
        return cls(
            args.noise_multiplier,
            plan.participation.fraction,
            plan.differential_privacy or DifferentialPrivacySpec(),
            plan.rounds,
        )

    def epsilon(self, rounds: int) -> float:
        """Epsilon at the plan's delta after ``rounds`` training rounds (cached)."""
        if rounds not in self._epsilons:
            self._epsilons[rounds] = self.accountant.epsilon(rounds, self.delta)
        return self._epsilons[rounds]

    def allows(self, round_number: int) -> bool:
        """Whether training round ``round_number`` keeps the total within the budget."""
        return self.budget is None or self.epsilon(round_number) <= self.budget

    def stop_reason(self, round_number: int) -> str | None:
        """Why round ``round_number`` may not run, or None when it may."""
        if round_number > self.planned_rounds or self.allows(round_number):
            return None
        return (
            f"privacy budget: round {round_number} would bring epsilon to "
            f"{self.epsilon(round_number):.4g} (delta={self.delta:g}), over "
            f"differential_privacy.epsilon_budget={self.budget:g}; "
            f"stopped after {round_number - 1} rounds at epsilon "
            f"{self.epsilon(round_number - 1):.4g}"
        )

    def report(self, rounds: int) -> dict[str, Any]:
        """What the metrics log and ``bastion status`` show after ``rounds`` training rounds."""
        return {
            "mechanism": CENTRAL_STRATEGY,
            "accountant": self.accountant.method,
            "noise_multiplier": self.accountant.noise_multiplier,
            "sampling_rate": self.accountant.sampling_rate,
            "rounds": rounds,
            "epsilon": self.epsilon(rounds),
            "delta": self.delta,
            "epsilon_budget": self.budget,
            "stopped": self.stop_reason(rounds + 1),
        }
