"""The MNIST models of McMahan et al. 2017, §3, and the runner the reproduction trains them with.

``benchmarks/mcmahan2017.py`` copies this file into each row's workspace, where the plan's
``task_runner.path: mcmahan_models:build_runner`` imports it, as any task code is.

- 2NN: "a simple multilayer-perceptron with 2-hidden layers with 200 units each using
  ReLu activations (199,210 total parameters)".
- CNN: two 5x5 convolutions (32 then 64 channels, each followed by 2x2 max pooling), a
  fully connected layer of 512 ReLU units and a softmax output: 1,663,370 parameters
  (with "same" padding, which is what gives the paper's count).

Clients run plain SGD (no momentum, no weight decay) with the row's learning rate.
"""

from __future__ import annotations

import torch
from torch import nn

from bastion.runners.torch import TorchRunner

#: Parameter counts the paper states; a model that differs is refused.
PAPER_PARAMETERS = {"2nn": 199_210, "cnn": 1_663_370}


class TwoNN(nn.Module):
    """784 → 200 → 200 → 10 with ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Flatten(),
            nn.Linear(28 * 28, 200),
            nn.ReLU(),
            nn.Linear(200, 200),
            nn.ReLU(),
            nn.Linear(200, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class CNN(nn.Module):
    """conv5x5(32) - pool - conv5x5(64) - pool - fc(512) - fc(10)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 7 * 7, 512), nn.ReLU(), nn.Linear(512, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build_model(model: str, seed: int = 0) -> nn.Module:
    """A freshly initialized ``model`` ("2nn" or "cnn"), its parameter count checked."""
    classes: dict[str, type[nn.Module]] = {"2nn": TwoNN, "cnn": CNN}
    if model not in classes:
        raise ValueError(f"model must be one of {sorted(classes)}, got {model!r}")
    torch.manual_seed(seed)
    built = classes[model]()
    count = sum(p.numel() for p in built.parameters())
    if count != PAPER_PARAMETERS[model]:
        raise ValueError(
            f"{model} has {count:,} parameters, the paper's has {PAPER_PARAMETERS[model]:,}"
        )
    return built


def build_runner(
    model: str = "2nn", lr: float = 0.1, seed: int = 0, threads: int | None = 1
) -> TorchRunner:
    """Plain SGD at ``lr``; one intra-op thread by default (several runs share the machine)."""
    return TorchRunner(build_model(model, seed), lr=lr, seed=seed, threads=threads)
