"""Local DP-SGD for the PyTorch runner (``differential_privacy.local`` in the plan).

A round's training is Opacus's DP-SGD (Abadi et al. 2016): Poisson batches of expected
size ``batch_size``, each example's gradient clipped to ``max_grad_norm``, Gaussian noise
on every step. The accountant (``LocalDPTrainer``) spans rounds; its epsilon is reported
with the training metrics as ``dp_epsilon``. ``private_round_steps`` says how many steps
a task will charge before it runs, for the site's budget check.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from bastion.data.types import DataShard
from bastion.errors import BastionError
from bastion.privacy.dp.local import LocalDPTrainer, poisson_schedule, round_steps
from bastion.runners.base import TaskResult


class DPSGDTrainer:
    """Trains a classifier with DP-SGD through Opacus, charging ``accountant`` for every step."""

    def __init__(self, accountant: LocalDPTrainer) -> None:
        self.accountant = accountant

    def train(
        self,
        model: nn.Module,
        loss_fn: Callable[..., torch.Tensor],
        device: torch.device,
        data: DataShard,
        optimizer: torch.optim.Optimizer,
        epochs: int,
        batch_size: int,
        max_batches: int | None,
    ) -> TaskResult:
        """``epochs`` passes of DP-SGD over the shard; metrics: loss, accuracy, dp_epsilon."""
        trainer = self.accountant
        model.train()
        dataset = torch.utils.data.TensorDataset(
            torch.from_numpy(np.ascontiguousarray(data.x_train)),
            torch.from_numpy(np.ascontiguousarray(data.y_train)).long(),
        )
        loader = torch.utils.data.DataLoader(dataset, batch_size=int(batch_size))
        hooks, private_optimizer, loader = trainer.attach(model, optimizer, loader)
        sample_rate = 1 / len(loader)
        if (sample_rate, len(loader)) != poisson_schedule(len(dataset), int(batch_size)):
            trainer.detach(hooks)
            raise BastionError(
                f"Opacus made {len(loader)} Poisson batches per epoch of {len(dataset)} examples, "
                "not the count Bastion's privacy budget check predicts: this Opacus version "
                "samples differently from 1.6; install opacus 1.6"
            )
        total_loss, correct, seen, batches = 0.0, 0, 0, 0
        try:
            for _epoch in range(int(epochs)):
                for x_cpu, y_cpu in loader:
                    if max_batches is not None and batches >= max_batches:
                        break
                    batches += 1
                    if len(y_cpu) == 0:
                        trainer.count_empty_step(sample_rate)
                        continue
                    x, y = x_cpu.to(device), y_cpu.to(device)
                    private_optimizer.zero_grad(set_to_none=True)
                    logits = model(x)
                    loss = loss_fn(logits, y)
                    loss.backward()
                    private_optimizer.step()
                    total_loss += float(loss.detach()) * len(y)
                    correct += int((logits.argmax(dim=1) == y).sum())
                    seen += len(y)
        finally:
            trainer.detach(hooks)
        if seen and not math.isfinite(total_loss):
            raise BastionError("DP-SGD diverged (loss is not finite); lower the learning rate")
        metrics = {
            "loss": total_loss / max(seen, 1),
            "accuracy": correct / max(seen, 1),
            "dp_epsilon": trainer.epsilon(),
        }
        return TaskResult(data.train_count, metrics)


def private_round_steps(
    data: DataShard,
    epochs: int = 1,
    batch_size: int = 32,
    max_batches: int | None = None,
    **_: object,
) -> tuple[float, int]:
    """(sample rate, steps) ``DPSGDTrainer.train`` will charge for a train task with these args.

    The defaults are ``TorchRunner.train``'s. Every Poisson batch is a step, empty or not,
    and ``max_batches`` caps the steps over all epochs, as the loop above counts them.
    """
    return round_steps(data.train_count, epochs, batch_size, max_batches)
