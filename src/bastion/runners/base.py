"""The ``TaskRunner`` protocol: what every framework adapter provides to a collaborator.

A runner owns a model. The collaborator moves weights in and out as named NumPy
arrays and asks it to train or validate on its local data shard. Abilities only some
runners have are named protocols here (``RoundAware``, ``KeepsClientState``,
``LocalPrivacy``), checked with ``isinstance`` where they are used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from bastion.data.types import DataShard
from bastion.tensors import Weights

if TYPE_CHECKING:
    from bastion.privacy.dp.local import LocalDPTrainer


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


@runtime_checkable
class RoundAware(Protocol):
    """A runner whose state follows the rounds (FedCurv's own Fisher terms).

    ``begin_round`` comes before the round's model is loaded; ``update_accepted`` after
    the aggregator accepted this runner's training result of that round.
    """

    def begin_round(self, round_number: int) -> None: ...

    def update_accepted(self, round_number: int) -> None: ...


@runtime_checkable
class LendsWeights(Protocol):
    """A runner that can lend read-only views of its own tensors, so a training result is
    sent straight from them with no model-sized copy; valid until it next trains or loads."""

    def lend_weights(self) -> Weights: ...


@runtime_checkable
class KeepsClientState(Protocol):
    """A runner that can hand over the state one client keeps between its rounds, so a
    simulation can share one runner among many clients."""

    def client_state(self) -> object: ...

    def load_client_state(self, state: object | None) -> None: ...


@runtime_checkable
class LocalPrivacy(Protocol):
    """A runner that can train with DP-SGD (``differential_privacy.local``).

    ``local_dp`` is its accountant once ``enable_local_dp`` ran (None before);
    ``local_dp_steps`` says what a train task will charge, for the site's budget check.
    """

    @property
    def local_dp(self) -> LocalDPTrainer | None: ...

    def enable_local_dp(
        self,
        noise_multiplier: float,
        max_grad_norm: float,
        delta: float,
        secure_mode: bool = False,
        accountant: str = "rdp",
    ) -> None: ...

    def local_dp_steps(self, data: DataShard, **task_args: Any) -> tuple[float, int]: ...


@runtime_checkable
class ExportsModel(Protocol):
    """A runner whose trained model has a form of its own outside Bastion's checkpoints
    (a PEFT adapter folder); ``export`` writes it for the weights last set, into ``folder``."""

    def export(self, folder: Path) -> Path: ...
