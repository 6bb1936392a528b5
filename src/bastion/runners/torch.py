"""The PyTorch adapter: federates a ``torch.nn.Module``'s state dict.

Parameters and buffers (BatchNorm statistics) travel as named NumPy arrays in the
module's own order; ``local_buffers=True`` keeps buffers on the site instead.
Training loops over NumPy shards in seeded mini-batches; the optimizer is created
per task (its state is reset each round, the usual federated default).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from bastion.data.types import DataShard
from bastion.errors import BastionError, MissingDependency
from bastion.runners.base import TaskResult
from bastion.tensors import Weights

try:
    import torch
    from torch import nn
except ModuleNotFoundError as exc:  # pragma: no cover - exercised only without torch
    raise MissingDependency("torch", "torch", "the PyTorch task runner") from exc

OptimizerFactory = Callable[[list[nn.Parameter], float], torch.optim.Optimizer]


def _default_optimizer(name: str, momentum: float, weight_decay: float) -> OptimizerFactory:
    def build(params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
        if name == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
        if name == "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
        raise BastionError(
            f"task_runner.args.optimizer: unknown optimizer {name!r}; use sgd or adam"
        )

    return build


class TorchRunner:
    """A ``TaskRunner`` for classification models in PyTorch."""

    def __init__(
        self,
        model: nn.Module,
        *,
        lr: float = 0.01,
        optimizer: str = "sgd",
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        loss_fn: nn.Module | None = None,
        optimizer_factory: OptimizerFactory | None = None,
        device: str = "auto",
        threads: int | None = None,
        local_buffers: bool = False,
        seed: int = 0,
    ) -> None:
        if threads:
            torch.set_num_threads(int(threads))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.lr = lr
        self.loss_fn = loss_fn or nn.CrossEntropyLoss()
        self._optimizer_factory = optimizer_factory or _default_optimizer(
            optimizer, momentum, weight_decay
        )
        buffers = {name for name, _ in model.named_buffers()}
        self._federated = [
            name for name in model.state_dict() if not (local_buffers and name in buffers)
        ]
        self._generator = np.random.default_rng(seed)

    # ------------------------------------------------------------------ weights

    def get_weights(self) -> Weights:
        state = self.model.state_dict()
        return {name: state[name].detach().cpu().numpy().copy() for name in self._federated}

    def set_weights(self, weights: Weights) -> None:
        state = self.model.state_dict()
        missing = [n for n in self._federated if n not in weights]
        if missing:
            raise BastionError(f"weights lack tensors {missing[:5]} of the model")
        for name in self._federated:
            target = state[name]
            value = torch.from_numpy(np.array(weights[name], copy=True))  # keeps 0-d tensors 0-d
            if tuple(value.shape) != tuple(target.shape):
                raise BastionError(
                    f"tensor {name!r}: shape {tuple(value.shape)}, model has {tuple(target.shape)}"
                )
            with torch.no_grad():
                target.copy_(value.to(dtype=target.dtype))

    # ------------------------------------------------------------------ tasks

    def train(
        self,
        data: DataShard,
        epochs: int = 1,
        batch_size: int = 32,
        lr: float | None = None,
        max_batches: int | None = None,
        **_: Any,
    ) -> TaskResult:
        """Local epochs of mini-batch training; metrics: loss and accuracy on the batches seen."""
        self.model.train()
        optimizer = self._optimizer_factory(list(self.model.parameters()), lr or self.lr)
        x_all = torch.from_numpy(np.ascontiguousarray(data.x_train))
        y_all = torch.from_numpy(np.ascontiguousarray(data.y_train)).long()
        total_loss, correct, seen, batches = 0.0, 0, 0, 0
        for _epoch in range(int(epochs)):
            order = torch.from_numpy(self._generator.permutation(len(y_all)))
            for start in range(0, len(order), int(batch_size)):
                if max_batches is not None and batches >= max_batches:
                    break
                index = order[start : start + int(batch_size)]
                x = x_all[index].to(self.device)
                y = y_all[index].to(self.device)
                optimizer.zero_grad(set_to_none=True)
                logits = self.model(x)
                loss = self.loss_fn(logits, y) + self.penalty()
                loss.backward()
                optimizer.step()
                total_loss += float(loss.detach()) * len(y)
                correct += int((logits.argmax(dim=1) == y).sum())
                seen += len(y)
                batches += 1
        if seen and not math.isfinite(total_loss):
            raise BastionError("training diverged (loss is not finite); lower the learning rate")
        metrics = {"loss": total_loss / max(seen, 1), "accuracy": correct / max(seen, 1)}
        # Example count is the shard size, the weight FedAvg uses (n_k in McMahan et al.).
        return TaskResult(data.train_count, metrics)

    def penalty(self) -> torch.Tensor:
        """Extra loss term for client-side regularizers (FedProx, FedCurv); zero here."""
        return torch.zeros((), device=self.device)

    @torch.no_grad()
    def validate(self, data: DataShard, batch_size: int = 512, **_: Any) -> TaskResult:
        self.model.eval()
        x_all = torch.from_numpy(np.ascontiguousarray(data.x_valid))
        y_all = torch.from_numpy(np.ascontiguousarray(data.y_valid)).long()
        total_loss, correct = 0.0, 0
        for start in range(0, len(y_all), int(batch_size)):
            x = x_all[start : start + int(batch_size)].to(self.device)
            y = y_all[start : start + int(batch_size)].to(self.device)
            logits = self.model(x)
            total_loss += float(self.loss_fn(logits, y)) * len(y)
            correct += int((logits.argmax(dim=1) == y).sum())
        count = len(y_all)
        return TaskResult(
            count, {"loss": total_loss / max(count, 1), "accuracy": correct / max(count, 1)}
        )
