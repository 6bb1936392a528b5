"""FedAvg: the example-weighted average of local models.

McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
Decentralized Data": w_{t+1} = sum_k (n_k / n) w^k_{t+1}. Results are folded in as
they arrive into one float64 running sum, so memory is O(model).
"""

from __future__ import annotations

import numpy as np

from bastion.algorithms.base import Strategy, add_scaled, cast_like
from bastion.tensors import Weights


class FedAvg(Strategy):
    """Example-weighted federated averaging."""

    name = "fedavg"

    def __init__(self) -> None:
        self._global: Weights = {}
        self._sum: dict[str, np.ndarray] = {}
        self._total_weight = 0.0
        self._count = 0
        self._averaged = False

    def begin_round(self, global_weights: Weights, round_number: int) -> None:
        self._global = global_weights
        self._sum = {n: np.zeros(a.shape, dtype=np.float64) for n, a in global_weights.items()}
        self._total_weight = 0.0
        self._count = 0
        self._averaged = False

    def accumulate(self, collaborator: str, update: Weights, weight: float) -> None:
        if self._averaged:
            raise RuntimeError("accumulate() after finalize(); call begin_round() first")
        if not weight > 0:
            raise ValueError(f"weight of {collaborator!r} must be positive, got {weight}")
        for name, total in self._sum.items():
            add_scaled(total, update[name], weight)
        self._total_weight += weight
        self._count += 1

    def accumulate_secure_sum(
        self, delta_sum: Weights, total_weight: float, count: int, unclipped: float
    ) -> None:
        """Fold in a secure aggregation sum: ``sum_i w_i (x_i - global)`` and ``sum_i w_i``."""
        if self._averaged:
            raise RuntimeError("accumulate_secure_sum() after finalize(); call begin_round() first")
        if not total_weight > 0 or count < 1:
            raise ValueError(f"a secure sum needs a positive weight, got {total_weight}")
        for name, total in self._sum.items():
            add_scaled(total, self._global[name], total_weight)
            total += delta_sum[name]
        self._total_weight += total_weight
        self._count += count

    def secure_clip_norm(self) -> float:
        """FedAvg does not clip: 0."""
        return 0.0

    @property
    def accepted(self) -> int:
        return self._count

    def average(self) -> dict[str, np.ndarray]:
        """The float64 weighted average; subclasses (FedAvgM, FedOpt) start from it."""
        if self._count == 0:
            raise RuntimeError("finalize() called before any result was accumulated")
        if not self._averaged:  # divide in place: no second model-sized float64 buffer
            for total in self._sum.values():
                total /= self._total_weight
            self._averaged = True
        return self._sum

    def finalize(self) -> Weights:
        return cast_like(self.average(), self._global)
