"""The server optimizers minimize Rosenbrock's function when fed its negative gradient.

f(x, y) = (1 − x)² + 100 (y − x²)², minimum at (1, 1). The server step *adds*
η m / (√v + τ) because the pseudo-gradient Δ = local − global points downhill; fed
directly, the downhill direction is −∇f, so that is what ``step`` receives. Every
optimizer runs with its default β1, β2 and τ (β1 = 0.9, β2 = 0.99; τ = 1e-9 for
FedAdam and FedAdagrad, 1e-3 for FedYogi), which converge within the bound.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from bastion.algorithms.fedadagrad import FedAdagrad, FedAdagradArgs
from bastion.algorithms.fedadam import FedAdam, FedAdamArgs
from bastion.algorithms.fedopt import FedOpt
from bastion.algorithms.fedyogi import FedYogi, FedYogiArgs


def rosenbrock_gradient(point: np.ndarray) -> np.ndarray:
    x, y = point
    return np.array([-2.0 * (1.0 - x) - 400.0 * x * (y - x * x), 200.0 * (y - x * x)])


@pytest.mark.parametrize(
    ("build", "steps"),
    [
        (lambda: FedAdam(FedAdamArgs(eta=0.01)), 1000),
        (lambda: FedYogi(FedYogiArgs(eta=0.01)), 1000),
        (lambda: FedAdagrad(FedAdagradArgs(eta=0.08)), 5000),
    ],
    ids=["fedadam", "fedyogi", "fedadagrad"],
)
def test_reaches_the_minimum_from_the_origin(build: Callable[[], FedOpt], steps: int) -> None:
    optimizer = build()
    model = {"xy": np.zeros(2)}
    for _ in range(steps):
        model = optimizer.step(model, {"xy": -rosenbrock_gradient(model["xy"])})
    assert float(np.sum((model["xy"] - 1.0) ** 2)) < 5e-5
