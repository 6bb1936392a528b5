"""A small convolutional network for MNIST: the model this workspace federates."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bastion.runners.torch import TorchRunner


class SmallCNN(nn.Module):
    """conv(16) - pool - conv(32) - pool - fc(64) - fc(10): about 114k parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build_runner(threads: int | None = None, seed: int = 0, **options: Any) -> TorchRunner:
    """The runner; ``options`` (``task_runner.args``) go to ``TorchRunner``, e.g. ``proximal_mu``."""
    torch.manual_seed(seed)
    settings = {"lr": 0.05, "momentum": 0.9, **options}
    return TorchRunner(SmallCNN(), threads=threads, seed=seed, **settings)
