"""Strategies that can take a round's updates as one securely aggregated sum.

With secure aggregation the aggregator never holds a single update, only
``sum_i w_i (x_i - global)`` and ``sum_i w_i`` over the round's contributors. FedAvg and
the rules built on its average (FedAvgM, FedAdam, FedYogi, FedAdagrad) need nothing more;
DP-FedAvg needs the sum of deltas each client clipped itself, and adds its noise to it.
Rules that look at each update (median, trimmed mean, Krum) cannot, and the plan refuses
them (``bastion.spec.secure_aggregation``).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from bastion.algorithms.base import Strategy
from bastion.errors import PlanError
from bastion.tensors import Weights


@runtime_checkable
class SecureSumStrategy(Protocol):
    """What a strategy offers secure aggregation."""

    def secure_clip_norm(self) -> float:
        """The L2 norm each client clips its own delta to this round; 0 for none."""
        ...

    def accumulate_secure_sum(
        self, delta_sum: Weights, total_weight: float, count: int, unclipped: float
    ) -> None:
        """Fold in ``sum_i w_i delta_i`` and ``sum_i w_i`` of ``count`` contributors
        (``unclipped``: how many deltas were within the clip norm, for adaptive clipping)."""
        ...


def secure_sum_strategy(strategy: Strategy) -> SecureSumStrategy:
    """``strategy`` as a ``SecureSumStrategy``, or a ``PlanError`` saying it cannot be one."""
    if not isinstance(strategy, SecureSumStrategy):
        raise PlanError(
            f"aggregation.strategy {strategy.name!r} cannot run with secure_aggregation: "
            "it needs individual updates, and the aggregator only ever sees their sum"
        )
    return strategy
