"""FedAdam: Adam as the server optimizer.

Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2 (FedAdam):
v_t = β2 v_{t−1} + (1 − β2) Δ_t². Defaults: η = 0.1 and τ = 1e-9 as in Flower,
β1 = 0.9 and β2 = 0.99 as in the paper's experiments.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, Field

from bastion.algorithms.args import STRATEGY_ARGS_CONFIG
from bastion.algorithms.fedopt import FedOpt


class FedAdamArgs(BaseModel):
    model_config = STRATEGY_ARGS_CONFIG

    eta: float = Field(default=0.1, gt=0.0, description="server learning rate η, > 0")
    beta_1: float = Field(
        default=0.9, ge=0.0, lt=1.0, description="first-moment decay β1, 0 <= β1 < 1"
    )
    beta_2: float = Field(
        default=0.99, ge=0.0, lt=1.0, description="second-moment decay β2, 0 <= β2 < 1"
    )
    tau: float = Field(default=1e-9, gt=0.0, description="adaptivity τ (floor of √v), > 0")


class FedAdam(FedOpt):
    """Adaptive federated optimization with Adam's exponential second moment."""

    name = "fedadam"

    def __init__(self, args: FedAdamArgs | None = None) -> None:
        self.args = args or FedAdamArgs()
        super().__init__(eta=self.args.eta, beta_1=self.args.beta_1, tau=self.args.tau)

    def update_second_moment(self, v: np.ndarray, delta_squared: np.ndarray) -> None:
        v *= self.args.beta_2
        v += (1.0 - self.args.beta_2) * delta_squared
