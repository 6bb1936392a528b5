"""FedAvgM: federated averaging with server momentum.

Hsu et al. 2019, "Measuring the Effects of Non-Identical Data Distribution for
Federated Visual Classification", §3: with Δ = w − avg (the global model minus the
example-weighted average of local models), v ← βv + Δ and w ← w − ηv. With η = 1 and
β = 0 this is FedAvg. The effective step is about η / (1 − β); the paper tunes η and
β together. The momentum v is checkpointed through ``state_dict``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from pydantic import BaseModel, Field

from bastion.algorithms.args import STRATEGY_ARGS_CONFIG
from bastion.algorithms.base import cast_like
from bastion.algorithms.fedavg import FedAvg
from bastion.algorithms.server_state import check_state_fits, float_tensor_names, split_state
from bastion.tensors import Weights


class FedAvgMArgs(BaseModel):
    model_config = STRATEGY_ARGS_CONFIG

    server_lr: float = Field(default=1.0, gt=0.0, description="server learning rate η, > 0")
    momentum: float = Field(
        default=0.9, ge=0.0, lt=1.0, description="server momentum β, 0 <= β < 1"
    )


class FedAvgM(FedAvg):
    """FedAvg followed by one server SGD-with-momentum step on floating-point tensors."""

    name = "fedavgm"

    def __init__(self, args: FedAvgMArgs | None = None) -> None:
        super().__init__()
        self.args = args or FedAvgMArgs()
        self._velocity: dict[str, np.ndarray] = {}

    def begin_round(self, global_weights: Weights, round_number: int) -> None:
        if self._velocity:
            check_state_fits(self.name, self._velocity, global_weights)
        super().begin_round(global_weights, round_number)

    def finalize(self) -> Weights:
        average = self.average()
        new = dict(average)
        for name in float_tensor_names(self._global):
            current = self._global[name].astype(np.float64)
            delta = current - average[name]
            velocity = self._velocity.get(name)
            if velocity is None:
                velocity = self._velocity[name] = np.zeros_like(delta)
            velocity *= self.args.momentum
            velocity += delta
            new[name] = current - self.args.server_lr * velocity
        return cast_like(new, self._global)

    def state_dict(self) -> Weights:
        return {f"momentum/{n}": v.copy() for n, v in self._velocity.items()}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        self._velocity = split_state(self.name, state, ("momentum",))["momentum"]
