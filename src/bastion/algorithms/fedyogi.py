"""FedYogi: Yogi as the server optimizer.

Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2 (FedYogi):
v_t = v_{t−1} − (1 − β2) Δ_t² sign(v_{t−1} − Δ_t²), whose additive change keeps v from
growing as fast as Adam's when gradients are large. Defaults: η = 0.01 and τ = 1e-3
as in Flower, β1 = 0.9 and β2 = 0.99 as in the paper's experiments.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, Field

from bastion.algorithms.args import STRATEGY_ARGS_CONFIG
from bastion.algorithms.fedopt import FedOpt


class FedYogiArgs(BaseModel):
    model_config = STRATEGY_ARGS_CONFIG

    eta: float = Field(default=0.01, gt=0.0, description="server learning rate η, > 0")
    beta_1: float = Field(
        default=0.9, ge=0.0, lt=1.0, description="first-moment decay β1, 0 <= β1 < 1"
    )
    beta_2: float = Field(
        default=0.99, ge=0.0, lt=1.0, description="second-moment decay β2, 0 <= β2 < 1"
    )
    tau: float = Field(default=1e-3, gt=0.0, description="adaptivity τ (floor of √v), > 0")


class FedYogi(FedOpt):
    """Adaptive federated optimization with Yogi's sign-controlled second moment."""

    name = "fedyogi"

    def __init__(self, args: FedYogiArgs | None = None) -> None:
        self.args = args or FedYogiArgs()
        super().__init__(eta=self.args.eta, beta_1=self.args.beta_1, tau=self.args.tau)

    def update_second_moment(self, v: np.ndarray, delta_squared: np.ndarray) -> None:
        v -= (1.0 - self.args.beta_2) * delta_squared * np.sign(v - delta_squared)
