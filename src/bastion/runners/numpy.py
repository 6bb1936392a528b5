"""The NumPy adapter: for models written directly in NumPy.

The user's model implements four methods (``get_weights``, ``set_weights``, ``fit``,
``evaluate``); this adapter turns them into a ``TaskRunner``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from bastion.data.types import DataShard
from bastion.runners.base import TaskResult
from bastion.tensors import Weights


class NumpyModel(Protocol):
    """``fit(x, y, **task_args)`` and ``evaluate(x, y, **task_args)`` return metrics by name."""

    def get_weights(self) -> Weights: ...

    def set_weights(self, weights: Weights) -> None: ...

    @property
    def fit(self) -> Callable[..., dict[str, float]]: ...

    @property
    def evaluate(self) -> Callable[..., dict[str, float]]: ...


class NumpyRunner:
    """A ``TaskRunner`` over a ``NumpyModel``; weights are copied at the boundary (into the
    model's own arrays when they fit), except the read-only views ``lend_weights`` gives to
    send a result from (``LendsWeights``)."""

    def __init__(self, model: NumpyModel) -> None:
        self.model = model

    def get_weights(self) -> Weights:
        return {
            name: np.array(value, copy=True) for name, value in self.model.get_weights().items()
        }

    def set_weights(self, weights: Weights) -> None:
        """Copy ``weights`` in: into the model's own arrays where they have the same layout
        (no model-sized allocation while the received model is still held), else anew."""
        current = self.model.get_weights()
        if _same_layout(current, weights):
            for name, target in current.items():
                np.copyto(target, weights[name], casting="no")
            self.model.set_weights(current)  # for models whose get_weights returns copies
            return
        self.model.set_weights(
            {name: np.array(value, copy=True) for name, value in weights.items()}
        )

    def lend_weights(self) -> Weights:
        """Read-only views of the model's arrays: what the collaborator sends after training."""
        lent: Weights = {}
        for name, value in self.model.get_weights().items():
            view = np.asarray(value).view()
            view.flags.writeable = False
            lent[name] = view
        return lent

    def train(self, data: DataShard, **args: Any) -> TaskResult:
        metrics = self.model.fit(data.x_train, data.y_train, **args)
        return TaskResult(data.train_count, {k: float(v) for k, v in metrics.items()})

    def validate(self, data: DataShard, **args: Any) -> TaskResult:
        metrics = self.model.evaluate(data.x_valid, data.y_valid, **args)
        return TaskResult(data.valid_count, {k: float(v) for k, v in metrics.items()})


def _same_layout(current: Weights, incoming: Weights) -> bool:
    """Whether ``incoming`` can be copied into ``current``'s arrays as they are."""
    return list(current) == list(incoming) and all(
        isinstance(target, np.ndarray)
        and target.flags.writeable
        and not np.shares_memory(target, incoming[name])
        and target.shape == np.shape(incoming[name])
        and target.dtype == np.asarray(incoming[name]).dtype
        for name, target in current.items()
    )
