"""FedAdagrad: Adagrad as the server optimizer.

Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2 (FedAdagrad):
v_t = v_{t−1} + Δ_t². Defaults: η = 0.1 and τ = 1e-9 as in Flower, β1 = 0.9 as in the
paper's experiments (Flower's FedAdagrad uses β1 = 0, i.e. no momentum).
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, Field

from bastion.algorithms.args import STRATEGY_ARGS_CONFIG
from bastion.algorithms.fedopt import FedOpt


class FedAdagradArgs(BaseModel):
    model_config = STRATEGY_ARGS_CONFIG

    eta: float = Field(default=0.1, gt=0.0, description="server learning rate η, > 0")
    beta_1: float = Field(
        default=0.9, ge=0.0, lt=1.0, description="first-moment decay β1, 0 <= β1 < 1"
    )
    tau: float = Field(default=1e-9, gt=0.0, description="adaptivity τ (floor of √v), > 0")


class FedAdagrad(FedOpt):
    """Adaptive federated optimization with Adagrad's accumulated second moment."""

    name = "fedadagrad"

    def __init__(self, args: FedAdagradArgs | None = None) -> None:
        self.args = args or FedAdagradArgs()
        super().__init__(eta=self.args.eta, beta_1=self.args.beta_1, tau=self.args.tau)

    def update_second_moment(self, v: np.ndarray, delta_squared: np.ndarray) -> None:
        v += delta_squared
