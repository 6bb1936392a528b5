"""The ``TaskRunner`` protocol: what every framework adapter provides to a collaborator.

A runner owns a model. The collaborator moves weights in and out as named NumPy
arrays and asks it to train or validate on its local data shard.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from bastion.data.types import DataShard
from bastion.tensors import Weights


@dataclass
class TaskResult:
    """Metrics of one task and the number of examples they were computed on."""

    example_count: int
    metrics: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class TaskRunner(Protocol):
    """A framework adapter. Implementations live in ``bastion.runners.<framework>``."""

    def get_weights(self) -> Weights:
        """The model's federated tensors, in a stable order."""
        ...

    def set_weights(self, weights: Weights) -> None:
        """Load federated tensors into the model; names and shapes match ``get_weights``."""
        ...

    def train(self, data: DataShard, **args: Any) -> TaskResult:
        """Train locally on ``data.x_train``; ``args`` come from the plan's task."""
        ...

    def validate(self, data: DataShard, **args: Any) -> TaskResult:
        """Evaluate on ``data.x_valid``; metrics such as ``accuracy`` and ``loss``."""
        ...
